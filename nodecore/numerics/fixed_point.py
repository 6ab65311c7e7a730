"""Fixed points ``z = f(z)`` for batched states: the matrix-free finders of equilibrium models.

One evaluation of ``f`` per iteration and no Jacobian, for the large states of deep equilibrium models:
:func:`fixed_point_iteration`, :func:`anderson_acceleration` and :func:`limited_memory_broyden` (Broyden's good
update, :func:`nodecore.numerics.root.good_broyden_factors`, kept as factors). Each returns a :class:`RootResult`;
:mod:`nodecore.root_finders` registers them by name for :class:`nodecore.deq.DEQ`.

Convergence is measured per sample on the relative residual ``||f(z) - z|| / (||f(z)|| + EPS)`` (Euclidean norms
over all non-batch dimensions); a solve converges when every sample's residual is ``<= tol``. Each finder returns,
per sample, the iterate with the smallest residual it saw, and never raises on non-convergence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nodecore.numerics.root import good_broyden_factors

EPS = 1e-12
"""Added to ``||f(z)||`` in the relative residual, so a state whose fixed point is 0 can converge."""

DEFAULT_DAMPING = 1.0
DEFAULT_MEMORY = 10
DEFAULT_REGULARIZATION = 1e-8

Map = Callable[[Tensor], Tensor]
"""A map ``f: [B, *S] -> [B, *S]`` whose fixed point is sought."""


@dataclass(frozen=True)
class RootResult:
    """The outcome of one fixed-point solve.

    Attributes:
        z: ``[B, *S]`` per sample, the iterate with the smallest relative residual seen.
        residual: the largest, over samples, of those smallest relative residuals (inf when a sample never
            had a finite one).
        iterations: evaluations of ``f`` made (the first is ``f(z0)``).
        converged: every sample reached ``residual <= tol``.
        finite: False when ``f`` produced NaN or Inf (the solve stopped there).
        history: the largest per-sample relative residual of each evaluated iterate, in order.
    """

    z: Tensor
    residual: float
    iterations: int
    converged: bool
    finite: bool
    history: tuple[float, ...]


def _relative_residual(fz: Tensor, z: Tensor) -> Tensor:
    """``[B]``: ``||fz - z|| / (||fz|| + EPS)`` per sample, for flat ``[B, n]`` states."""
    return (fz - z).norm(dim=1) / (fz.norm(dim=1) + EPS)


class _Tracker:
    """Keeps, per sample, the best iterate and its residual; decides convergence and stopping."""

    def __init__(self, z0: Tensor, tol: float, max_iter: int) -> None:
        self.best_z = z0.clone()
        self.best_res = torch.full((z0.shape[0],), math.inf, dtype=z0.dtype, device=z0.device)
        self.tol = tol
        self.max_iter = max_iter
        self.iterations = 0
        self.history: list[float] = []
        self.finite = True
        self.converged = False

    def update(self, z: Tensor, fz: Tensor) -> bool:
        """Record ``f(z) = fz``; True when the solve should stop (converged, non-finite or out of iterations)."""
        self.iterations += 1
        res = _relative_residual(fz, z)
        better = res < self.best_res  # False for NaN: a non-finite iterate never replaces the best one
        self.best_res = torch.where(better, res, self.best_res)
        self.best_z = torch.where(better[:, None], z, self.best_z)
        # One host synchronisation per iteration.
        finite, worst, converged = torch.stack(
            [torch.isfinite(res).all().to(res.dtype), res.max(), (self.best_res <= self.tol).all().to(res.dtype)]
        ).tolist()
        self.finite = bool(finite)
        self.converged = self.finite and bool(converged)
        self.history.append(worst if self.finite else math.nan)
        return self.converged or not self.finite or self.iterations >= self.max_iter

    def result(self, shape: torch.Size) -> RootResult:
        residual = float(self.best_res.max())
        return RootResult(
            self.best_z.reshape(shape), residual, self.iterations, self.converged, self.finite, tuple(self.history)
        )


def _flat(f: Map, z0: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``f`` and ``z0`` on flat ``[B, n]`` states (a 1-D ``z0`` is one sample)."""
    shape = z0.shape
    batch = shape[0] if z0.ndim > 1 else 1

    def f_flat(z: Tensor) -> Tensor:
        fz = f(z.reshape(shape))
        if not isinstance(fz, Tensor) or fz.shape != shape:
            got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
            raise ValueError(f"the map must return a tensor shaped like the state {tuple(shape)}, got {got}")
        return fz.reshape(batch, -1)

    return f_flat, z0.reshape(batch, -1)


@torch.no_grad()
def fixed_point_iteration(
    f: Map, z0: Tensor, *, tol: float, max_iter: int, damping: float = DEFAULT_DAMPING,
    memory: int = DEFAULT_MEMORY, regularization: float = DEFAULT_REGULARIZATION,
) -> RootResult:
    """Plain (optionally damped) fixed-point iteration ``z <- (1 - damping) z + damping f(z)``.

    Converges linearly for a contraction, at the rate of its Lipschitz constant. ``memory`` and
    ``regularization`` are not used.

    Args:
        f: the map ``[B, *S] -> [B, *S]``.
        z0: ``[B, *S]`` initial iterate.
        tol: relative-residual tolerance.
        max_iter: cap on evaluations of ``f``.
        damping: step fraction in (0, 1]; < 1 can tame oscillating (non-contractive) iterations.

    Returns:
        The :class:`RootResult`.
    """
    f_flat, z = _flat(f, z0)
    tracker = _Tracker(z, tol, max_iter)
    while True:
        fz = f_flat(z)
        if tracker.update(z, fz):
            return tracker.result(z0.shape)
        z = z + damping * (fz - z)


@torch.no_grad()
def anderson_acceleration(
    f: Map, z0: Tensor, *, tol: float, max_iter: int, damping: float = DEFAULT_DAMPING,
    memory: int = DEFAULT_MEMORY, regularization: float = DEFAULT_REGULARIZATION,
) -> RootResult:
    """Anderson acceleration (type II, Walker & Ni 2011) with a window of the last ``memory`` iterates.

    Each step picks, per sample, weights ``alpha`` (summing to 1) minimising
    ``||sum_i alpha_i (f(z_i) - z_i)||`` over the window, then mixes
    ``z <- damping * sum alpha_i f(z_i) + (1 - damping) * sum alpha_i z_i``.

    Args:
        f: the map ``[B, *S] -> [B, *S]``.
        z0: ``[B, *S]`` initial iterate.
        tol: relative-residual tolerance.
        max_iter: cap on evaluations of ``f``.
        damping: mixing parameter (beta) in (0, 1].
        memory: window size m >= 1 (m = 1 is damped fixed-point iteration).
        regularization: Tikhonov term of the small least-squares problem, relative to the mean squared
            residual norm in the window (scale-free); at least 10 x the state dtype's machine epsilon is used.
            Raise it if iterates jump about.

    Returns:
        The :class:`RootResult`.
    """
    f_flat, z = _flat(f, z0)
    batch, n = z.shape
    tracker = _Tracker(z, tol, max_iter)
    X = torch.zeros(batch, memory, n, dtype=z.dtype, device=z.device)
    F = torch.zeros_like(X)
    G = torch.zeros_like(X)  # residuals f(z_i) - z_i
    gram = torch.zeros(batch, memory, memory, dtype=torch.float64, device=z.device)  # the small system in float64
    # Relative to the mean squared residual; never below the Gram matrix's rounding, so the system stays solvable.
    ridge = max(regularization, 10 * torch.finfo(z.dtype).eps)
    k = 0
    while True:
        fz = f_flat(z)
        slot = k % memory
        X[:, slot], F[:, slot], G[:, slot] = z, fz, fz - z
        if tracker.update(z, fz):
            return tracker.result(z0.shape)
        k += 1
        size = min(k, memory)
        row = (G[:, :size] * G[:, slot, None]).sum(dim=-1).double()  # only the new residual's products change
        gram[:, slot, :size] = row
        gram[:, :size, slot] = row
        scale = gram[:, :size, :size].diagonal(dim1=1, dim2=2).mean(dim=1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        system = torch.zeros(batch, size + 1, size + 1, dtype=torch.float64, device=z.device)
        system[:, 0, 1:] = system[:, 1:, 0] = 1.0
        system[:, 1:, 1:] = gram[:, :size, :size]
        system[:, 1:, 1:].diagonal(dim1=1, dim2=2).add_((ridge * scale)[:, None])
        rhs = torch.zeros(batch, size + 1, 1, dtype=torch.float64, device=z.device)
        rhs[:, 0] = 1.0
        alpha = torch.linalg.solve(system, rhs)[:, 1:].to(z.dtype)  # [B, size, 1], sums to 1
        mixed_f = (alpha * F[:, :size]).sum(dim=1)
        mixed_x = (alpha * X[:, :size]).sum(dim=1)
        z = damping * mixed_f + (1.0 - damping) * mixed_x


@torch.no_grad()
def limited_memory_broyden(
    f: Map, z0: Tensor, *, tol: float, max_iter: int, damping: float = DEFAULT_DAMPING,
    memory: int = DEFAULT_MEMORY, regularization: float = DEFAULT_REGULARIZATION,
) -> RootResult:
    """Limited-memory Broyden's method (the good update, :func:`good_broyden_factors`) on ``g(z) = f(z) - z``.

    Keeps, per sample, an inverse-Jacobian estimate ``H = -I + U V^T`` of rank at most ``memory`` (the update's
    factors as columns of ``U``, ``V``; it restarts from ``-I`` when full) and steps ``z <- z - damping * H g(z)``.
    Its first step is a fixed-point step. ``regularization`` is not used.

    Args:
        f: the map ``[B, *S] -> [B, *S]``.
        z0: ``[B, *S]`` initial iterate.
        tol: relative-residual tolerance.
        max_iter: cap on evaluations of ``f``.
        damping: step fraction in (0, 1].
        memory: number of rank-one updates kept, >= 1.

    Returns:
        The :class:`RootResult`.
    """
    f_flat, z = _flat(f, z0)
    batch, n = z.shape
    tracker = _Tracker(z, tol, max_iter)
    U = torch.zeros(batch, n, memory, dtype=z.dtype, device=z.device)
    V = torch.zeros_like(U)

    def apply_h(v: Tensor) -> Tensor:  # H v = -v + U (V^T v); elementwise: faster than bmm on tiny blocks
        return -v + (U * (V * v[:, :, None]).sum(dim=1, keepdim=True)).sum(dim=-1)

    def apply_ht(v: Tensor) -> Tensor:  # H^T v = -v + V (U^T v)
        return -v + (V * (U * v[:, :, None]).sum(dim=1, keepdim=True)).sum(dim=-1)

    fz = f_flat(z)
    g = fz - z
    if tracker.update(z, fz):
        return tracker.result(z0.shape)
    k = 0
    while True:
        z_new = z - damping * apply_h(g)
        fz = f_flat(z_new)
        g_new = fz - z_new
        if tracker.update(z_new, fz):
            return tracker.result(z0.shape)
        dz, dg = z_new - z, g_new - g
        u, v = good_broyden_factors(dz, dg, apply_h(dg), apply_ht(dz))
        if k == memory:  # restart from H = -I: dropping only the oldest update can make H diverge
            U.zero_(), V.zero_()
            k = 0
        U[:, :, k], V[:, :, k] = u, v
        k += 1
        z, g = z_new, g_new
