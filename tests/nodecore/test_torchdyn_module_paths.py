"""torchdyn's remaining module paths: core.utils, numerics.interpolators, numerics.sensitivity, numerics.utils'
step helpers and datasets.static_datasets, each checked against what it computes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nodecore.datasets
from nodecore.core import DEFunc
from nodecore.core.utils import standardize_vf_call_signature
from nodecore.datasets import static_datasets
from nodecore.fields import VectorField
from nodecore.neuralode import NeuralODE
from nodecore.numerics import odeint, odeint_mshooting
from nodecore.numerics.control import initial_step
from nodecore.numerics.interpolators import FourthOrder, Linear, ThirdHermite, str_to_interp
from nodecore.numerics.sensitivity import generic_odeint
from nodecore.numerics.utils import EventState, WrapFunc, adapt_step, hairer_norm, init_step, make_norm

F64 = torch.float64


def _poly(coefs: list[float], theta: torch.Tensor) -> torch.Tensor:
    return sum(c * theta**k for k, c in enumerate(coefs))


def test_the_interpolants_reproduce_polynomials_of_their_order() -> None:
    """A polynomial p(t) on [t0, t1] is fitted from its values and slopes and recovered exactly."""
    t0, t1 = 0.3, 1.1
    dt = t1 - t0
    theta = torch.linspace(0, 1, 9, dtype=F64)
    t = t0 + theta * dt
    for interpolant, coefs in ((Linear(), [0.5, -2.0]), (ThirdHermite(), [0.5, -2.0, 1.5, 3.0]),
                               (FourthOrder(F64), [0.5, -2.0, 1.5, 3.0, -4.0])):
        def p(s: float, c: list[float] = coefs) -> torch.Tensor:
            return _poly(c, torch.tensor((s - t0) / dt, dtype=F64))

        def dp(s: float, c: list[float] = coefs) -> torch.Tensor:  # dp/dt
            th = torch.tensor((s - t0) / dt, dtype=F64)
            return sum(k * ck * th ** (k - 1) for k, ck in enumerate(c) if k) / dt

        fitted = interpolant.fit(dt, dp(t0), dp(t1), p(t0), p(t1), x_mid=p(t0 + dt / 2))
        got = interpolant.evaluate(fitted, t0, t1, t)
        assert torch.allclose(got, _poly(coefs, theta), atol=1e-12), type(interpolant).__name__
        assert interpolant.order == len(coefs) - 1


def test_fourth_orders_midpoint_weights_are_dopri5s_interpolant_at_one_half() -> None:
    """x_mid = x0 + dt Σ bmid_i k_i is exact for polynomials up to degree 4 in t (x' = t^(q-1), q <= 4)."""
    bmid = str_to_interp("4th", F64).bmid
    c = torch.tensor([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1], dtype=F64)  # dopri5's nodes
    for q in range(1, 5):
        assert float((bmid * c ** (q - 1)).sum()) == pytest.approx(0.5**q / q, abs=1e-14)


def test_an_interpolator_instance_is_taken_as_torchdyn_takes_it() -> None:
    f = lambda t, x: -x  # noqa: E731
    x0 = torch.ones(3, 2, dtype=F64)
    t_span = torch.linspace(0, 1, 30, dtype=F64)
    _, by_name = odeint(f, x0, t_span, "dopri5", atol=1e-6, rtol=1e-6, interpolator="4th")
    _, by_instance = odeint(f, x0, t_span, "dopri5", atol=1e-6, rtol=1e-6, interpolator=FourthOrder(F64))
    assert torch.equal(by_name, by_instance)
    model = NeuralODE(nn.Linear(2, 2), interpolator=FourthOrder())
    assert model.interpolator == "4th"  # kept by name: checkpoints and configs stay JSON
    with pytest.raises(ValueError, match="ThirdHermite.*FourthOrder"):
        odeint(f, x0, t_span, "dopri5", interpolator=ThirdHermite())
    with pytest.raises(ValueError, match="unknown interpolator 'cubic'.*4th"):
        str_to_interp("cubic")


def test_standardize_vf_call_signature_gives_a_field_of_t_and_x() -> None:
    class TimeField(nn.Module):
        def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return t * x

    timed = TimeField()
    assert standardize_vf_call_signature(timed) is timed
    linear = nn.Linear(2, 2)
    x = torch.randn(4, 2)
    wrapped = standardize_vf_call_signature(linear)
    assert isinstance(wrapped, VectorField) and torch.equal(wrapped(torch.tensor(0.5), x), linear(x))
    second = standardize_vf_call_signature(lambda x: -x[:, :3], order=2, defunc_wrap=True)  # x'' = -x
    assert isinstance(second, DEFunc) and second.order == 2
    state = torch.randn(4, 6)
    assert torch.equal(second(0.0, state), torch.cat([state[:, 3:], -state[:, :3]], 1))  # [x', v'] = [v, -x]
    with pytest.raises(ValueError, match="order must be an integer >= 1, got 0"):
        standardize_vf_call_signature(linear, order=0)
    with pytest.raises(TypeError, match="callable"):
        standardize_vf_call_signature(3)


def test_generic_odeint_dispatches_on_the_problem_type() -> None:
    f = lambda t, x: -x  # noqa: E731
    x0 = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t_span = torch.linspace(0, 1, 5, dtype=F64)
    assert torch.equal(generic_odeint("standard", f, x0, t_span, "tsit5", 1e-6, 1e-6, None)[1],
                       odeint(f, x0, t_span, "tsit5", atol=1e-6, rtol=1e-6)[1])
    shot = generic_odeint("multiple_shooting", f, x0, t_span, "mszero", 1e-6, 1e-6, None, maxiter=4, fine_steps=8)[1]
    assert torch.equal(shot, odeint_mshooting(f, x0, t_span, "mszero", fine_steps=8, maxiter=4)[1])
    assert torch.allclose(shot[-1], x0 * math.exp(-1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown problem_type 'shooting'; valid .*standard, multiple_shooting"):
        generic_odeint("shooting", f, x0, t_span, "tsit5", 1e-6, 1e-6, None)


def test_the_step_size_helpers_compute_hairers_formulas() -> None:
    x = torch.tensor([[3.0, -4.0]], dtype=F64)
    assert float(hairer_norm(x)) == pytest.approx(math.sqrt(12.5))
    f = lambda t, y: -2.0 * y  # noqa: E731
    t0 = torch.tensor(0.0, dtype=F64)
    step = init_step(f, f(t0, x), x, t0, 4, 1e-6, 1e-3)
    assert step.dtype == F64 and float(step) == initial_step(f, 0.0, x, f(t0, x), 4, 1e-6, 1e-3, 1.0)
    # by hand: d0 = |x|/sc, d1 = 2 d0, h0 = 0.005, d2 = 4 d0 => h1 = (0.01 / (4 d0))^(1/5), step = min(100 h0, h1)
    d0 = float(hairer_norm(x / (1e-6 + 1e-3 * x.abs())))
    assert float(step) == pytest.approx(min(0.5, (0.01 / max(2 * d0, 4 * d0)) ** 0.2), rel=1e-9)
    dt = torch.tensor(0.1, dtype=F64)

    def adapt(ratio: float) -> float:
        return float(adapt_step(dt, torch.tensor(ratio, dtype=F64), 0.9, 0.2, 10.0, 5))

    assert adapt(0.0) == pytest.approx(1.0)  # no error: grow by max_factor
    assert adapt(0.5) == pytest.approx(0.1 * 0.9 * 0.5 ** -0.2)
    assert adapt(0.99) == pytest.approx(0.1)  # accepted: never shrinks
    assert adapt(2.0) == pytest.approx(0.1 * 0.9 * 2.0 ** -0.2)
    assert adapt(1e9) == pytest.approx(0.02)  # clipped at min_factor


def test_make_norm_takes_the_larger_of_the_state_and_adjoint_norms() -> None:
    state = torch.zeros(2, 2)
    augmented = torch.tensor([5.0, 1, 1, 1, 1, 2, 2, 2, 2, 100.0])  # t, x (4), adjoint (4), a parameter's adjoint
    assert float(make_norm(state)(augmented)) == pytest.approx(2.0)


def test_wrapfunc_and_eventstate() -> None:
    x = torch.randn(3, 2)
    assert torch.equal(WrapFunc(torch.tanh)(torch.tensor(1.0), x), torch.tanh(x))
    a, b = EventState([True, False, True]), EventState([False, False, False])
    assert (a != b) == 2 and (a != a) == 0 and a == EventState([True, False, True])


def test_static_datasets_is_where_the_generators_live() -> None:
    assert static_datasets.ToyDataset is nodecore.datasets.ToyDataset
    assert static_datasets.generate_moons is nodecore.datasets.generate_moons
    star: dict[str, object] = {}
    exec("from nodecore.datasets.static_datasets import *", star)
    assert {"ToyDataset", "generate_moons", "randnsphere", "np", "torch", "math"} <= set(star)


def test_defuncbase_calls_the_field_with_or_without_time_and_counts() -> None:
    from nodecore.core.defunc import DEFuncBase

    x = torch.randn(3, 2)
    timed = DEFuncBase(lambda t, x: t * x)
    untimed = DEFuncBase(lambda x: -x, has_time_arg=False)
    assert torch.equal(timed(torch.tensor(2.0), x), 2 * x) and torch.equal(untimed(torch.tensor(2.0), x), -x)

    class WithArgs(nn.Module):
        def forward(self, t, x, args=None):
            return x * args["gain"]

    assert torch.equal(DEFuncBase(WithArgs())(0.0, x, {"gain": 3.0}), 3 * x)
    assert timed.nfe == 1 and untimed.nfe == 1
    _, solution = odeint(DEFuncBase(lambda x: -x, has_time_arg=False), x.double(), torch.linspace(0, 1, 3), "tsit5",
                         atol=1e-9, rtol=1e-9)
    assert torch.allclose(solution[-1], x.double() * math.exp(-1), atol=1e-7)
