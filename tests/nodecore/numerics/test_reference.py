"""nodecore's engine against independent implementations of the same methods.

* At constant steps every solver must reproduce the reference's numbers to round-off: torchdiffeq's same
  method (fixed grids via ``options=dict(step_size=h)``; adaptive methods pinned to one step size with
  ``first_step = min_step = max_step = h`` and ``step_t = t_span``), a hand-written classic RK4 (torchdiffeq's
  ``'rk4'`` is the 3/8 rule), and SciPy's DOP853 for ``dopri8`` (torchdiffeq's ``'dopri8'`` is a different
  method). Steps and output points are binary fractions, so both sides take exactly the same steps.
* Adaptive precision: Van der Pol (mu = 1) against SciPy's DOP853 at rtol = atol = 1e-13.
* Backward solves (decreasing ``t_span``) are forward solves of the time-reversed field, and invert them.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torchdiffeq import odeint as torchdiffeq_odeint

import nodecore.solvers  # noqa: F401  (registers 'nodecore_tsit5' with torchdiffeq)
from nodecore.numerics import INTERPOLATORS, SOLVERS, odeint

F64 = torch.float64
ROUND_OFF = 1e-13
# Stepping onto every output point: interpolator='step' where the engine has it (None became dense output
# there), None in the version that stepped onto the points by default.
STEP_ONTO = "step" if "step" in INTERPOLATORS else None


def field(t, y):
    """Nonlinear, non-autonomous (stage times matter), coupled and globally Lipschitz (no blow-up either way)."""
    return torch.sin(3 * t) * torch.tanh(y.flip(-1)) - 0.5 * torch.cos(t) * y


def vdp(t, y):
    return torch.stack([y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)


def vdp_np(t, y):
    return [y[1], (1 - y[0] ** 2) * y[1] - y[0]]


Y0 = torch.tensor([[0.5, 1.0], [2.0, -0.3]], dtype=F64)
T_SPAN = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5, 2.0], dtype=F64)
H = 1 / 16
FIXED_TWINS = {"euler": "euler", "midpoint": "midpoint", "rk4_38": "rk4"}
ADAPTIVE_TWINS = {"adaptive_heun": "adaptive_heun", "bosh3": "bosh3", "dopri5": "dopri5",
                  "tsit5": "nodecore_tsit5"}
# torchdiffeq's adaptive_heun treats its last stage f(t1, y0 + h k0) as if it were f(t1, y1) and reuses it as
# the next step's first stage (its Runge–Kutta loop assumes first-same-as-last; Heun–Euler is not): the two
# agree on a first step only. See test_torchdiffeq_adaptive_heun_reuses_its_predictor_stage.
EXACT_TWINS = [name for name in ADAPTIVE_TWINS if name != "adaptive_heun"]


def test_registry_twins():
    """The torchdiffeq keys this file compares against are the registry's own."""
    for name, key in {**FIXED_TWINS, **ADAPTIVE_TWINS}.items():
        assert SOLVERS[name].method == key


@pytest.mark.parametrize("name", FIXED_TWINS)
def test_fixed_step_solvers_match_torchdiffeq(name):
    _, ours = odeint(field, Y0, T_SPAN, solver=name, step_size=H)
    theirs = torchdiffeq_odeint(field, Y0, T_SPAN, method=FIXED_TWINS[name], options=dict(step_size=H))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ROUND_OFF)
    # Without step_size a fixed-step solver takes one step per interval of t_span (torchdiffeq's default grid).
    _, ours = odeint(field, Y0, T_SPAN, solver=name)
    theirs = torchdiffeq_odeint(field, Y0, T_SPAN, method=FIXED_TWINS[name])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ROUND_OFF)


def _classic_rk4(f, y, t_span, h):
    out = [y]
    for t0, t1 in zip(t_span[:-1].tolist(), t_span[1:].tolist()):
        n = round((t1 - t0) / h)
        for i in range(n):
            t = torch.tensor(t0 + i * h, dtype=F64)
            k1 = f(t, y)
            k2 = f(t + h / 2, y + h / 2 * k1)
            k3 = f(t + h / 2, y + h / 2 * k2)
            k4 = f(t + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(y)
    return torch.stack(out)


def test_classic_rk4_matches_hand_written():
    _, ours = odeint(field, Y0, T_SPAN, solver="rk4", step_size=H)
    torch.testing.assert_close(ours, _classic_rk4(field, Y0, T_SPAN, H), rtol=0, atol=ROUND_OFF)
    # ... and it is a different method from the 3/8 rule (same order, different error constant).
    _, other = odeint(field, Y0, T_SPAN, solver="rk4_38", step_size=H)
    assert (ours - other).abs().max() > 1e-9


def _pinned(h, t_span):
    return dict(first_step=h, min_step=h, max_step=h, step_t=t_span)


@pytest.mark.parametrize("name", EXACT_TWINS)
def test_adaptive_solvers_pinned_match_torchdiffeq(name):
    _, ours = odeint(field, Y0, T_SPAN, solver=name, step_size=H)
    theirs = torchdiffeq_odeint(field, Y0, T_SPAN, method=ADAPTIVE_TWINS[name], options=_pinned(H, T_SPAN))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ROUND_OFF)


def _heun(f, y, t_span, h, *, stale_first_stage=False):
    """Heun's method by hand; ``stale_first_stage`` reuses ``f(t1, y0 + h k0)`` as the next ``k0``."""
    out, k0 = [y], None
    for t0, t1 in zip(t_span[:-1].tolist(), t_span[1:].tolist()):
        for i in range(round((t1 - t0) / h)):
            t = torch.tensor(t0 + i * h, dtype=F64)
            if k0 is None or not stale_first_stage:
                k0 = f(t, y)
            k1 = f(t + h, y + h * k0)
            y = y + h / 2 * (k0 + k1)
            k0 = k1
        out.append(y)
    return torch.stack(out)


def test_adaptive_heun_matches_hand_written_heun():
    _, ours = odeint(field, Y0, T_SPAN, solver="adaptive_heun", step_size=H)
    torch.testing.assert_close(ours, _heun(field, Y0, T_SPAN, H), rtol=0, atol=ROUND_OFF)
    # The first step is torchdiffeq's too.
    span = torch.tensor([0.0, H], dtype=F64)
    _, ours = odeint(field, Y0, span, solver="adaptive_heun", step_size=H)
    theirs = torchdiffeq_odeint(field, Y0, span, method="adaptive_heun", options=_pinned(H, span))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ROUND_OFF)


def test_torchdiffeq_adaptive_heun_reuses_its_predictor_stage():
    """Why nodecore's adaptive_heun and torchdiffeq's differ after one step (a torchdiffeq quirk, not ours:
    both are still 2nd order, the stale stage being O(h^2) off)."""
    theirs = torchdiffeq_odeint(field, Y0, T_SPAN, method="adaptive_heun", options=_pinned(H, T_SPAN))
    torch.testing.assert_close(theirs, _heun(field, Y0, T_SPAN, H, stale_first_stage=True), rtol=0,
                               atol=ROUND_OFF)
    assert (theirs - _heun(field, Y0, T_SPAN, H)).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["adaptive_heun", "bosh3", "dopri5", "tsit5", "dopri8"])
def test_solver_step_matches_odeint(name):
    """The public one-step API (torchdyn's tuple) agrees with the loop, and its error is ``h Σ b_err k``."""
    solver = SOLVERS[name].build()
    t0, h = torch.tensor(0.25, dtype=F64), 0.125
    f_new, x_new, x_err, stages = solver.step(field, Y0, t0, h)
    _, sol = odeint(field, Y0, [0.25, 0.375], solver=name, step_size=h)
    torch.testing.assert_close(x_new, sol[-1], rtol=0, atol=ROUND_OFF)
    b_err = torch.tensor(solver.tableau.b_error, dtype=F64)
    torch.testing.assert_close(x_err, h * torch.einsum("s,sn->n", b_err, stages).view_as(Y0), rtol=0,
                               atol=ROUND_OFF)
    if solver.tableau.fsal:
        torch.testing.assert_close(f_new, field(t0 + h, x_new), rtol=0, atol=ROUND_OFF)
    # k1 given: not re-evaluated, same result.
    calls = []

    def counted(t, x):
        calls.append(1)
        return field(t, x)

    again = solver.step(counted, Y0, t0, h, k1=field(t0, Y0))
    torch.testing.assert_close(again[1], x_new, rtol=0, atol=0)
    assert len(calls) == solver.tableau.stages - 1


@pytest.mark.parametrize("name", ["euler", "midpoint", "rk4", "rk4_38"])
def test_fixed_solver_step_tuple(name):
    solver = SOLVERS[name].build()
    out = solver.step(field, Y0, 0.0, H)
    assert len(out) == 3 and out[0] is None and out[2] is None
    _, sol = odeint(field, Y0, [0.0, H], solver=name)
    torch.testing.assert_close(out[1], sol[-1], rtol=0, atol=0)


def test_dopri8_fixed_steps_match_scipy_dop853():
    """DOP853 at constant steps: SciPy with first_step = max_step = h and tolerances it can never miss."""
    h, x0 = 1 / 8, np.array([2.0, 0.0])
    ref = solve_ivp(vdp_np, (0.0, 4.0), x0, method="DOP853", first_step=h, max_step=h, rtol=1e3, atol=1e3)
    assert ref.success and len(ref.t) == 33
    np.testing.assert_array_equal(ref.t, np.arange(33) * h)
    _, ours = odeint(vdp, torch.tensor(x0), torch.tensor(ref.t), solver="dopri8", step_size=h)
    np.testing.assert_allclose(ours.numpy(), ref.y.T, rtol=0, atol=ROUND_OFF)
    # With return_all_eval the engine's own step grid is SciPy's.
    t_eval, all_steps = odeint(vdp, torch.tensor(x0), [0.0, 4.0], solver="dopri8", step_size=h,
                               return_all_eval=True)
    np.testing.assert_array_equal(t_eval.numpy(), ref.t)
    np.testing.assert_allclose(all_steps.numpy(), ref.y.T, rtol=0, atol=ROUND_OFF)


def test_dopri8_is_not_torchdiffeqs_dopri8():
    """The registry's dopri8 is Hairer's DOP853; torchdiffeq's 'dopri8' is another 8th-order pair."""
    t_span = torch.tensor([0.0, 2.0], dtype=F64)
    _, ours = odeint(vdp, Y0, t_span, solver="dopri8", step_size=0.5)
    theirs = torchdiffeq_odeint(vdp, Y0, t_span, method="dopri8", options=_pinned(0.5, t_span))
    difference = (ours - theirs).abs().max().item()
    assert 1e-12 < difference < 1e-3


@functools.cache
def _vdp_reference() -> tuple[np.ndarray, np.ndarray]:
    t_eval = np.linspace(0.0, 10.0, 50)
    ref = solve_ivp(vdp_np, (0.0, 10.0), [2.0, 0.0], method="DOP853", rtol=1e-13, atol=1e-13, t_eval=t_eval)
    assert ref.success
    return t_eval, ref.y.T


@pytest.mark.parametrize("interpolator", [STEP_ONTO, "dense"])
@pytest.mark.parametrize("name, bound", [("dopri8", 1e-9), ("dopri5", 1e-8), ("tsit5", 1e-8)])
def test_adaptive_precision_van_der_pol(name, bound, interpolator):
    t_eval, want = _vdp_reference()
    _, sol, counts = odeint(vdp, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor(t_eval), solver=name,
                            rtol=1e-10, atol=1e-10, interpolator=interpolator, return_stats=True)
    error = np.abs(sol.numpy() - want).max()
    assert error <= bound, (name, interpolator, error)
    assert counts.rejected < counts.attempts / 2


def test_dense_output_takes_fewer_steps_on_a_dense_t_span():
    t_eval, _ = _vdp_reference()
    steps = {}
    for interpolator in (STEP_ONTO, "dense"):
        _, _, counts = odeint(vdp, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor(t_eval), solver="dopri8",
                              rtol=1e-6, atol=1e-6, interpolator=interpolator, return_stats=True)
        steps[interpolator] = counts.steps
    assert steps["dense"] < steps[STEP_ONTO]
    assert steps[STEP_ONTO] >= len(t_eval) - 1  # stepping onto every point needs at least one step per interval


def _reversed_field(f):
    return lambda s, y: -f(-s, y)


@pytest.mark.parametrize("name", SOLVERS)
def test_backward_solve_is_forward_solve_of_reversed_field(name):
    """Integrating ``f`` from t1 down to t0 is integrating ``-f(-s, y)`` from -t1 up to -t0, step for step."""
    backward_span = torch.flip(T_SPAN, [0])
    x1 = Y0
    _, back = odeint(field, x1, backward_span, solver=name, step_size=H)
    _, forward = odeint(_reversed_field(field), x1, -backward_span, solver=name, step_size=H)
    torch.testing.assert_close(back, forward, rtol=0, atol=ROUND_OFF)
    if SOLVERS[name].adaptive:  # the adaptive loop too (same step sizes: the error norm ignores the sign)
        kwargs = dict(solver=name, atol=1e-5, rtol=1e-5, return_stats=True)
        _, back, c_back = odeint(field, x1, backward_span, **kwargs)
        _, forward, c_fwd = odeint(_reversed_field(field), x1, -backward_span, **kwargs)
        torch.testing.assert_close(back, forward, rtol=0, atol=ROUND_OFF)
        assert c_back == c_fwd


# (tolerance, bound): the round trip forward-backward costs two solves' errors times the flow's growth; the
# bounds are ~4x the measured errors (bosh3 ~500 tol, dopri5 ~120 tol, tsit5 ~25 tol, dopri8 ~7 tol).
@pytest.mark.parametrize("name, tol, bound", [("bosh3", 1e-8, 2e-5), ("dopri5", 1e-10, 5e-8),
                                              ("tsit5", 1e-10, 1e-8), ("dopri8", 1e-10, 3e-9)])
@pytest.mark.parametrize("interpolator", [STEP_ONTO, "dense"])
def test_backward_solve_inverts_forward(name, tol, bound, interpolator):
    t_span = torch.linspace(0.0, 3.0, 7, dtype=F64)
    x0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=F64)
    kwargs = dict(solver=name, atol=tol, rtol=tol, interpolator=interpolator)
    _, forward = odeint(vdp, x0, t_span, **kwargs)
    t_back, backward = odeint(vdp, forward[-1], torch.flip(t_span, [0]), **kwargs)
    torch.testing.assert_close(t_back, torch.flip(t_span, [0]))
    # Each point of the backward trajectory is the forward one.
    torch.testing.assert_close(torch.flip(backward, [0]), forward, rtol=0, atol=bound)


@pytest.mark.parametrize("name", ["euler", "rk4", "dopri5"])
def test_fixed_step_backward_inverts_forward_to_order(name):
    """A constant-step backward solve undoes the forward one up to the method's error (O(h^p))."""
    t_span = torch.tensor([0.0, 1.0], dtype=F64)
    errors = []
    for h in (1 / 32, 1 / 64):
        _, fwd = odeint(field, Y0, t_span, solver=name, step_size=h)
        _, back = odeint(field, fwd[-1], torch.flip(t_span, [0]), solver=name, step_size=h)
        errors.append((back[-1] - Y0).abs().max().item())
    order = SOLVERS[name].order
    assert errors[0] / errors[1] > 2 ** (order - 0.5)
