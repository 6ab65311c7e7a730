"""Step-size controllers, and odeint's argument checks, failures and counters.

Controller arithmetic is checked against the formula in :class:`PIController`'s docstring,
``h * clip(safety * r**(-(icoeff + pcoeff) / k) * r_prev**(pcoeff / k), lo, max_factor)`` with
``lo = 1`` after an accepted step (accepted steps never shrink the next one) and ``min_factor`` after a
rejected one, then bounded to ``[min_step, max_step]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nodecore.errors import (
    NonFiniteError,
    SolverError,
    StepSizeUnderflowError,
    TooManyStepsError,
)
from nodecore.numerics import (
    INTERPOLATORS,
    SOLVER_NAMES,
    SOLVERS,
    IntegralController,
    PIController,
    StepCounts,
    get_solver,
    odeint,
)

F64 = torch.float64
X0 = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=F64)
ADAPTIVE = [name for name, s in SOLVERS.items() if s.adaptive]
FIXED = [name for name, s in SOLVERS.items() if not s.adaptive]
# Stepping onto every output point, spelled out (None, the default, does the same).
STEP_ONTO = "step"


def oscillator(t, y):
    return torch.stack([y[..., 1], -y[..., 0] + 0.1 * torch.sin(t) * y[..., 1]], dim=-1)


# --- controller arithmetic -----------------------------------------------------------------------------

def _expected(c: PIController, h, r, r_prev, k, accepted):
    if r == 0:
        factor = c.max_factor
    elif not math.isfinite(r):
        factor = c.min_factor
    else:
        factor = c.safety * r ** (-(c.icoeff + c.pcoeff) * k) * max(r_prev, 1e-4) ** (c.pcoeff * k)
        factor = min(c.max_factor, max(1.0 if accepted else c.min_factor, factor))
    return math.copysign(min(max(abs(h) * factor, c.min_step), c.max_step), h)


@pytest.mark.parametrize("controller", [IntegralController(), PIController(), PIController(pcoeff=0.4, icoeff=0.3,
                                                                                           safety=0.8)])
def test_next_step_formula(controller):
    k = 1 / 5
    for h in (0.1, -0.3):
        for r in (1e-12, 1e-3, 0.2, 0.9, 1.0, 1.5, 40.0, 1e9):
            for r_prev in (1e-9, 0.5, 1.0, 3.0):
                accepted = r <= 1
                got = controller.next_step(h, r, r_prev, k, accepted)
                assert got == pytest.approx(_expected(controller, h, r, r_prev, k, accepted), rel=1e-14)
                assert math.copysign(1.0, got) == math.copysign(1.0, h)


def test_integral_controller_is_torchdiffeqs_rule():
    c = IntegralController()
    assert (c.pcoeff, c.icoeff, c.safety, c.min_factor, c.max_factor) == (0.0, 1.0, 0.9, 0.2, 10.0)
    # h * 0.9 * r^(-1/5) after a rejected step with r = 32: 0.9 / 2.
    assert c.next_step(1.0, 32.0, 1.0, 1 / 5, False) == pytest.approx(0.45, rel=1e-15)
    # ... the previous ratio plays no part.
    assert c.next_step(1.0, 32.0, 1e-3, 1 / 5, False) == c.next_step(1.0, 32.0, 7.0, 1 / 5, False)


def test_factor_bounds():
    for c in (IntegralController(), PIController(), PIController(min_factor=0.5, max_factor=2.0)):
        for r in np.logspace(-16, 16, 65):
            for accepted in (True, False):
                factor = c.next_step(1.0, float(r), 1.0, 0.25, accepted)
                assert c.min_factor - 1e-15 <= factor <= c.max_factor + 1e-15
        assert c.next_step(1.0, 0.0, 1.0, 0.25, True) == c.max_factor  # no error at all: grow the most
        assert c.next_step(1.0, 1e-300, 1.0, 0.25, True) == c.max_factor
        assert c.next_step(1.0, 1e300, 1.0, 0.25, False) == c.min_factor


@pytest.mark.parametrize("controller", [IntegralController(), PIController()])
def test_accepted_steps_never_shrink_rejected_ones_do(controller):
    for r in np.logspace(-12, 0, 49):
        for r_prev in np.logspace(-8, 2, 11):
            assert controller.next_step(0.25, float(r), float(r_prev), 1 / 4, True) >= 0.25
            assert controller.next_step(-0.25, float(r), float(r_prev), 1 / 4, True) <= -0.25
    for r in np.logspace(1e-6, 12, 25):  # r > 1: rejected, the retry is smaller
        assert controller.next_step(0.25, float(r), 1.0, 1 / 4, False) < 0.25


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_ratio_gives_min_factor(bad):
    for c in (IntegralController(), PIController(min_factor=0.1)):
        assert c.next_step(0.5, bad, 1.0, 0.2, False) == 0.5 * c.min_factor
        assert c.next_step(-0.5, bad, 1.0, 0.2, False) == -0.5 * c.min_factor
        if not bad < 0:  # an error ratio is a norm: -inf never reaches accepts
            assert not c.accepts(0.5, bad)
            assert not c.accepts(1e-9, bad)


def test_min_and_max_step_bound_the_next_step():
    c = IntegralController(min_step=0.01, max_step=0.5)
    assert c.next_step(0.4, 0.0, 1.0, 0.2, True) == 0.5
    assert c.next_step(-0.4, 0.0, 1.0, 0.2, True) == -0.5
    assert c.next_step(0.02, math.nan, 1.0, 0.2, False) == 0.01
    assert c.next_step(0.01, 1e6, 1.0, 0.2, False) == 0.01


def test_acceptance_rule():
    c = IntegralController()
    assert c.accepts(0.1, 1.0) and c.accepts(0.1, 0.0) and not c.accepts(0.1, 1.0 + 1e-12)
    assert not c.accepts(1e-12, 1e6)  # no min_step: a large error is never accepted
    m = IntegralController(min_step=0.01)
    assert m.accepts(0.01, 1e6) and m.accepts(-0.01, 1e6) and m.accepts(0.005, 50.0)
    assert not m.accepts(0.0100001, 1e6)
    assert not m.accepts(0.01, math.nan)


def test_controllers_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        IntegralController().safety = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, names", [
    (dict(safety=0.0), ["safety", "0"]),
    (dict(safety=-1.0), ["safety", "-1"]),
    (dict(icoeff=0.0), ["icoeff", "0"]),
    (dict(pcoeff=math.nan), ["pcoeff", "nan"]),
    (dict(min_factor=0.0), ["min_factor", "0"]),
    (dict(min_factor=1.5), ["min_factor", "1.5"]),
    (dict(max_factor=0.5), ["max_factor", "0.5"]),
    (dict(min_step=-1e-3), ["min_step", "-0.001"]),
    (dict(min_step=1.0, max_step=0.5), ["min_step", "max_step", "1.0", "0.5"]),
    (dict(safety=True), ["safety", "True"]),
])
def test_invalid_controller_arguments(kwargs, names):
    for cls in (PIController, IntegralController):
        with pytest.raises(ValueError) as info:
            cls(**kwargs)
        for name in names:
            assert name in str(info.value), (kwargs, str(info.value))


def test_min_step_controller_accepts_every_step_at_the_minimum():
    """A pinned controller (min_step = max_step) takes exactly T / h steps, whatever the error."""
    h = 0.125
    _, sol, counts = odeint(oscillator, X0, [0.0, 2.0], solver="dopri5", atol=1e-12, rtol=1e-12,
                            controller=IntegralController(min_step=h, max_step=h), first_step=h, return_stats=True)
    assert counts.attempts == counts.steps == 16 and counts.rejected == 0
    _, same = odeint(oscillator, X0, [0.0, 2.0], solver="dopri5", step_size=h)
    torch.testing.assert_close(sol, same, rtol=0, atol=1e-14)


def test_min_step_controller_with_inexact_grid():
    h = 0.2
    t_span = 0.3 + h * torch.arange(11, dtype=F64)  # 0.3, 0.5, ..., 2.3 (not exact binary fractions)
    _, _, counts = odeint(oscillator, X0, t_span, solver="adaptive_heun",
                          controller=IntegralController(min_step=h, max_step=h), first_step=h, max_steps=100,
                          return_stats=True)
    assert counts.steps == 10


def test_pi_controller_solve_is_accurate():
    t_span = torch.linspace(0, 5, 6, dtype=F64)
    _, ref = odeint(oscillator, X0, t_span, solver="dopri8", atol=1e-12, rtol=1e-12)
    for controller in (IntegralController(), PIController()):
        _, sol, counts = odeint(oscillator, X0, t_span, solver="dopri5", atol=1e-8, rtol=1e-8,
                                controller=controller, return_stats=True)
        assert (sol - ref).abs().max() < 1e-6
        assert counts.rejected <= counts.steps // 4 + 2


# --- odeint's checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t_span", [[0.0, 1.0, 0.5], [0.0, 0.0, 1.0], [1.0, 0.5, 0.7], [0.0, 1.0, 1.0]])
def test_non_monotonic_t_span_raises(t_span):
    with pytest.raises(ValueError, match="strictly"):
        odeint(oscillator, X0, t_span)


@pytest.mark.parametrize("t_span", [[0.0], [], [[0.0, 1.0]], [0.0, math.nan], [0.0, math.inf]])
def test_malformed_t_span_raises(t_span):
    with pytest.raises(ValueError, match="t_span"):
        odeint(oscillator, X0, t_span)


def test_decreasing_t_span_is_a_backward_solve():
    t_eval, sol = odeint(oscillator, X0, [1.0, 0.5, 0.0], solver="rk4", step_size=0.01)
    assert t_eval.tolist() == [1.0, 0.5, 0.0]
    _, forward = odeint(oscillator, sol[-1], [0.0, 0.5, 1.0], solver="rk4", step_size=0.01)
    torch.testing.assert_close(forward.flip(0), sol, rtol=0, atol=1e-9)


def test_bad_solver_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        odeint(oscillator, X0, [0.0, 1.0], solver="rk45")
    message = str(info.value)
    assert "rk45" in message
    for name in SOLVER_NAMES:
        assert name in message
    with pytest.raises(ValueError, match="dopri5"):
        get_solver("Dopri5")


def test_aliases_resolve():
    assert get_solver("dop853").name == "dopri8"
    assert get_solver("Tsitouras45").name == "tsit5"
    assert get_solver("RungeKutta4").name == "rk4"


@pytest.mark.parametrize("kwargs, name", [
    (dict(atol=0.0), "atol"), (dict(rtol=-1e-3), "rtol"), (dict(step_size=0.0), "step_size"),
    (dict(step_size=-0.1), "step_size"), (dict(max_steps=0), "max_steps"), (dict(max_steps=10.0), "max_steps"),
    (dict(interpolator="linear"), "interpolator"),
])
def test_bad_options_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        odeint(oscillator, X0, [0.0, 1.0], **kwargs)


def test_unsupported_torchdyn_options():
    with pytest.raises(NotImplementedError, match="t_stops"):
        odeint(oscillator, X0, [0.0, 1.0], t_stops=[0.5])
    with pytest.raises(ValueError, match=r"args=\{'k': 1\}: args reach only the step of a solver class of your own"):
        odeint(oscillator, X0, [0.0, 1.0], args={"k": 1})  # tsit5's step is nodecore's: it would never read them
    with pytest.raises(TypeError):
        odeint(oscillator, torch.ones(2, dtype=torch.int64), [0.0, 1.0])


@pytest.mark.parametrize("name", ["euler", "rk4", "dopri5", "dopri8"])
def test_max_steps_exceeded(name):
    kwargs = dict(step_size=0.01) if not SOLVERS[name].adaptive else dict(atol=1e-12, rtol=1e-12)
    with pytest.raises(TooManyStepsError) as info:
        odeint(oscillator, X0, [0.0, 10.0], solver=name, max_steps=5, **kwargs)
    assert "t=" in str(info.value) and "max_steps=5" in str(info.value)
    assert isinstance(info.value, SolverError)
    # Exactly max_steps attempts are allowed.
    _, _, counts = odeint(oscillator, X0, [0.0, 0.05], solver="euler", step_size=0.01, max_steps=5,
                          return_stats=True)
    assert counts.attempts == 5


def _nan_after(t, y):
    return y * (math.nan if float(t) > 0.5 else -1.0)


def _nan_always(t, y):
    return y * math.nan


@pytest.mark.parametrize("name", ADAPTIVE)
def test_field_turning_nan_midway_raises(name):
    with pytest.raises((StepSizeUnderflowError, NonFiniteError)) as info:
        odeint(_nan_after, X0, [0.0, 1.0], solver=name, max_steps=2000)
    assert "t=0.5" in str(info.value) and "NaN" in str(info.value)


@pytest.mark.parametrize("name", ["dopri5", "dopri8"])
def test_field_nan_from_the_start_with_first_step_raises(name):
    with pytest.raises((StepSizeUnderflowError, NonFiniteError)):
        odeint(_nan_always, X0, [0.0, 1.0], solver=name, first_step=0.1, max_steps=2000)


@pytest.mark.parametrize("name", ["bosh3", "tsit5"])
def test_field_nan_from_the_start_raises(name):
    with pytest.raises((StepSizeUnderflowError, NonFiniteError)):
        odeint(_nan_always, X0, [0.0, 1.0], solver=name, max_steps=300)


# --- counters and outputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXED)
def test_fixed_step_nfe_is_stages_times_steps(name):
    stages = SOLVERS[name].cls.tableau.stages
    for kwargs, steps in ((dict(step_size=0.1), 20), (dict(step_size=0.3), 8), ({}, 4)):
        _, _, counts = odeint(oscillator, X0, [0.0, 0.5, 1.0, 1.5, 2.0], solver=name, return_stats=True, **kwargs)
        assert isinstance(counts, StepCounts)
        assert counts.attempts == counts.steps == counts.accepted == steps and counts.rejected == 0
        assert counts.nfe == stages * steps


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_solver_at_constant_steps_counts(name):
    """First-same-as-last saves one evaluation on every step after the first."""
    tableau = SOLVERS[name].cls.tableau
    s, n = tableau.stages, 16
    _, _, counts = odeint(oscillator, X0, [0.0, 1.0, 2.0], solver=name, step_size=0.125, return_stats=True)
    assert counts.attempts == counts.steps == n and counts.rejected == 0
    assert counts.nfe == (s + (s - 1) * (n - 1) if tableau.fsal else s * n)


@pytest.mark.parametrize("name", [n for n in ADAPTIVE if SOLVERS[n].cls.tableau.fsal])
def test_adaptive_nfe_accounting(name):
    """f(t0) and Hairer's initial-step probe, then s - 1 new stages per attempt (rejected ones too)."""
    s = SOLVERS[name].cls.tableau.stages
    for t_span, interpolator in (([0.0, 1.0, 3.0], STEP_ONTO), ([0.0, 3.0], "dense")):
        _, _, counts = odeint(oscillator, X0, t_span, solver=name, atol=1e-9, rtol=1e-9, return_stats=True,
                              interpolator=interpolator)
        assert counts.steps == counts.attempts - counts.rejected > 2
        assert counts.nfe == 2 + (s - 1) * counts.attempts


def test_dopri8_dense_output_costs_three_evaluations_per_interpolating_step():
    common = dict(solver="dopri8", atol=1e-9, rtol=1e-9, return_stats=True, interpolator="dense")
    _, _, plain = odeint(oscillator, X0, [0.0, 3.0], **common)
    assert plain.nfe == 2 + 12 * plain.attempts  # nothing to interpolate
    _, _, dense = odeint(oscillator, X0, torch.linspace(0, 3, 200, dtype=F64), **common)
    assert dense.attempts == plain.attempts  # the output points do not change the steps ...
    assert dense.nfe == 2 + 12 * dense.attempts + 3 * dense.steps  # ... and every step has points inside


def test_default_interpolator():
    """``interpolator=None`` steps onto every point, as torchdyn's does; dense output takes fewer steps on a dense
    ``t_span`` and agrees with stepping to the tolerance."""
    t_span = torch.linspace(0, 3, 31, dtype=F64)
    runs = {}
    for interpolator in (None, "dense", "4th", STEP_ONTO):
        runs[interpolator] = odeint(oscillator, X0, t_span, solver="dopri5", atol=1e-7, rtol=1e-7,
                                    interpolator=interpolator, return_stats=True)
    torch.testing.assert_close(runs[None][1], runs[STEP_ONTO][1], rtol=0, atol=0)
    assert runs[None][2] == runs[STEP_ONTO][2]
    torch.testing.assert_close(runs["4th"][1], runs["dense"][1], rtol=0, atol=0)  # torchdyn's name, same output
    assert runs["dense"][2].steps < runs[STEP_ONTO][2].steps
    assert runs[STEP_ONTO][2].steps >= 30
    torch.testing.assert_close(runs["dense"][1], runs[STEP_ONTO][1], rtol=0, atol=1e-5)


def test_save_at():
    t_span = torch.linspace(0, 2, 9, dtype=F64)
    _, full = odeint(oscillator, X0, t_span, solver="tsit5", atol=1e-8, rtol=1e-8)
    t_eval, some = odeint(oscillator, X0, t_span, solver="tsit5", atol=1e-8, rtol=1e-8, save_at=[1.5, 0.5, 2.0])
    assert t_eval.tolist() == [1.5, 0.5, 2.0]
    torch.testing.assert_close(some, full[[6, 2, 8]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="save_at"):
        odeint(oscillator, X0, t_span, save_at=[0.3])


@pytest.mark.parametrize("name", ["rk4", "dopri5", "dopri8"])
@pytest.mark.parametrize("direction", [1, -1])
def test_return_all_eval(name, direction):
    t_span = torch.tensor([0.0, 0.7, 2.0], dtype=F64) * direction
    kwargs = dict(solver=name, atol=1e-6, rtol=1e-6, return_stats=True, interpolator=STEP_ONTO)
    if not SOLVERS[name].adaptive:
        kwargs["step_size"] = 0.25
    t_eval, states, counts = odeint(oscillator, X0, t_span, return_all_eval=True, **kwargs)
    assert len(t_eval) == len(states) == counts.steps + 1
    assert t_eval[0] == t_span[0] and t_eval[-1] == t_span[-1]
    assert (direction * t_eval.diff() > 0).all()
    assert 0.7 * direction in t_eval.tolist()  # stepped onto every point of t_span
    torch.testing.assert_close(states[0], X0, rtol=0, atol=0)
    _, on_span = odeint(oscillator, X0, t_span, **{k: v for k, v in kwargs.items() if k != "return_stats"})
    torch.testing.assert_close(states[-1], on_span[-1], rtol=0, atol=0)
    if not SOLVERS[name].adaptive:
        # 0 .. 0.7 in ceil(0.7 / 0.25) = 3 steps, 0.7 .. 2.0 in 6.
        assert counts.steps == 9


def test_a_step_shortened_to_land_on_an_output_time_does_not_shrink_the_next_one() -> None:
    """Stepping onto every output time (``interpolator="step"``, torchdyn's way): a point just after the start costs
    the one short step that lands on it, and the next step goes on at the size planned before (torchdyn's rule);
    before, it restarted from the short step and took extra steps to grow back."""
    from nodecore import NeuralODE

    def steps(times: list[float]) -> int:
        model = NeuralODE(lambda t, x: -x, solver="dopri5", atol=1e-6, rtol=1e-6, interpolator="step")
        with torch.no_grad():
            _, solution = model(torch.ones(3, 1, dtype=torch.float64), torch.tensor(times, dtype=torch.float64))
        assert torch.allclose(solution[-1], torch.full((3, 1), math.exp(-10), dtype=torch.float64), atol=1e-6)
        return model.stats.steps_forward

    assert steps([0.0, 1e-3, 10.0]) == steps([0.0, 10.0]) + 1
