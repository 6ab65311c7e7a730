"""Implicit (backward) Euler, torchdyn's ``ImplicitEuler`` and ``ParallelImplicitEuler``, solved by Newton's method.

A backward-Euler step of size ``dt`` from ``(t, x0)`` is the root ``x1`` of

    G(z) = z - x0 - dt f(t + dt, z),

first order and A-stable (L-stable, even): on ``x' = A x`` it is ``x1 = (I - dt A)^{-1} x0``, which decays for
every eigenvalue of ``A`` with negative real part whatever ``dt``, so stiff problems can take steps far beyond
explicit Euler's stability limit. (torchdyn minimises ``|G|^2`` by L-BFGS and evaluates ``f`` at ``t`` instead of
``t + dt``, which is wrong for a time-dependent field; here ``f`` is evaluated at ``t + dt``.)

**Newton's method, rows independent.** The state's leading dimension is the batch: a state ``[B, *S]`` is viewed
as ``B`` rows of ``D = prod(S)`` unknowns (a 1-D state, or a 0-dim one, is a single row). As in
:func:`nodecore.numerics.root.root_find` and the equilibrium models, row ``b`` of ``f(t, x)`` is assumed to depend
on row ``b`` of ``x`` only (no batch norm or attention across the batch), so each row gets its own ``[D, D]``
Jacobian ``I - dt df/dx`` (``D`` backward passes through one evaluation of ``f`` per iteration, and one batched
dense solve: meant for states of moderate width, not images). Starting from ``x0`` (``predictor='constant'``, the
default) or from explicit Euler's ``x0 + dt f(t, x0)`` (``predictor='euler'``, one more evaluation), each iteration
evaluates ``G``, its Jacobian ``J`` and the Newton update ``delta = J^{-1} G`` at ``z`` and stops when, in every
row, the residual or the update is at rounding level,

    min(|G(z)_b|_inf, |delta_b|_inf) <= tol * max(|z_b|_inf, |x0_b|_inf),

else steps to ``z - delta``. ``x0`` is the default start because on a stiff field explicit Euler's guess is off
by about ``dt |lambda| |x0|``, far worse than ``x0``'s ``|x1 - x0|``: on ``x' = -1000 (x^3 - cos t)`` at ``dt = 1``
it costs about 33 evaluations a step against 8.5, and on the non-stiff fields tried both cost the same. The update
test is the one that ends stiff solves: there the residual's rounding floor is about ``eps |dt df/dx| |z|``, far
above ``eps |z|``, but ``J^{-1}`` divides it back down. Both tests look at the whole state's true residual ``G``;
where the row-independence assumption fails, the per-row ``J`` is only an approximation, Newton converges more
slowly (perhaps not within ``max_iters``), and the update test is only as good an estimate of the distance to the
root as ``J`` is of the true Jacobian. Not converging within ``max_iters`` iterations, a singular Jacobian or a
non-finite iterate raises :class:`NewtonConvergenceError`, naming ``t``, ``dt`` and the residual.

**Gradients: the implicit function theorem.** The iterations run without a graph. The converged ``z`` (held
constant) is then put through one more Newton step with autograd on,

    x1 = z - J^{-1} G(z),    J = dG/dz at z (constant),

whose value is Newton's next iterate from the converged ``z`` and whose derivatives are those of the root: for any
input ``p`` of ``G`` (``x0``, ``dt``, ``t``, the field's parameters), ``dx1/dp = -J^{-1} dG/dp``, the implicit function
theorem's ``dz*/dp``. So the gradient is exact at convergence (for rows that really are independent; with coupled
rows the per-row ``J`` makes it approximate), costs one vector–Jacobian product of ``f`` and one solve per step, and
the memory kept per step does not grow with the number of iterations. With autograd off the final step reuses the
convergence test's ``G``; with it on, ``G`` is evaluated once more at the constant ``z`` (one more evaluation of
``f`` per step), so the result hangs on no graph but that of the inputs. The step is taken in both modes, so
values do not depend on the grad mode. Second derivatives through the step are not those of the root (``J`` is a
constant).

:class:`~nodecore.numerics.shooting.ParallelImplicitEuler` returns the same backward-Euler trajectory on a
``t_span`` by multiple shooting's interface, one backward-Euler step per interval; see its docstring for how it is
(honestly: sequentially) solved.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from nodecore._checks import choice, integer, number
from nodecore.errors import NonFiniteError, SolverError
from nodecore.numerics.solvers import Euler, time_tensor

Field = Callable[[Tensor, Tensor], Tensor]

#: The residual tolerance ``tol`` when None, in units of the state dtype's machine epsilon.
DEFAULT_TOL_EPS = 100.0
#: Predictors of the first Newton iterate.
PREDICTORS: tuple[str, ...] = ("constant", "euler")


class NewtonConvergenceError(SolverError):
    """Newton's method did not solve an implicit step: no convergence within ``max_iters``, a singular Jacobian,
    or a non-finite iterate. A :class:`~nodecore.errors.SolverError` (so a ``RuntimeError``).

    Attributes:
        t, dt: the step that failed (floats).
        residual: the largest row residual ``|x1 - x0 - dt f(t + dt, x1)|_inf`` at the last iterate (inf when not
            finite).
    """

    def __init__(self, message: str, t: float, dt: float, residual: float) -> None:
        super().__init__(message)
        self.t, self.dt, self.residual = t, dt, residual

    def __reduce__(self):  # keep the attributes through pickling (args is (message,) only)
        return type(self), (self.args[0], self.t, self.dt, self.residual)


def _rows(x: Tensor) -> Tensor:
    """``x`` as ``[B, D]``: its leading dimension the rows, the rest flattened; a 0-/1-D state is one row."""
    return x.reshape(1, -1) if x.ndim <= 1 else x.reshape(x.shape[0], -1)


def _row_max(v: Tensor) -> Tensor:
    """``|v_b|_inf`` per row of ``[B, D]``, ``[B]``; inf for a row holding NaN."""
    m = v.abs().amax(dim=1)
    return torch.where(torch.isnan(m), torch.full_like(m, float("inf")), m)


class ImplicitEuler(Euler):
    """Backward Euler, order 1, fixed step, solved by Newton's method with per-row Jacobians (torchdyn's
    ``ImplicitEuler``); see the module docstring for the method, the row-independence assumption and the gradient.

    The stepping loop calls :meth:`step` at constant steps onto every point of ``t_span`` (splitting each interval
    into steps no longer than ``step_size`` when given). Meant for ``sensitivity='autograd'`` (the default), whose
    gradient is that of the computed trajectory. ``NeuralODE(..., sensitivity='adjoint')`` runs too, but its
    augmented state (state, adjoint and the parameters' gradient) reaches the step as one flat row, so every Newton
    iteration builds a dense Jacobian of size (state + parameter count) squared: tiny models only.

    Args:
        dtype: accepted for torchdyn compatibility; the state's dtype is used in any case.
        max_iters: the most Newton updates per step (each after an evaluation of ``f`` and its per-row Jacobian).
        tol: relative tolerance of the residual or the Newton update (module docstring); ``100 * eps`` of the
            state's dtype when None.
        predictor: the first iterate, ``'constant'`` (``x0``) or ``'euler'`` (``x0 + dt f(t, x0)``, one more
            evaluation; module docstring on why it is not the default).

    Raises:
        ValueError: ``max_iters < 1``, a negative or non-finite ``tol``, an unknown ``predictor``.
    """

    def __init__(self, dtype: torch.dtype | None = torch.float32, max_iters: int = 50, tol: float | None = None,
                 predictor: str = "constant") -> None:
        super().__init__(dtype)
        self.max_iters = integer("max_iters", max_iters, minimum=1)
        self.tol = None if tol is None else number("tol", tol, minimum=0)
        self.predictor = choice("predictor", predictor, PREDICTORS)

    def tolerance(self, like: Tensor) -> float:
        """The residual tolerance for states like ``like``: :attr:`tol`, or ``100 * eps`` of its dtype."""
        return DEFAULT_TOL_EPS * torch.finfo(like.dtype).eps if self.tol is None else self.tol

    def step(self, f: Field, x: Tensor, t: Tensor | float, dt: Tensor | float, k1: Tensor | None = None,
             args: object = None) -> tuple[None, Tensor, None]:
        """One backward-Euler step: ``(None, x1, None)`` with ``x1 = x + dt f(t + dt, x1)`` (torchdyn's tuple).

        Args:
            f: the field ``f(t, x)``, rows independent (module docstring).
            x: the state at ``t``, real floating point, any shape (leading dimension the rows).
            t: the time, a 0-dim tensor or a float; dt: the step, a float or 0-dim tensor.
            k1: ``f(t, x)`` when already known (read by ``predictor='euler'`` only).
            args: torchdyn's; never read.

        Raises:
            TypeError: ``x`` is not a real floating-point tensor.
            NonFiniteError: ``x`` holds NaN or Inf.
            NewtonConvergenceError: Newton's method did not converge (the message says where and how far).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = f"dtype {x.dtype}" if isinstance(x, Tensor) else f"a {type(x).__name__}"
            raise TypeError(f"{type(self).__name__} needs a real floating-point tensor state, got {got}")
        t0 = t if isinstance(t, Tensor) else time_tensor(float(t), x)
        t_f = float(t0.detach())
        dt_f = float(dt.detach()) if isinstance(dt, Tensor) else float(dt)
        t1 = t0 + dt
        shape = x.shape
        x0 = _rows(x)
        if not bool(torch.isfinite(x0).all()):
            raise NonFiniteError(f"{type(self).__name__}: the state entering the step at t={t_f:.6g} (dt={dt_f:.3g}) "
                                 "holds NaN or Inf")
        tol = self.tolerance(x)
        x0_const = x0.detach()
        dt_const = dt.detach() if isinstance(dt, Tensor) else dt
        t1_const = t1.detach()

        with torch.no_grad():
            if self.predictor == "euler":
                slope = f(t0.detach(), x.detach()) if k1 is None else k1.detach()
                z = x0_const + dt_const * _rows(slope)
            else:
                z = x0_const.clone()

        # Iterate k is evaluated (G, its Jacobian, the Newton update) for k = 0 (the predictor), 1, ..., max_iters:
        # at most max_iters updates before the final one.
        for iteration in range(self.max_iters + 1):
            G, J, scale = self._residual_and_jacobian(f, z, x0_const, t1_const, dt_const, shape)
            g_norm = _row_max(G)
            residual = float(g_norm.max())
            if residual == float("inf"):
                self._fail(f"the residual became NaN or Inf after {iteration} iterations", t_f, dt_f, residual, tol)
            delta = self._newton_update(J, G, t_f, dt_f, residual, tol)
            converged = (g_norm <= tol * scale) | (_row_max(delta) <= tol * scale)
            if bool(converged.all()):
                break
            if iteration == self.max_iters:
                self._fail(f"it did not converge in max_iters={self.max_iters} iterations "
                           f"({int((~converged).sum())} of {converged.numel()} rows above tolerance)", t_f, dt_f,
                           residual, tol)
            z = z - delta
        # The final Newton step, with autograd on if it is: its value Newton's next iterate, its derivatives those of
        # the root by the implicit function theorem (J and z constants, G's graph reaching x0, dt, t and f's
        # parameters). With autograd on, G is evaluated once more for it, at the constant z: the evaluation above
        # differentiated f with respect to a leaf z, whose graph the result must not hang on.
        if torch.is_grad_enabled():
            G = z - x0 - dt * _rows(f(t1, z.reshape(shape)))
            delta = self._newton_update(J, G, t_f, dt_f, residual, tol)
        x1 = z - delta
        return None, x1.reshape(shape), None

    def _newton_update(self, J: Tensor, G: Tensor, t: float, dt: float, residual: float, tol: float) -> Tensor:
        """``J^{-1} G`` per row (``[B, D, D]``, ``[B, D]`` -> ``[B, D]``)."""
        delta, info = torch.linalg.solve_ex(J, G)
        if bool((info != 0).any()):
            self._fail("the Jacobian I - dt df/dx is singular", t, dt, residual, tol)
        return delta

    def _residual_and_jacobian(self, f: Field, z: Tensor, x0: Tensor, t1: Tensor, dt: Tensor | float,
                               shape: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
        """``G(z)`` (``[B, D]``), its per-row Jacobian ``[B, D, D]`` and the rows' scales ``[B]``, all detached, from
        one evaluation of ``f`` and ``D`` backward passes."""
        with torch.enable_grad():
            zr = z.detach().requires_grad_()
            fz = _rows(f(t1, zr.reshape(shape)))
            if fz.shape != zr.shape:
                raise ValueError(f"{type(self).__name__}: the field returned shape {list(fz.shape)} (as rows) for a "
                                 f"state of {list(zr.shape)} rows; it must return a tensor shaped like the state")
            G = zr - x0 - dt * fz
            dim = zr.shape[1]
            # rows independent: d(sum_b G[b, i]) / dz[b] = dG[b, i] / dz[b], row i of sample b's Jacobian
            rows = [torch.autograd.grad(G[:, i].sum(), zr, retain_graph=i < dim - 1)[0] for i in range(dim)]
        J = torch.stack(rows, dim=1)  # J[b, i, :] = dG[b, i] / dz[b]
        # Not |dt f(z)|: at the root it is at most |z| + |x0|, and away from it (a stiff field) it can be huge.
        scale = torch.maximum(_row_max(z), _row_max(x0))
        return G.detach(), J, scale

    def _fail(self, why: str, t: float, dt: float, residual: float, tol: float) -> None:
        raise NewtonConvergenceError(
            f"{type(self).__name__}: Newton's method failed on the backward-Euler step at t={t:.6g}, dt={dt:.6g}: "
            f"{why}; residual |x1 - x0 - dt f(t + dt, x1)|_inf = {residual:.3g} (tolerance {tol:.3g} relative to the "
            "state's size). Try a smaller step (step_size=...), a larger max_iters or a looser tol",
            t, dt, residual)
