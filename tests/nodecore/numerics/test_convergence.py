"""Measured convergence orders of every solver, and of the dense output of the adaptive ones.

The problem is nonlinear and non-autonomous, so every elementary differential shows up in the error
(linear problems only see the "tall" trees and can make a method look better than it is):

    y' = -2 t y^2,   y(t0) = y0   =>   y(t) = y0 / (1 + y0 (t^2 - t0^2))  (here t0 = 0),

with a batch of three initial values. Errors are the maximum over a whole trajectory (all output points
and components), which keeps accidental sign changes of the error at one point from spoiling a slope.
Step sizes are chosen per solver so that the errors lie in the asymptotic range and well above float64
round-off; slopes are least-squares fits of ``log(error)`` against ``log(h)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodecore.numerics import SOLVERS, IntegralController, odeint

F64 = torch.float64
Y0 = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
ADAPTIVE = [name for name, s in SOLVERS.items() if s.adaptive]


def field(t, y):
    return -2 * t * y**2


def exact(t: torch.Tensor) -> torch.Tensor:
    """``[T, 3]`` exact solution at times ``t`` from ``Y0`` at ``t = 0``."""
    return Y0 / (1 + Y0 * t[:, None] ** 2)


def slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


# Steps per unit 0.5 of time for each solver (t in [0, 3], 6 such units): errors ~1e-2..1e-11.
STEPS = {
    "euler": [64, 128, 256, 512],
    "midpoint": [8, 16, 32, 64],
    "rk4": [4, 8, 16, 32],
    "rk4_38": [4, 8, 16, 32],
    "adaptive_heun": [8, 16, 32, 64],
    "bosh3": [4, 8, 16, 32],
    "dopri5": [3, 6, 12, 24],
    "tsit5": [3, 6, 12, 24],
    "dopri8": [2, 3, 4, 6],
}


def test_every_solver_has_a_step_plan():
    assert set(STEPS) == set(SOLVERS)


@pytest.mark.parametrize("name", SOLVERS)
def test_fixed_step_convergence_order(name):
    order = SOLVERS[name].order
    t_span = torch.linspace(0, 3, 7, dtype=F64)
    want = exact(t_span)
    hs, errors = [], []
    for m in STEPS[name]:
        h = 0.5 / m
        _, sol, counts = odeint(field, Y0, t_span, solver=name, step_size=h, return_stats=True)
        assert counts.attempts == 6 * m and counts.rejected == 0
        hs.append(h)
        errors.append((sol - want).abs().max().item())
    assert 1e-13 < min(errors) and max(errors) < 1e-1, errors
    p = slope(hs, errors)
    assert order - 0.5 <= p <= order + 1.0, (name, order, p, errors)


def _pinned(h: float) -> dict:
    """Constant steps ``h`` on the adaptive path (where dense output lives): the controller cannot leave ``h``
    and accepts every step at its minimum. ``h`` and the grid are binary fractions so that the times the loop
    accumulates land on the grid exactly (see test_controllers for what happens otherwise)."""
    return dict(controller=IntegralController(min_step=h, max_step=h), first_step=h, interpolator="dense",
                return_stats=True)


DENSE_STEPS = {
    "adaptive_heun": [0.25, 0.125, 0.0625, 0.03125],
    "bosh3": [0.25, 0.125, 0.0625, 0.03125],
    "dopri5": [0.25, 0.125, 0.0625, 0.03125],
    "tsit5": [0.125, 0.0625, 0.03125, 0.015625],
    "dopri8": [0.5, 0.25, 0.125, 0.0625],
}


def test_every_adaptive_solver_has_dense_output():
    assert set(DENSE_STEPS) == set(ADAPTIVE)
    for name in ADAPTIVE:
        assert SOLVERS[name].build().has_dense_output


@pytest.mark.parametrize("name", ADAPTIVE)
def test_dense_output_local_order(name):
    """One step of size ``h`` from the exact ``y(t0)``, read at θ = 0.3, 0.5, 0.7 off the interpolant.

    A continuous extension of order ``q`` (``dense_order``) has local error ``O(h^(q+1))`` at every θ: the
    measured slope is ``q + 1`` (here the step end itself is of higher order, ``p + 1 >= q + 1``, so the
    interpolant is what is measured).
    """
    q = SOLVERS[name].cls.tableau.dense_order
    t0 = 0.25
    hs, errors = [], []
    for h in DENSE_STEPS[name]:
        t_span = torch.tensor([t0, t0 + 0.3 * h, t0 + 0.5 * h, t0 + 0.7 * h, t0 + h], dtype=F64)
        x0 = exact(torch.tensor([t0], dtype=F64))[0]
        _, sol, counts = odeint(field, x0, t_span, solver=name, **_pinned(h))
        assert counts.attempts == 1  # the inner points came from the interpolant, not from steps
        hs.append(h)
        errors.append((sol[1:-1] - exact(t_span)[1:-1]).abs().max().item())
    p = slope(hs, errors)
    assert q + 1 - 0.5 <= p <= q + 1 + 1.0, (name, q, p, errors)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_dense_output_global_order(name):
    """Constant steps ``h`` over [0.25, 2.25], every output point in the middle of a step.

    The error at a mid-step point is the global error of the step's start carried over, ``O(h^p)``, plus the
    interpolant's local error ``O(h^(q+1))``: the measured slope is ``min(p, q + 1)``, in particular at least
    ``dense_order``. (dopri5/tsit5: 5 from both; bosh3: 3 = p; adaptive_heun: 2 = p; dopri8: 8 from both.)
    """
    entry = SOLVERS[name]
    q = entry.cls.tableau.dense_order
    want_order = min(entry.order, q + 1)
    t0, length = 0.25, 2.0
    x0 = exact(torch.tensor([t0], dtype=F64))[0]
    hs, errors = [], []
    for h in DENSE_STEPS[name]:
        n = round(length / h)
        grid = t0 + h * torch.arange(n + 1, dtype=F64)
        mids = grid[:-1] + 0.5 * h
        t_span = torch.cat([grid[:1], mids, grid[-1:]])  # only the ends are step ends
        _, sol, counts = odeint(field, x0, t_span, solver=name, **_pinned(h))
        assert counts.attempts == n and counts.rejected == 0
        hs.append(h)
        errors.append((sol[1:-1] - exact(t_span)[1:-1]).abs().max().item())
    p = slope(hs, errors)
    assert p >= q - 0.2, (name, q, p, errors)
    assert want_order - 0.5 <= p <= want_order + 1.0, (name, want_order, p, errors)


def test_step_size_with_dense_interpolator_interpolates():
    h = 0.25
    t_span = torch.tensor([0.0, 0.125, 0.25, 0.375, 0.5], dtype=F64)
    _, _, counts = odeint(field, Y0, t_span, solver="dopri5", step_size=h, interpolator="dense",
                          return_stats=True)
    assert counts.attempts == 2  # two steps of 0.25, the points at 0.125 and 0.375 read off the interpolant


@pytest.mark.parametrize("name", ["bosh3", "dopri5", "tsit5", "dopri8"])
def test_adaptive_error_follows_tolerance(name):
    """Tightening the tolerances by 1000 lowers the error by at least 50 and costs more steps."""
    t_span = torch.linspace(0, 3, 7, dtype=F64)
    want = exact(t_span)
    results = []
    for tol in (1e-5, 1e-8):
        _, sol, counts = odeint(field, Y0, t_span, solver=name, atol=tol, rtol=tol, return_stats=True)
        results.append(((sol - want).abs().max().item(), counts.steps))
    (loose, n_loose), (tight, n_tight) = results
    assert tight * 50 < loose < 1e-3
    assert n_tight > n_loose
