"""Multiple shooting: solve all intervals of ``t_span`` at once and stitch them by a root-finding iteration.

The unknowns are the shooting points ``B = [x(t_0), ..., x(t_N)]``; a fine propagator ``F`` (one interval of a
fine solver) should satisfy ``B[m+1] = F(B[m])``. Both methods below are exact on the first ``k`` intervals
after ``k`` iterations, so ``maxiter >= N`` reproduces the sequential fine solve:

* :class:`MSZero` — Parareal (Lions, Maday & Turinici 2001): ``B[m+1] <- G(B_new[m]) + F(B[m]) - G(B[m])``
  with a cheap coarse propagator ``G``; a zero-order model of ``F``'s Jacobian.
* :class:`MSBackward` — Newton's method with the exact Jacobian–vector products of ``F`` (by autograd):
  ``B[m+1] <- F(B[m]) + ∂F(B[m]) (B_new[m] - B[m])``.

The propagators of all intervals run as one batched solve when the field promises not to read ``t`` (a true
``ignores_time`` attribute, as a :class:`~nodecore.fields.VectorField` around a field of ``x`` alone has);
otherwise each interval is solved on its own times, one solve per interval, so a time-dependent field gets its
true ``t`` (torchdyn's batch every interval from ``t = 0`` and return a wrong solution for one). ``t_span`` must
be equally spaced (checked).

Gradients: ``sensitivity='autograd'`` backpropagates through every iteration (memory grows with ``maxiter``
times the intervals). ``'adjoint'`` differentiates the solution of the shooting equations ``B[m+1] = F(B[m])``,
``B[0] = x``, by the implicit function theorem: with ``lambda_N = dL/dB[N]`` and
``lambda_m = dL/dB[m] + (dF/dz)(B[m])^T lambda_{m+1}``, ``dL/dx = lambda_0`` and
``dL/dtheta = sum_m (dF/dtheta)(B[m])^T lambda_{m+1}`` — the discrete adjoint of one sequential fine sweep
through the returned points, one interval's graph at a time. It is the gradient of the sequential fine solve
when the iteration has converged (``maxiter >= N``, or a small defect); before that it linearises around the
unconverged points, and does not differentiate the iterations. The initial guess ``B0`` gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nodecore._checks import choice, integer, number
from nodecore.numerics.control import IntegralController
from nodecore.numerics.implicit import ImplicitEuler
from nodecore.numerics.integrate import integrate
from nodecore.numerics.registry import solver_object
from nodecore.numerics.solvers import RungeKutta, time_tensor
from nodecore.numerics.stats import StepCounts

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ShootingGrid:
    """The shooting intervals: interval ``m`` runs over ``starts[m] + offsets`` (``offsets[0] = 0``).

    Attributes:
        starts: the left ends ``t_0 .. t_{N-1}``; offsets: the fine grid of one interval, from 0.
        time_free: the field never reads ``t``, so all intervals can be solved as one batch.
    """

    starts: tuple[float, ...]
    offsets: tuple[float, ...]
    time_free: bool

    def times(self, m: int) -> list[float]:
        """The fine grid of interval ``m``."""
        return [self.starts[m] + offset for offset in self.offsets]


class MultipleShootingSolver:
    """A multiple-shooting method: a coarse and a fine single-interval solver and an update rule.

    Args:
        coarse_method, fine_method: solver names or objects, used at constant steps.

    Attributes:
        reads_guess: whether :meth:`root_solve` starts from the guess ``B``; when False, :func:`odeint_mshooting`
            does not compute the coarse sweep and hands ``x`` repeated instead.
    """

    reads_guess: bool = True

    def __init__(self, coarse_method: str | RungeKutta = "euler", fine_method: str | RungeKutta = "rk4") -> None:
        self.coarse_method = solver_object(coarse_method)
        self.fine_method = solver_object(fine_method)

    def propagate(self, solver: RungeKutta, f: Field, z: Tensor, times: list[float]) -> Tensor:
        """``solver`` over ``times`` from every state in ``z`` (batched over its leading dims): a fixed-step solver one
        step per grid interval; an adaptive one stepping onto every grid point at ``atol = rtol = 1``."""
        return integrate(f, z, times, solver, atol=1.0, rtol=1.0, controller=IntegralController(),
                         counts=StepCounts(), max_steps=10**9)[-1]

    def propagate_all(self, solver: RungeKutta, f: Field, Z: Tensor, grid: ShootingGrid) -> Tensor:
        """Interval ``m`` of ``solver`` from ``Z[m]``, for every ``m``: ``[N, *S] -> [N, *S]``."""
        if grid.time_free:
            return self.propagate(solver, f, Z, list(grid.offsets))
        return torch.stack([self.propagate(solver, f, Z[m], grid.times(m)) for m in range(Z.shape[0])])

    def root_solve(self, f: Field, x: Tensor, B: Tensor, grid: ShootingGrid, maxiter: int) -> Tensor:
        """The shooting points after ``maxiter`` iterations from the guess ``B [N+1, *S]``."""
        raise NotImplementedError


class MSZero(MultipleShootingSolver):
    """Parareal: the coarse solver's sweep corrected by the fine solver's defect (torchdyn's ``'mszero'``)."""

    def root_solve(self, f: Field, x: Tensor, B: Tensor, grid: ShootingGrid, maxiter: int) -> Tensor:
        for _ in range(maxiter):
            fine = self.propagate_all(self.fine_method, f, B[:-1], grid)
            coarse = self.propagate_all(self.coarse_method, f, B[:-1], grid)
            points = [x]
            for m in range(B.shape[0] - 1):
                points.append(self.propagate(self.coarse_method, f, points[-1], grid.times(m)) + fine[m] - coarse[m])
            B = torch.stack(points)
        return B


class MSBackward(MultipleShootingSolver):
    """Newton's method on the shooting equations, Jacobian–vector products by autograd (torchdyn's
    ``'msbackward'``)."""

    def root_solve(self, f: Field, x: Tensor, B: Tensor, grid: ShootingGrid, maxiter: int) -> Tensor:
        for _ in range(maxiter):
            points = [x]
            for m in range(B.shape[0] - 1):
                def fine(z: Tensor, times: list[float] = grid.times(m)) -> Tensor:
                    return self.propagate(self.fine_method, f, z, times)

                value, jvp = torch.autograd.functional.jvp(fine, B[m], points[-1] - B[m], create_graph=torch.is_grad_enabled())
                points.append(value + jvp)
            B = torch.stack(points)
        return B


class MSForward(MSBackward):
    """torchdyn's forward-sensitivity multiple shooting: Newton's method with the exact Jacobian of the matching
    conditions, the same iteration as :class:`MSBackward` (torchdyn's class exists but its ``root_solve`` raises
    ``NotImplementedError``)."""


class ParallelImplicitEuler(MultipleShootingSolver):
    """Backward Euler on ``t_span`` through :func:`~nodecore.numerics.shooting.odeint_mshooting` (torchdyn's
    ``ParallelImplicitEuler``): the shooting points ``B`` with one backward-Euler step per interval,

        B[0] = x,    B[m+1] = B[m] + dt f(t_{m+1}, B[m+1]),    dt = t_{m+1} - t_m.

    torchdyn minimises the sum of these equations' squared residuals over all of ``B`` at once by L-BFGS (and
    evaluates ``f`` at time 0). That system is block lower-triangular: given ``B[m]``, ``B[m+1]`` is the root of one
    backward-Euler step and nothing later. So its unique solution (for steps small enough that each step's root is
    unique) is found here exactly and more cheaply **interval by interval**, each by :class:`ImplicitEuler`'s Newton
    solve, with ``f`` at the right time ``t_{m+1}`` — sequential, not parallel in time, despite the name. The result
    equals ``odeint(f, x, t_span, ImplicitEuler())``.

    As in torchdyn, the guess ``B`` and ``maxiter`` are not used (each step is solved to convergence), and neither is
    ``fine_steps``: every interval is a single step. Unlike torchdyn, the coarse solver's sweep that would make the
    guess is not computed either (:attr:`reads_guess` is False). Gradients: with
    ``sensitivity='autograd'`` through each step's implicit-function-theorem Newton step; with ``'adjoint'``
    :func:`odeint_mshooting`'s discrete adjoint through the same one-step propagator.

    Args:
        coarse_method: the solver of the initial guess that :func:`odeint_mshooting` builds (unused here).
        fine_method: the one-interval propagator: ``'euler'`` (torchdyn's default, whose fine solver is never
            used), ``'implicit_euler'`` or ``'ieuler'`` for a default :class:`ImplicitEuler`, or an
            :class:`ImplicitEuler` object (to set its ``max_iters``, ``tol`` or ``predictor``).
        max_iters, tol: when given, set on the fine :class:`ImplicitEuler`.

    Raises:
        ValueError: another ``fine_method``.
    """

    FINE_NAMES: tuple[str, ...] = ("euler", "implicit_euler", "ieuler")
    reads_guess = False  # every interval is solved from the end of the one before

    def __init__(self, coarse_method: str | RungeKutta = "euler", fine_method: str | ImplicitEuler = "euler",
                 max_iters: int | None = None, tol: float | None = None) -> None:
        if isinstance(fine_method, ImplicitEuler):
            fine = fine_method
        elif isinstance(fine_method, str) and fine_method in self.FINE_NAMES:
            fine = ImplicitEuler()
        else:
            got = repr(fine_method) if isinstance(fine_method, str) else f"a {type(fine_method).__name__}"
            raise ValueError(
                "ParallelImplicitEuler propagates each interval by one backward-Euler step, so fine_method must be "
                f"one of {', '.join(map(repr, self.FINE_NAMES))} or an ImplicitEuler object, got {got}")
        super().__init__(coarse_method, "euler")
        if max_iters is not None:
            fine.max_iters = integer("max_iters", max_iters, minimum=1)
        if tol is not None:
            fine.tol = number("tol", tol, minimum=0)
        self.fine_method = fine

    @property
    def max_iters(self) -> int:
        """The fine :class:`ImplicitEuler`'s most Newton iterations per step (settable, as in torchdyn)."""
        return self.fine_method.max_iters

    @max_iters.setter
    def max_iters(self, value: int) -> None:
        self.fine_method.max_iters = integer("max_iters", value, minimum=1)

    def propagate(self, solver: RungeKutta, f: Field, z: Tensor, times: list[float]) -> Tensor:
        """The fine propagator is one backward-Euler step over the whole interval ``times[0] -> times[-1]``;
        any other solver (the coarse guess) as the base class propagates it."""
        if solver is self.fine_method:
            dt = times[-1] - times[0]
            return solver.step(f, z, time_tensor(times[0], z), dt)[1]
        return super().propagate(solver, f, z, times)

    def root_solve(self, f: Field, x: Tensor, B: Tensor, grid: ShootingGrid, maxiter: int) -> Tensor:
        """The shooting points ``[N+1, *S]``, solved interval by interval (``B`` and ``maxiter`` unused)."""
        points = [x]
        for m in range(len(grid.starts)):
            points.append(self.propagate(self.fine_method, f, points[-1], grid.times(m)))
        return torch.stack(points)


class _ShootingAdjoint(torch.autograd.Function):
    """The shooting solution ``B`` with the implicit-function-theorem gradient (the module docstring's recursion)."""

    @staticmethod
    def forward(ctx, solver: MultipleShootingSolver, f: nn.Module, grid: ShootingGrid, maxiter: int, B0: Tensor,
                x: Tensor, *params: Tensor) -> Tensor:
        B = solver.root_solve(f, x, B0, grid, maxiter)  # grad mode is off here: no graph is kept
        ctx.solver, ctx.f, ctx.grid, ctx.params = solver, f, grid, params
        ctx.save_for_backward(B)
        return B

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_B: Tensor) -> tuple:
        (B,) = ctx.saved_tensors
        solver, f, grid, params = ctx.solver, ctx.f, ctx.grid, ctx.params
        lam = grad_B[-1]
        grads = [torch.zeros_like(p) for p in params]
        for m in range(B.shape[0] - 2, -1, -1):
            with torch.enable_grad():
                z = B[m].detach().requires_grad_()
                step = solver.propagate(solver.fine_method, f, z, grid.times(m))
                d_z, *d_params = torch.autograd.grad(step, (z, *params), lam, allow_unused=True)
            lam = grad_B[m] + (d_z if d_z is not None else 0.0)
            for total, d in zip(grads, d_params):
                if d is not None:
                    total.add_(d)
        return (None, None, None, None, None, lam, *grads)


#: Gradient methods of :func:`odeint_mshooting`: torchdyn's names; ``'interpolated_adjoint'`` is ``'adjoint'`` here
#: (both read the forward points, none solves an adjoint ODE).
SHOOTING_SENSITIVITIES: tuple[str, ...] = ("autograd", "adjoint", "interpolated_adjoint")

MS_SOLVERS: dict[str, type[MultipleShootingSolver]] = {
    "mszero": MSZero, "zero": MSZero, "parareal": MSZero,
    "msbackward": MSBackward, "backward": MSBackward, "newton": MSBackward, "discrete-adjoint": MSBackward,
    "ieuler": ParallelImplicitEuler, "parallel-implicit-euler": ParallelImplicitEuler,
}


def odeint_mshooting(
    f: Field,
    x: Tensor,
    t_span: Tensor,
    solver: str | MultipleShootingSolver = "mszero",
    B0: Tensor | None = None,
    fine_steps: int = 2,
    maxiter: int = 4,
    *,
    sensitivity: Literal["autograd", "adjoint", "interpolated_adjoint"] = "autograd",
) -> tuple[Tensor, Tensor]:
    """Solve ``dx/dt = f(t, x)`` on ``t_span`` by multiple shooting; torchdyn's functional API.

    Args:
        f: the field, called as ``f(t, x)``; one with a true ``ignores_time`` attribute has all intervals solved
            as one batch, any other one interval at a time on its own times.
        x: initial state ``[*S]``.
        t_span: ``[N+1]`` equally spaced times.
        solver: ``'mszero'`` (Parareal) or ``'msbackward'`` (Newton), or a :class:`MultipleShootingSolver`.
        B0: initial guess of the shooting points ``[N+1, *S]``; the coarse solver's sequential sweep when None.
        fine_steps: points of each interval's grid (``fine_steps - 1`` constant steps per interval).
        maxiter: iterations; ``maxiter >= N`` gives the sequential fine solve.
        sensitivity: ``'autograd'`` (through the iterations) or ``'adjoint'`` (= ``'interpolated_adjoint'``): the
            implicit-function-theorem gradient of the shooting solution (see the module docstring); then ``f`` must
            be an ``nn.Module``, whose parameters get the gradients.

    Returns:
        ``(t_span, B)`` with ``B [N+1, *S]`` the solution at ``t_span``.

    Raises:
        ValueError: an unknown solver or sensitivity, ``t_span`` not equally spaced, a bad ``B0``, ``fine_steps`` or
            ``maxiter``.
        TypeError: ``sensitivity='adjoint'`` with an ``f`` that is not an ``nn.Module``.
    """
    sensitivity = choice("sensitivity", sensitivity, SHOOTING_SENSITIVITIES, plural="sensitivities")
    if sensitivity != "autograd" and not isinstance(f, nn.Module):
        raise TypeError(
            f"sensitivity={sensitivity!r} returns gradients for the field's parameters, so f must be an nn.Module "
            f"(got {type(f).__name__}); tensors a plain function captures would get no gradient. Wrap it in an "
            "nn.Module or use sensitivity='autograd'"
        )
    if isinstance(solver, str):
        solver = MS_SOLVERS[choice("multiple-shooting solver", solver, tuple(MS_SOLVERS))]()
    fine_steps = integer("fine_steps", fine_steps, minimum=2)
    maxiter = integer("maxiter", maxiter, minimum=0)
    given = torch.as_tensor(t_span)
    precision = given.dtype if given.is_floating_point() else x.dtype  # of the times as the user made them
    t_span = given.to(dtype=x.dtype, device=x.device)
    if t_span.ndim != 1 or t_span.numel() < 2:
        raise ValueError(f"t_span must be 1-D with at least 2 times, got shape {tuple(t_span.shape)}")
    dt = t_span.diff()
    # Equal up to the rounding of the times themselves: float32 linspace(0, 3, 2000) steps differ by ~1e-4
    # relative (a few ulps of t), and torchdyn users pass such spans.
    rounding = 8 * torch.finfo(precision).eps * float(t_span.abs().max())
    if not torch.allclose(dt, dt[0].expand_as(dt), rtol=1e-6, atol=rounding) or float(dt[0]) == 0.0:
        raise ValueError(f"multiple shooting needs equally spaced t_span, got {t_span.tolist()}")
    step = float(dt[0])
    grid = ShootingGrid(starts=tuple(t_span[:-1].tolist()),
                        offsets=tuple(step * k / (fine_steps - 1) for k in range(fine_steps)),
                        time_free=bool(getattr(f, "ignores_time", False)))
    if B0 is not None and B0.shape != (t_span.numel(), *x.shape):
        raise ValueError(f"B0 must have shape {(t_span.numel(), *x.shape)} (one state per time), got {tuple(B0.shape)}")
    if sensitivity != "autograd":
        with torch.no_grad():
            B0 = _coarse_sweep(solver, f, x, grid) if B0 is None else B0.detach()
        params = tuple(p for p in f.parameters() if p.requires_grad)
        return t_span, _ShootingAdjoint.apply(solver, f, grid, maxiter, B0, x, *params)
    if B0 is None:
        B0 = _coarse_sweep(solver, f, x, grid)
    return t_span, solver.root_solve(f, x, B0, grid, maxiter)


def _coarse_sweep(solver: MultipleShootingSolver, f: Field, x: Tensor, grid: ShootingGrid) -> Tensor:
    """The default initial guess: the coarse solver's sequential sweep from ``x``, ``[N+1, *x.shape]`` (``x`` repeated,
    a view, for a solver that never reads the guess)."""
    if not solver.reads_guess:
        return x.detach().expand(len(grid.starts) + 1, *x.shape)
    states = [x]
    for m in range(len(grid.starts)):
        states.append(solver.propagate(solver.coarse_method, f, states[-1], grid.times(m)))
    return torch.stack(states)
