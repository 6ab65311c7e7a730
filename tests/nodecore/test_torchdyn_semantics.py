"""NeuralODE behaves as torchdyn's does: the stored ``t_span``, the constructor's argument order, ``return_t_eval``,
``save_at``, ``optimizable_params``, and a clear error for the torchdyn options nodecore does not implement.

Checked against the analytic solution of ``dx/dt = -x``: ``x(t1) = x(t0) * exp(-(t1 - t0))``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import Tensor, nn

from nodecore import NeuralODE

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}


class Decay(nn.Module):
    """``dx/dt = -x``."""

    def forward(self, x: Tensor) -> Tensor:
        return -x


class Last(nn.Module):
    """The final state of a trajectory ``[T, B, D] -> [B, D]``."""

    def forward(self, trajectory: Tensor) -> Tensor:
        return trajectory[-1]


def x0() -> Tensor:
    return torch.tensor([[1.0, -0.5], [0.25, 2.0]], dtype=F64)


def span(*points: float) -> Tensor:
    return torch.tensor(points, dtype=F64)


def exact(t_span: Tensor) -> Tensor:
    """The analytic trajectory of ``Decay`` from ``x0()`` over ``t_span``: ``[T, 2, 2]``."""
    return x0() * torch.exp(-(t_span - t_span[0]))[:, None, None]


# --------------------------------------------------------------------------------------------------
# t_span: stored, assigned, overridden
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t_span",
    [span(0.0, 2.0), span(1.0, 0.0), span(0.0, 0.5, 2.0), span(2.0, 1.0, -1.0)],
    ids=["increasing", "decreasing (a CNF sampling backwards)", "increasing, 3 points", "decreasing, 3 points"],
)
def test_an_assigned_t_span_is_what_forward_integrates_over(t_span: Tensor) -> None:
    model = NeuralODE(Decay(), **TIGHT)
    model.t_span = t_span
    t_eval, trajectory = model(x0())
    torch.testing.assert_close(t_eval, t_span)
    torch.testing.assert_close(trajectory, exact(t_span), atol=1e-8, rtol=1e-8)


def test_integrating_from_1_to_0_multiplies_by_e() -> None:
    model = NeuralODE(Decay(), **TIGHT)
    model.t_span = torch.linspace(1, 0, 2, dtype=F64)
    torch.testing.assert_close(model.trajectory(x0())[-1], x0() * math.e, atol=1e-8, rtol=1e-8)


def test_the_constructor_stores_t_span_as_the_default() -> None:
    model = NeuralODE(Decay(), t_span=span(1.0, 0.0), **TIGHT)
    torch.testing.assert_close(model.t_span, span(1.0, 0.0))
    torch.testing.assert_close(model(x0())[1][-1], x0() * math.e, atol=1e-8, rtol=1e-8)


def test_without_any_t_span_the_span_is_0_to_1() -> None:
    model = NeuralODE(Decay(), **TIGHT)
    assert model.t_span is None
    t_eval, trajectory = model(x0())
    assert t_eval.tolist() == [0.0, 1.0]
    torch.testing.assert_close(trajectory[-1], x0() / math.e, atol=1e-8, rtol=1e-8)


def test_an_explicit_t_span_beats_the_stored_one() -> None:
    model = NeuralODE(Decay(), t_span=span(1.0, 0.0), **TIGHT)
    t_eval, trajectory = model(x0(), span(0.0, 2.0))
    torch.testing.assert_close(t_eval, span(0.0, 2.0))
    torch.testing.assert_close(trajectory[-1], x0() * math.exp(-2.0), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(model.t_span, span(1.0, 0.0))  # the explicit span is not stored
    torch.testing.assert_close(model(x0())[1][-1], x0() * math.e, atol=1e-8, rtol=1e-8)


def test_reassigning_t_span_after_a_solve_takes_effect() -> None:
    """The once-checked t_span cache must not keep solving over the previous span."""
    model = NeuralODE(Decay(), **TIGHT)
    model.t_span = span(0.0, 1.0)
    model(x0())
    model.t_span = span(1.0, 0.0)
    torch.testing.assert_close(model(x0())[1][-1], x0() * math.e, atol=1e-8, rtol=1e-8)


def test_editing_the_stored_t_span_in_place_takes_effect() -> None:
    model = NeuralODE(Decay(), t_span=span(0.0, 1.0), **TIGHT)
    model(x0())
    model.t_span[1] = 3.0
    t_eval, trajectory = model(x0())
    assert t_eval.tolist() == [0.0, 3.0]
    torch.testing.assert_close(trajectory[-1], x0() * math.exp(-3.0), atol=1e-8, rtol=1e-8)
    model.t_span[1] = 0.0  # no longer strictly monotonic: checked again, not served from the cache
    with pytest.raises(ValueError, match="strictly increasing"):
        model(x0())


def test_a_bad_stored_t_span_is_reported_like_an_explicit_one() -> None:
    model = NeuralODE(Decay())
    model.t_span = [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="strictly increasing, or strictly decreasing"):
        model(x0())


# --------------------------------------------------------------------------------------------------
# the constructor: torchdyn's names, order and defaults
# --------------------------------------------------------------------------------------------------

# torchdyn's NeuralODE.__init__ parameters after vector_field, in its positional order.
TORCHDYN_ORDER = (
    "solver", "order", "atol", "rtol", "sensitivity", "solver_adjoint", "atol_adjoint", "rtol_adjoint",
    "interpolator", "integral_loss", "seminorm", "return_t_eval", "optimizable_params",
)


def test_the_constructor_takes_torchdyns_arguments_in_torchdyns_order() -> None:
    params = list(inspect.signature(NeuralODE.__init__).parameters.values())[1:]  # without self
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert tuple(positional) == ("vector_field", *TORCHDYN_ORDER)
    assert all(p.kind is p.KEYWORD_ONLY for p in params[len(positional):])  # nodecore's own options


# torchdyn 1.0.6's NeuralODE defaults (read off its signature).
TORCHDYN_DEFAULTS = {
    "solver": "tsit5", "order": 1, "atol": 1e-3, "rtol": 1e-3, "sensitivity": "autograd", "solver_adjoint": None,
    "atol_adjoint": 1e-4, "rtol_adjoint": 1e-4, "interpolator": None, "integral_loss": None, "seminorm": False,
    "return_t_eval": True,
}


def test_the_constructor_has_torchdyns_defaults() -> None:
    params = inspect.signature(NeuralODE.__init__).parameters
    assert {name: params[name].default for name in TORCHDYN_DEFAULTS} == TORCHDYN_DEFAULTS
    assert tuple(params["optimizable_params"].default) == ()
    model = NeuralODE(Decay())
    assert (model.solver.name, model.seminorm, model.interpolator) == ("tsit5", False, None)


def test_the_default_steps_onto_every_point_as_torchdyn_does() -> None:
    """No interpolator: each of 41 points is a step end, bit for bit what ``'step'`` gives."""
    t_span = torch.linspace(0, 4, 41, dtype=F64)
    default, stepped = NeuralODE(Decay(), **TIGHT), NeuralODE(Decay(), interpolator="step", **TIGHT)
    assert torch.equal(default(x0(), t_span)[1], stepped(x0(), t_span)[1])
    assert default.stats.steps_forward == stepped.stats.steps_forward >= len(t_span) - 1


def test_solver_is_the_second_positional_argument() -> None:
    model = NeuralODE(Decay(), "rk4")
    assert model.solver.name == "rk4"
    t_span = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(model(x0(), t_span)[1], exact(t_span), atol=1e-6, rtol=1e-6)  # rk4, h = 0.1


def test_a_fully_positional_torchdyn_call_sets_every_option() -> None:
    model = NeuralODE(Decay(), "bosh3", 1, 1e-5, 1e-6, "adjoint", "rk4", 1e-7, 1e-8, None, None, False, False, ())
    assert (model.solver.name, model.order, model.atol, model.rtol) == ("bosh3", 1, 1e-5, 1e-6)
    assert (model.sensitivity, model.solver_adjoint.name, model.atol_adjoint, model.rtol_adjoint) == (
        "adjoint", "rk4", 1e-7, 1e-8)
    assert model.seminorm is False and model.return_t_eval is False


def test_keyword_construction_still_works() -> None:  # a regression guard: passes before and after
    model = NeuralODE(Decay(), sensitivity="adjoint", solver="tsit5", order=1, step_size=0.25, max_steps=50)
    assert (model.solver.name, model.sensitivity, model.step_size, model.max_steps) == ("tsit5", "adjoint", 0.25, 50)


def test_options_rebuild_the_stored_t_span_and_return_t_eval() -> None:
    model = NeuralODE(Decay(), "rk4", return_t_eval=False, t_span=span(1.0, 0.0))
    rebuilt = NeuralODE(Decay(), **model.options())
    assert rebuilt.options() == model.options()
    assert rebuilt.return_t_eval is False and list(rebuilt.t_span) == [1.0, 0.0]


def test_an_unknown_interpolator_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="interpolator .*valid interpolators: dense, 4th, step"):
        NeuralODE(Decay(), interpolator="cubic")


@pytest.mark.parametrize("interpolator", ["4th", "dense"])
@pytest.mark.parametrize("stepping", [None, "step"])
def test_torchdyn_interpolator_reads_inner_points_off_the_dense_output(interpolator: str, stepping: str | None
                                                                       ) -> None:
    """Interpolating takes fewer steps than stepping onto 41 points (the default, torchdyn's), and both stay within
    the tolerance."""
    x0, t_span = torch.tensor([[1.0], [2.0]], dtype=torch.float64), torch.linspace(0, 4, 41, dtype=torch.float64)
    exact = x0[None] * torch.exp(-t_span)[:, None, None]
    stepped = NeuralODE(Decay(), "dopri5", atol=1e-6, rtol=1e-6, interpolator=stepping)
    interpolated = NeuralODE(Decay(), "dopri5", atol=1e-6, rtol=1e-6, interpolator=interpolator)
    for model in (stepped, interpolated):
        assert (model(x0, t_span)[1] - exact).abs().max() < 1e-5
    assert stepped.stats.steps_forward >= 40 > 2 * interpolated.stats.steps_forward


def test_return_t_eval_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="return_t_eval"):
        NeuralODE(Decay(), return_t_eval="no")


# --------------------------------------------------------------------------------------------------
# return_t_eval
# --------------------------------------------------------------------------------------------------


def test_return_t_eval_false_returns_the_trajectory_alone() -> None:
    model = NeuralODE(Decay(), return_t_eval=False, **TIGHT)
    t_span = span(0.0, 0.5, 1.0)
    output = model(x0(), t_span)
    assert isinstance(output, Tensor)
    torch.testing.assert_close(output, exact(t_span), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(model.trajectory(x0(), t_span), output)


def test_return_t_eval_false_chains_neural_odes_inside_nn_sequential() -> None:
    first = NeuralODE(Decay(), return_t_eval=False, **TIGHT)
    second = NeuralODE(Decay(), return_t_eval=False, t_span=span(0.0, 2.0), **TIGHT)
    model = nn.Sequential(first, Last(), second, Last())
    torch.testing.assert_close(model(x0()), x0() * math.exp(-3.0), atol=1e-8, rtol=1e-8)


# --------------------------------------------------------------------------------------------------
# forward(x, t_span, save_at, args)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_save_at_returns_the_solution_at_those_points_only(solver: str) -> None:
    model = NeuralODE(Decay(), solver, **TIGHT)
    t_span = torch.linspace(0, 1, 11, dtype=F64)
    _, full = model(x0(), t_span)
    t_eval, saved = model(x0(), t_span, save_at=[0.5, 1.0])
    torch.testing.assert_close(t_eval, span(0.5, 1.0))
    torch.testing.assert_close(saved, full[[5, 10]])  # the same steps: saving does not change the solve


def test_save_at_works_on_a_decreasing_span_and_by_keyword() -> None:
    model = NeuralODE(Decay(), return_t_eval=False, **TIGHT)
    saved = model(x0(), t_span=span(1.0, 0.5, 0.0), save_at=torch.tensor([0.0]))
    torch.testing.assert_close(saved[0], x0() * math.e, atol=1e-8, rtol=1e-8)


def test_an_empty_save_at_saves_every_point() -> None:
    model = NeuralODE(Decay())
    t_span = span(0.0, 0.5, 1.0)
    assert model(x0(), t_span, save_at=torch.tensor([]))[1].shape == (3, 2, 2)


def test_a_save_at_point_outside_t_span_is_rejected() -> None:
    with pytest.raises(ValueError, match="every point of save_at must be a point of t_span"):
        NeuralODE(Decay())(x0(), span(0.0, 1.0), save_at=[0.5])


def test_args_with_nodecores_own_step_are_refused_rather_than_ignored() -> None:
    """torchdyn hands args to solver.step only, where its own solvers drop them: refused (a solver class's own
    step does get them: tests/nodecore/test_torchdyn_args.py)."""
    model = NeuralODE(Decay())
    model(x0(), span(0.0, 1.0), args={})  # torchdyn's default: accepted
    with pytest.raises(ValueError, match=r"args=\{'u': 1.0\}: args reach only the step of a solver class of your own"):
        model(x0(), span(0.0, 1.0), args={"u": 1.0})


# --------------------------------------------------------------------------------------------------
# optimizable_params
# --------------------------------------------------------------------------------------------------


def test_optimizable_params_of_a_plain_function_get_adjoint_gradients() -> None:
    rate = nn.Parameter(torch.tensor(0.7, dtype=F64))
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        model = NeuralODE(lambda x: -rate * x, sensitivity=sensitivity, optimizable_params=[rate], **TIGHT,
                          atol_adjoint=1e-10, rtol_adjoint=1e-10)
        rate.grad = None
        model(x0(), span(0.0, 1.0))[1][-1].sum().backward()
        grads[sensitivity] = rate.grad.clone()
        assert any(p is rate for p in model.parameters())
    # d/d(rate) sum(x0 * exp(-rate)) = -sum(x0) * exp(-rate)
    expected = -x0().sum() * math.exp(-0.7)
    torch.testing.assert_close(grads["autograd"], expected, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(grads["adjoint"], expected, atol=1e-6, rtol=1e-6)


def test_optimizable_params_the_field_already_holds_are_not_registered_twice() -> None:
    field = nn.Linear(2, 2)
    model = NeuralODE(field, optimizable_params=field.parameters())
    assert set(dict(model.named_parameters())) == {"vf.vf.weight", "vf.vf.bias"}


def test_optimizable_params_must_be_parameters() -> None:
    with pytest.raises(TypeError, match="nn.Parameter"):
        NeuralODE(Decay(), optimizable_params=[torch.ones(2)])


def test_a_classifier_reads_a_node_built_without_t_eval() -> None:
    """ODEClassifier needs the depths even when its NeuralODE returns the trajectory alone."""
    from nodecore import Augmenter, ODEClassifier

    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(5, 2)
    span = torch.linspace(0, 1, 4)
    readout = nn.Linear(3, 2)
    outputs = []
    for return_t_eval in (True, False):
        node = NeuralODE(f, "rk4", return_t_eval=return_t_eval)
        model = ODEClassifier(node, readout, augmenter=Augmenter(1, 1))
        outputs.append(model(x, span))
    (t_a, logits_a), (t_b, logits_b) = outputs
    assert torch.equal(t_a, span) and torch.equal(t_b, span) and torch.equal(logits_a, logits_b)
    assert logits_b.shape == (4, 5, 2)


def test_odeproblem_steps_onto_every_point_as_torchdyn_does_with_interpolator_none() -> None:
    """torchdyn's ODEProblem(interpolator=None) makes each point of t_span a step end (and the adjoint restarts
    there); nodecore's ODEProblem keeps that meaning, as NeuralODE's default does."""
    from nodecore.core import ODEProblem

    field = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(16, 2)
    t_span = torch.linspace(0, 1, 30)
    problem = ODEProblem(field, "dopri5", None)
    _, stepped = problem.odeint(x, t_span)
    assert problem.stats.steps_forward >= len(t_span) - 1
    dense = ODEProblem(field, "dopri5", "4th")
    _, interpolated = dense.odeint(x, t_span)
    assert dense.stats.steps_forward < len(t_span) - 1
    assert torch.allclose(stepped, interpolated, atol=1e-3)
    assert ODEProblem(field, "dopri5", None, backend="torchdiffeq").interpolator is None
