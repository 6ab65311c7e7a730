"""Root finding for batched nonlinear systems ``g(z) = 0``: torchdyn's ``root_find``.

A solve is three parts, each its own object: a *method* that keeps an estimate ``J_inv`` of the (pseudo-)inverse
Jacobian (Broyden's two updates, Newton, chord), a *line search* that picks the step size along the quasi-Newton
direction, and a :class:`TerminationCondition`. :func:`root_find` only sequences them.

Broyden's good update is written once (:func:`good_broyden_factors`): :class:`BroydenFull` applies it to a dense
``J_inv``, :func:`nodecore.numerics.fixed_point.limited_memory_broyden` (the matrix-free fixed-point finder of
equilibrium models) keeps its factors.

Dimension 0 of ``z`` (``[B, D]``) indexes independent systems: ``g`` must map ``[B, D]`` to ``[B, M]`` with
row ``b`` of ``g(z)`` depending on row ``b`` of ``z`` only (no batch norm across the batch). ``M = D`` is a
square system; ``M < D`` (e.g. one equation ``[B, 1]`` in ``D`` unknowns, as torchdyn's tests use) is an
underdetermined one, whose roots form a ``(D - M)``-dimensional set: ``J_inv`` is then the ``[B, D, M]``
pseudo-inverse and each Newton step the minimum-norm solution of the linearised equations (Ben-Israel's
Newton–Moore–Penrose iteration), so the solve ends on *a* root near ``z0``, not a unique one. Every sample has
its own Jacobian estimate and its own step size; the solve stops when every sample meets the termination
condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.functional import jacobian

from nodecore._checks import choice, integer, number, positive
from nodecore.errors import NonFiniteError

Residual = Callable[[Tensor], Tensor]
"""A batched system ``g: [B, D] -> [B, M]`` (``M <= D``) whose root is sought, rows independent."""


def batch_jacobian(func: Residual, x: Tensor) -> Tensor:
    """The per-sample Jacobians ``d func(x)[b] / d x[b]`` of a row-wise function, shape ``[B, D_out, D_in]``.

    ``func`` is called on the whole batch ``[B, D_in]`` (never on single rows) and must act row by row; the
    result is detached (no graph back to ``func``'s parameters).

    Raises:
        ValueError: ``x`` is not ``[B, D_in]`` or ``func(x)`` is not ``[B, D_out]``.
    """
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"batch_jacobian needs x of shape [batch, dim], got {_shape_of(x)}")

    def summed(z: Tensor) -> Tensor:  # rows are independent, so d(sum_b func(z)[b]) / dz[b] = J[b]
        out = func(z)
        if out.ndim != 2 or out.shape[0] != z.shape[0]:
            raise ValueError(f"batch_jacobian needs func(x) of shape [batch, dim] with batch {z.shape[0]}, "
                             f"got {list(out.shape)}")
        return out.sum(0)

    return jacobian(summed, x).permute(1, 0, 2)  # [D_out, B, D_in] -> [B, D_out, D_in]


def _shape_of(x: object) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}"


def _apply(J_inv: Tensor, v: Tensor) -> Tensor:
    """``J_inv @ v`` per sample: ``[B, D, M] x [B, M] -> [B, D]``."""
    return torch.einsum("bij,bj->bi", J_inv, v)


def good_broyden_factors(dz: Tensor, dg: Tensor, J_dg: Tensor, Jt_dz: Tensor) -> tuple[Tensor, Tensor]:
    """The rank-one factors ``(u, v)`` of Broyden's good update of an inverse-Jacobian estimate ``H``.

    ``H + u v^T = H + (dz - H dg) (dz^T H) / (dz^T H dg)`` (Sherman–Morrison applied to Broyden's update of the
    Jacobian) maps ``dg`` to ``dz`` and acts like ``H`` on every ``w`` with ``dz^T H w = 0``. A sample whose
    update is degenerate (a zero step, or ``|dz^T H dg| <= eps |dz| |H dg|``, or not finite) gets ``u = v = 0``.

    Args:
        dz: ``[B, D]`` the step; dg: ``[B, M]`` the change in the residual; J_dg: ``H dg`` (``[B, D]``);
            Jt_dz: ``H^T dz`` (``[B, M]``). ``H`` itself (dense or factored) is the caller's.

    Returns:
        ``(u, v)``: ``[B, D]`` and ``[B, M]``.
    """
    den = (Jt_dz * dg).sum(-1)
    scale = torch.linalg.vector_norm(dz, dim=-1) * torch.linalg.vector_norm(J_dg, dim=-1)
    ok = torch.isfinite(den) & (den.abs() > torch.finfo(den.dtype).eps * scale)
    safe = torch.where(ok, den, torch.ones_like(den))[:, None]
    u = torch.where(ok[:, None], (dz - J_dg) / safe, torch.zeros_like(dz))
    return u, torch.where(ok[:, None], Jt_dz, torch.zeros_like(Jt_dz))


class RootMethod:
    """How a method starts and revises ``J_inv`` (``[B, D, M]``), its estimate of the inverse Jacobian of ``g``.

    Every method starts from the pseudo-inverse of the exact Jacobian at ``z0``; the quasi-Newton direction at
    ``z`` is ``dz = J_inv @ g(z)`` and a full step goes to ``z - dz``. For ``M < D``, ``J_inv`` is a pseudo-inverse
    and the full step the minimum-norm solution of the linearised equations (where the Jacobian has full row rank).
    """

    def initial_jacobian(self, g: Residual, z: Tensor) -> Tensor:
        """``J_inv`` at ``z`` (``[B, D]``): the pseudo-inverse of the exact batch Jacobian, ``[B, D, M]``."""
        return torch.linalg.pinv(batch_jacobian(g, z))

    def update_jacobian(self, dg: Tensor, dz: Tensor, J_inv: Tensor, *, g: Residual | None = None,
                        z: Tensor | None = None) -> Tensor:
        """The next ``J_inv`` after a step ``dz`` (``[B, D]``) that changed ``g`` by ``dg`` (``[B, M]``).

        ``dz = z_new - z_old``; ``z`` is the new iterate ``[B, D]`` and ``g`` the system, needed only by methods
        that re-evaluate the Jacobian (:class:`Newton`).
        """
        raise NotImplementedError(f"{type(self).__name__} must define update_jacobian")

    def restart(self, g: Residual, z: Tensor, J_inv: Tensor, stalled: Tensor) -> Tensor:
        """``J_inv`` with the ``stalled`` samples (``[B]`` bool) reset to the exact one at ``z`` (``[B, D]``).

        :func:`root_find` calls it for the samples where a line search found no step that does not increase
        ``|g|``: their direction was not one of descent.
        """
        return torch.where(stalled[:, None, None], self.initial_jacobian(g, z), J_inv)

    def step(self, g: Residual, z0: Tensor, J_inv: Tensor, geval_old: Tensor,
             alpha: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step of size ``alpha`` along the quasi-Newton direction, without line search.

        Args:
            z0: ``[B, D]`` current iterate; ``geval_old``: ``g(z0)``, ``[B, M]``; ``J_inv``: ``[B, D, M]``.

        Returns:
            ``(z, dz, geval, J_inv)``: the new iterate ``z0 - alpha * dz``, the direction ``dz = J_inv @ g(z0)``,
            ``g(z)`` and the revised ``J_inv``.
        """
        dz = _apply(J_inv, geval_old)
        z = z0 - alpha * dz
        geval = g(z)
        return z, dz, geval, self.update_jacobian(geval - geval_old, z - z0, J_inv, g=g, z=z)


class Broyden(RootMethod):
    """Base of Broyden's rank-one updates: each revised ``J_inv`` maps the last ``dg`` to the last ``dz``.

    A sample whose update is degenerate (a zero step, or a zero denominator) keeps its ``J_inv``.
    """


class BroydenFull(Broyden):
    """Broyden's ("good") update, applied to the inverse by Sherman–Morrison (``method='broyden'``).

    ``J_inv += (dz - J_inv dg) (dz^T J_inv) / (dz^T J_inv dg)``: the Jacobian estimate changes only along the
    step ``dz``. Superlinear convergence near a regular root.
    """

    def update_jacobian(self, dg: Tensor, dz: Tensor, J_inv: Tensor, *, g: Residual | None = None,
                        z: Tensor | None = None) -> Tensor:
        u, v = good_broyden_factors(dz, dg, _apply(J_inv, dg), torch.einsum("bi,bij->bj", dz, J_inv))
        return J_inv + u[:, :, None] * v[:, None, :]


class BroydenBad(Broyden):
    """Broyden's "bad" update of the inverse (``method='broyden_fast'``): one product fewer, often as fast.

    ``J_inv += (dz - J_inv dg) dg^T / |dg|^2``: ``J_inv`` changes only along ``dg``.
    """

    def update_jacobian(self, dg: Tensor, dz: Tensor, J_inv: Tensor, *, g: Residual | None = None,
                        z: Tensor | None = None) -> Tensor:
        den = (dg * dg).sum(-1)
        ok = torch.isfinite(den) & (den > 0)
        safe = torch.where(ok, den, torch.ones_like(den))
        update = (dz - _apply(J_inv, dg))[:, :, None] * dg[:, None, :] / safe[:, None, None]
        return J_inv + torch.where(ok[:, None, None], update, torch.zeros_like(update))


class Newton(RootMethod):
    """Newton's method (``method='newton'``): the exact batch Jacobian at every iterate; quadratic convergence.

    Costs one :func:`batch_jacobian` (an evaluation of ``g`` and ``D`` backward passes) and one batched
    pseudo-inverse per iteration.
    """

    def update_jacobian(self, dg: Tensor, dz: Tensor, J_inv: Tensor, *, g: Residual | None = None,
                        z: Tensor | None = None) -> Tensor:
        if g is None or z is None:
            raise ValueError("Newton.update_jacobian needs the system g and the new iterate z")
        return torch.linalg.pinv(batch_jacobian(g, z))

    def restart(self, g: Residual, z: Tensor, J_inv: Tensor, stalled: Tensor) -> Tensor:
        return J_inv  # already the exact one at z


class Chord(RootMethod):
    """The chord method (``method='chord'``): Newton with the Jacobian at ``z0`` kept; linear convergence."""

    def update_jacobian(self, dg: Tensor, dz: Tensor, J_inv: Tensor, *, g: Residual | None = None,
                        z: Tensor | None = None) -> Tensor:
        return J_inv


def _squared_norm(v: Tensor) -> Tensor:
    """``|v[b]|^2`` per sample, ``[B, M] -> [B]``; inf for a row with a NaN or Inf."""
    sq = (v * v).sum(-1)
    return torch.where(torch.isfinite(v).all(-1), sq, torch.full_like(sq, float("inf")))


class _Trials:
    """Per sample, the first acceptable trial of a search, else the trial with the smallest ``phi`` below
    ``phi(0)``, else the start (step size 0)."""

    def __init__(self, searcher: LineSearcher) -> None:
        self.alpha = torch.zeros_like(searcher.phi0)
        self.phi, self.z, self.geval = searcher.phi0, searcher.z0, searcher.g0
        self.done = torch.zeros_like(searcher.phi0, dtype=torch.bool)

    def offer(self, active: Tensor, alpha: Tensor, phi: Tensor, z: Tensor, geval: Tensor, ok: Tensor) -> None:
        take = active & (ok | (phi < self.phi))
        self.alpha = torch.where(take, alpha, self.alpha)
        self.phi = torch.where(take, phi, self.phi)
        self.z = torch.where(take[:, None], z, self.z)
        self.geval = torch.where(take[:, None], geval, self.geval)
        self.done = self.done | (active & ok)


class LineSearcher:
    """Base of the backtracking searches along ``dz`` from ``z0``, one step size per sample.

    The merit function is ``phi(alpha) = |g(z0 + alpha * dz)|^2`` per sample (inf where the point or ``g`` there
    is not finite). A search
    never increases ``phi``: a sample with no acceptable step takes the tried step with the smallest ``phi``
    below ``phi(0)``, or stays at ``z0`` (step size 0) if every tried step increased it. After :meth:`search`,
    :attr:`z` and :attr:`geval` hold the chosen point and ``g`` there (``[B, D]``, ``[B, M]``), and :attr:`accepted`
    (``[B]``) says which samples moved.

    Args:
        g: the system; g0: ``g(z0)``, ``[B, M]``; dz: the direction to search along, ``[B, D]`` (for a root
            finder ``-J_inv @ g0``); z0: ``[B, D]`` the current iterate.
    """

    def __init__(self, g: Residual, g0: Tensor, dz: Tensor, z0: Tensor) -> None:
        self.g, self.g0, self.dz, self.z0 = g, g0, dz, z0
        self.phi0 = _squared_norm(g0.detach())
        self.z, self.geval = z0, g0
        self.accepted = torch.ones_like(self.phi0, dtype=torch.bool)

    def phi(self, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(phi, z, g(z))`` at ``z = z0 + alpha * dz`` for per-sample step sizes ``alpha`` (``[B]``).

        ``phi`` is detached (the step sizes chosen from it are constants to autograd), and inf where ``z`` is not
        finite: a ``g`` that is finite at infinity (``exp(-|z|)`` there is 0) must not make such a point acceptable.
        """
        z = self.z0 + alpha[:, None] * self.dz
        geval = self.g(z)
        phi = torch.where(torch.isfinite(z.detach()).all(-1), _squared_norm(geval.detach()), torch.inf)
        return phi, z, geval

    def search(self, alpha0: float = 1.0) -> tuple[Tensor, Tensor]:
        """Step sizes ``[B]`` and ``phi`` there ``[B]``, trying ``alpha0`` first."""
        raise NotImplementedError(f"{type(self).__name__} must define search")

    def _finish(self, trials: _Trials) -> tuple[Tensor, Tensor]:
        self.z, self.geval, self.accepted = trials.z, trials.geval, trials.alpha > 0
        return trials.alpha, trials.phi


class NaiveSearch(LineSearcher):
    """``search_method='naive'``: shrink the step by ``mult_factor`` until ``|g|`` does not grow, down to
    ``min_alpha``."""

    def search(self, alpha0: float = 1.0, min_alpha: float = 1e-6, mult_factor: float = 0.1) -> tuple[Tensor, Tensor]:
        alpha0 = positive("alpha0", alpha0)
        min_alpha = positive("min_alpha", min_alpha)
        mult_factor = number("mult_factor", mult_factor, minimum=0, maximum=1, open_min=True, open_max=True)
        trials = _Trials(self)
        alpha = torch.full_like(self.phi0, alpha0)
        active = torch.ones_like(trials.done)
        while True:
            trial = torch.where(active, alpha, trials.alpha)
            phi, z, geval = self.phi(trial)
            trials.offer(active, trial, phi, z, geval, ok=phi <= self.phi0)
            active = ~trials.done & (alpha * mult_factor >= min_alpha)
            if not bool(active.any()):
                return self._finish(trials)
            alpha = torch.where(active, alpha * mult_factor, alpha)


class LineSearchArmijo(LineSearcher):
    """``search_method='armijo'``: backtracking to Armijo's sufficient decrease, by quadratic then cubic
    interpolation (Nocedal & Wright, *Numerical Optimization*, section 3.5).

    A step ``alpha`` is accepted when ``phi(alpha) <= phi(0) + c1 * alpha * phi'(0)``, with the slope
    ``phi'(0) = -2 phi(0)`` of the merit function along the Newton direction (exact for Newton where the
    Jacobian has full row rank, the model slope for the quasi-Newton methods). Each new trial is kept within
    ``[0.1, 0.5]`` times the last; the search gives up below ``min_alpha``.
    """

    def search(self, alpha0: float = 1.0, c1: float = 1e-4, min_alpha: float = 1e-4) -> tuple[Tensor, Tensor]:
        alpha0 = positive("alpha0", alpha0)
        c1 = number("c1", c1, minimum=0, maximum=1, open_min=True, open_max=True)
        min_alpha = positive("min_alpha", min_alpha)
        phi0 = self.phi0
        slope = -2 * phi0
        trials = _Trials(self)
        a0 = torch.full_like(phi0, alpha0)
        p0, z, geval = self.phi(a0)
        trials.offer(torch.ones_like(trials.done), a0, p0, z, geval, ok=p0 <= phi0 + c1 * a0 * slope)
        a1 = _within(-slope * a0**2 / (2 * (p0 - phi0 - slope * a0)), a0)  # minimiser of the quadratic model
        while True:
            active = ~trials.done & (a1 >= min_alpha)
            if not bool(active.any()):
                return self._finish(trials)
            trial = torch.where(active, a1, trials.alpha)
            p1, z, geval = self.phi(trial)
            trials.offer(active, trial, p1, z, geval, ok=p1 <= phi0 + c1 * trial * slope)
            a2 = _within(_cubic_minimiser(phi0, slope, a0, p0, a1, p1), a1)
            a0, p0, a1 = torch.where(active, a1, a0), torch.where(active, p1, p0), torch.where(active, a2, a1)


def _within(alpha: Tensor, last: Tensor) -> Tensor:
    """``alpha`` kept in ``[0.1, 0.5] * last`` (``0.5 * last`` where it is not finite)."""
    kept = torch.minimum(torch.maximum(alpha, 0.1 * last), 0.5 * last)
    return torch.where(torch.isfinite(alpha), kept, 0.5 * last)


def _cubic_minimiser(phi0: Tensor, slope: Tensor, a0: Tensor, p0: Tensor, a1: Tensor, p1: Tensor) -> Tensor:
    """The minimiser of the cubic through ``phi(0)``, ``phi'(0)``, ``phi(a0)`` and ``phi(a1)`` (NaN if none)."""
    r0, r1 = p0 - phi0 - slope * a0, p1 - phi0 - slope * a1
    factor = a0**2 * a1**2 * (a1 - a0)
    a = (a0**2 * r1 - a1**2 * r0) / factor
    b = (a1**3 * r0 - a0**3 * r1) / factor
    return (-b + torch.sqrt(b**2 - 3 * a * slope)) / (3 * a)


class TerminationCondition:
    """When a solve stops: every sample has ``|g| <= f_tol``, ``|g| <= f_rtol * |g(z0)|``, ``|dz| <= x_tol``
    and ``|dz| <= x_rtol * |z|`` (Euclidean norms per sample).

    ``dz`` is the quasi-Newton direction ``J_inv @ g`` at the previous iterate (the full step, whatever the
    step size taken): an estimate of that iterate's distance to the root.

    Attributes:
        f0_norm: ``[B]`` the per-sample ``|g(z0)|`` set by :meth:`start` (by the first :meth:`check` if
            :meth:`start` was not called).
        iteration: the number of :meth:`check` calls since :meth:`start`.

    Raises:
        ValueError: a tolerance that is not a finite number ``>= 0``.
    """

    def __init__(self, f_tol: float = 1e-2, f_rtol: float = 1e-1, x_tol: float = 1e-2, x_rtol: float = 1) -> None:
        self.f_tol, self.f_rtol = number("f_tol", f_tol, minimum=0), number("f_rtol", f_rtol, minimum=0)
        self.x_tol, self.x_rtol = number("x_tol", x_tol, minimum=0), number("x_rtol", x_rtol, minimum=0)
        self.f0_norm: Tensor | None = None
        self.iteration = 0

    def start(self, g0: Tensor) -> None:
        """Take ``|g(z0)|`` (``g0``: ``[B, M]``) as the reference of ``f_rtol``."""
        self.f0_norm = torch.linalg.vector_norm(g0, dim=1)
        self.iteration = 0

    def satisfied(self, geval: Tensor, z: Tensor, dz: Tensor) -> Tensor:
        """``[B]`` whether each sample meets all four conditions (``geval``: ``[B, M]``; ``z``, ``dz``: ``[B, D]``)."""
        g_norm = torch.linalg.vector_norm(geval, dim=1)
        if self.f0_norm is None:
            self.f0_norm = g_norm
        z_norm, dz_norm = torch.linalg.vector_norm(z, dim=1), torch.linalg.vector_norm(dz, dim=1)
        f_ok = (g_norm <= self.f_tol) & (g_norm <= self.f_rtol * self.f0_norm)
        x_ok = (dz_norm <= self.x_tol) & (dz_norm <= self.x_rtol * z_norm)
        return f_ok & x_ok

    def check(self, geval: Tensor, z: Tensor, dz: Tensor) -> int:
        """``2`` (:data:`RETURN_CODES`: ``'total condition'``) when every sample is :meth:`satisfied`, else ``0``."""
        self.iteration += 1
        return 2 if bool(self.satisfied(geval, z, dz).all()) else 0


LOG_KEYS: tuple[str, ...] = ("geval", "z", "dz", "iteration", "alpha", "phi")


class RootLogger:
    """What :func:`root_find` did.

    Attributes:
        data: per iteration, when ``verbose``: lists under ``'geval'`` (``[B, M]``), ``'z'``, ``'dz'`` (``[B, D]``,
            detached), ``'iteration'`` (int), ``'alpha'`` (``[B]`` step sizes taken) and ``'phi'`` (``[B]``
            ``|g|^2`` after the step); on convergence ``data['termination_condition'] = 'total condition'``.
        converged: whether the termination condition was met (always set).
        iterations: the iterations made (always set).
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {key: [] for key in LOG_KEYS}
        self.converged = False
        self.iterations = 0

    def log(self, logged_data: Mapping[str, object]) -> None:
        """Append each value to the list under its key."""
        for key, value in logged_data.items():
            self.data.setdefault(key, []).append(value)


SEARCH_METHODS: Mapping[str, type[LineSearcher] | None] = MappingProxyType(
    {"naive": NaiveSearch, "armijo": LineSearchArmijo, "none": None})
ROOT_SOLVER_DICT: Mapping[str, RootMethod] = MappingProxyType(
    {"broyden": BroydenFull(), "broyden_fast": BroydenBad(), "newton": Newton(), "chord": Chord()})
RETURN_CODES: Mapping[int, str] = MappingProxyType({2: "total condition"})


SHOWN_SAMPLES = 5
"""How many failing sample indices an error message lists before it only counts them."""


def _samples(bad: Tensor) -> str:
    """``samples [0, 3]`` for a ``[B]`` mask, or ``samples [0, 1, 2, 3, 4, ...] (1000 of 1000)`` past a few."""
    indices = bad.nonzero().flatten().tolist()
    if len(indices) <= SHOWN_SAMPLES:
        return f"samples {indices}"
    shown = ", ".join(map(str, indices[:SHOWN_SAMPLES]))
    return f"samples [{shown}, ...] ({len(indices)} of {bad.numel()})"


def _blow_up_message(iteration: int, z: Tensor, geval: Tensor, search_method: str) -> str:
    """Why :func:`root_find` stopped on a non-finite iterate, and what to try that is not already in use."""
    bad_z, bad_g = ~torch.isfinite(z).all(1), ~torch.isfinite(geval).all(1)
    what = "z and g(z)" if bool(bad_z.any()) and bool(bad_g.any()) else "z" if bool(bad_z.any()) else "g(z)"
    hints = []
    if search_method == "none":
        hints += ["search_method='armijo' or 'naive' (a line search rejects non-finite points)", "a smaller alpha"]
    elif iteration == 1:
        hints.append("a smaller alpha")
    hints.append("a starting z nearer the root")
    tries = f"{', '.join(hints[:-1])} or {hints[-1]}" if len(hints) > 1 else hints[-1]
    return (f"root_find: {what} became NaN or Inf at iteration {iteration} with search_method={search_method!r}, "
            f"in {_samples(bad_z | bad_g)}; try {tries}")


def _check_state(z: object) -> Tensor:
    if not isinstance(z, Tensor) or not z.is_floating_point():
        kind = f"dtype {z.dtype}" if isinstance(z, Tensor) else f"a {type(z).__name__}"
        raise ValueError(f"root_find needs z as a floating-point tensor of shape [batch, dim], got {kind}")
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"root_find needs z of shape [batch, dim] with batch, dim >= 1, got {list(z.shape)}")
    bad = ~torch.isfinite(z).all(1)
    if bool(bad.any()):
        raise ValueError(f"root_find needs a finite z; {_samples(bad)} have NaN or Inf")
    return z


def _check_residual(geval: object, z: Tensor) -> Tensor:
    """``g(z)`` must be ``[B, M]`` with ``1 <= M <= D``: a square or underdetermined system.

    More equations than unknowns is refused: such a system has no root unless its equations happen to agree,
    ``J_inv`` would then be a least-squares (Gauss–Newton) inverse with ``J J_inv != I``, and the line searches'
    slope ``-2 |g|^2`` would be wrong. That is nonlinear least squares, another problem.
    """
    batch, dim = z.shape
    if not isinstance(geval, Tensor) or geval.ndim != 2 or geval.shape[0] != batch or geval.shape[1] == 0:
        raise ValueError(f"root_find needs g(z) of shape [{batch}, M] with 1 <= M <= {dim} for z of shape "
                         f"{list(z.shape)}, got {_shape_of(geval)}")
    if geval.shape[1] > dim:
        raise ValueError(f"root_find needs at most as many equations as unknowns: g(z) has shape "
                         f"{list(geval.shape)} for z of shape {list(z.shape)}, an overdetermined system (a "
                         "least-squares problem, which generically has no root)")
    bad = ~torch.isfinite(geval).all(1)
    if bool(bad.any()):
        raise ValueError(f"g(z) is not finite at the initial z in {_samples(bad)}")
    return geval


def root_find(g: Residual, z: Tensor, alpha: float = 0.1, f_tol: float = 1e-2, f_rtol: float = 1e-1,
              x_tol: float = 1e-2, x_rtol: float = 1, maxiters: int = 100, method: str = "broyden",
              search_method: str = "naive", verbose: bool = True) -> tuple[Tensor, RootLogger]:
    """Find ``z`` with ``g(z) = 0`` for a batch of independent systems, starting from ``z`` (``[B, D]``).

    Each iteration takes the quasi-Newton direction ``dz = J_inv @ g(z)`` and steps to ``z - alpha_b * dz``,
    with per-sample step sizes ``alpha_b``: with ``search_method='none'`` always ``alpha``; with a line search
    the one it picks, trying ``alpha`` on the first iteration and the full step ``1`` after. Then the method
    revises ``J_inv``. A line search never lets ``|g|`` grow: a sample for which it finds no such step stays
    put for that iteration and restarts from the exact Jacobian there (:meth:`RootMethod.restart`).

    The solve stops when the :class:`TerminationCondition` holds for every sample, or after ``maxiters``
    iterations (not an error: see ``logger.converged``). Autograd flows through the iterations (each
    :func:`batch_jacobian` is a constant); wrap the call in ``torch.no_grad()`` when no gradient is needed.

    ``g`` may have fewer equations than unknowns (``M < D``; e.g. ``[B, 1]`` for ``z`` of shape ``[B, 2]``). That
    is not broadcasting: it is ``M`` equations in ``D`` unknowns, ``J_inv`` is the ``[B, D, M]`` pseudo-inverse and
    each step the minimum-norm correction, so from ``z0`` the solve reaches one point of the ``(D - M)``-dimensional
    root set (for a linear ``g`` with Newton's full step, the orthogonal projection of ``z0`` onto it). The
    gradient through such a solve is that of the root the iterations reach.

    Args:
        g: the system, ``[B, D] -> [B, M]`` with ``1 <= M <= D``, rows independent.
        z: ``[B, D]`` the starting point (finite).
        alpha: step size of the first iteration (of every iteration with ``search_method='none'``), ``> 0``.
        f_tol, f_rtol, x_tol, x_rtol: the termination tolerances, each ``>= 0``.
        maxiters: the most iterations, ``>= 1``.
        method: a name in :data:`ROOT_SOLVER_DICT`: ``'broyden'``, ``'broyden_fast'``, ``'newton'``, ``'chord'``.
        search_method: a name in :data:`SEARCH_METHODS`: ``'naive'``, ``'armijo'`` or ``'none'``.
        verbose: record every iteration in the logger's ``data``.

    Returns:
        ``(z, logger)``: the last iterate ``[B, D]`` and a :class:`RootLogger`.

    Raises:
        ValueError: an unknown method or search method, a bad option, ``z`` not a finite ``[B, D]`` tensor, or
            ``g(z)`` not finite or not ``[B, M]`` with ``1 <= M <= D`` (all before iterating).
        TypeError: ``g`` is not callable.
        NonFiniteError: an iterate or ``g`` there became NaN or Inf. Only without a line search (or with a ``g``
            that is not deterministic): a line search never accepts a point where ``z`` or ``g(z)`` is not finite.
    """
    solver = ROOT_SOLVER_DICT[choice("method", method, ROOT_SOLVER_DICT)]
    searcher = SEARCH_METHODS[choice("search_method", search_method, SEARCH_METHODS)]
    alpha = positive("alpha", alpha)
    maxiters = integer("maxiters", maxiters, minimum=1)
    tc = TerminationCondition(f_tol=f_tol, f_rtol=f_rtol, x_tol=x_tol, x_rtol=x_rtol)
    if not callable(g):
        raise TypeError(f"root_find needs a callable g, got a {type(g).__name__}")
    z = _check_state(z)
    geval = _check_residual(g(z), z)
    tc.start(geval)
    J_inv = solver.initial_jacobian(g, z)
    logger = RootLogger()
    for iteration in range(1, maxiters + 1):
        dz = _apply(J_inv, geval)
        if searcher is None:
            step = torch.full(z.shape[:1], alpha, dtype=z.dtype, device=z.device)
            z_new = z - alpha * dz
            g_new = g(z_new)
            phi = _squared_norm(g_new.detach())
            stalled = None
        else:
            search = searcher(g, geval, -dz, z)
            step, phi = search.search(alpha if iteration == 1 else 1.0)
            z_new, g_new, stalled = search.z, search.geval, ~search.accepted
        bad = ~(torch.isfinite(z_new).all(1) & torch.isfinite(g_new).all(1))
        if bool(bad.any()):
            raise NonFiniteError(_blow_up_message(iteration, z_new, g_new, search_method))
        logger.iterations = iteration
        if verbose:
            logger.log({"geval": g_new.detach(), "z": z_new.detach(), "dz": dz.detach(), "iteration": iteration,
                        "alpha": step.detach(), "phi": phi.detach()})
        code = tc.check(g_new, z_new, dz)
        if code:
            logger.converged = True
            if verbose:
                logger.data["termination_condition"] = RETURN_CODES[code]
            return z_new, logger
        if iteration < maxiters:
            J_inv = solver.update_jacobian(g_new - geval, z_new - z, J_inv, g=g, z=z_new)
            if stalled is not None and bool(stalled.any()):
                J_inv = solver.restart(g, z_new, J_inv, stalled)
        z, geval = z_new, g_new
    return z, logger
