"""torchdyn's ``args`` and dict-valued states, which reach only a solver class's own ``step``.

torchdyn calls ``solver.step(f, x, t, dt, k1=None, args=args)`` at every step and stacks dict states per key in its
fixed-step loop; its own solvers drop ``args`` and step tensors only. Here: a step of our own reads ``args`` and
steps dict states exactly as an explicit Euler loop written out by hand (float64, to 1e-12), gradients through a
dict state match finite differences, and what cannot reach such a step is refused by name.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nodecore import NeuralODE
from nodecore.core import ODEProblem
from nodecore.fields import VectorField
from nodecore.numerics import DormandPrince45, Euler, HyperEuler, odeint

F64 = torch.float64
T_SPAN = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.6, 1.0], dtype=F64)


def x0() -> Tensor:
    return torch.tensor([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.5]], dtype=F64)


class LabelField(nn.Module):
    """``dx/dt = W x + t c + shift[label]``: a conditional field; the label comes as torchdyn's ``args``."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(2, 2, generator=generator, dtype=F64) * 0.5)
        self.c = nn.Parameter(torch.randn(2, generator=generator, dtype=F64))
        self.shift = nn.Parameter(torch.randn(4, 2, generator=generator, dtype=F64))

    def forward(self, t: Tensor, x: Tensor, args: Tensor | None = None) -> Tensor:
        out = x @ self.weight.T + t.reshape(-1, 1) * self.c
        return out if args is None else out + self.shift[args]


class ConditionalEuler(Euler):
    """A torchdyn-style step that reads ``args``: Euler on ``gain * f(t, x, label)``; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def step(self, f, x, t, dt, k1=None, args=None):
        self.seen.append(args)
        return None, x + dt * args["gain"] * f(t, x, args["label"]), None


def by_hand(field, x: Tensor, t_span: Tensor, gain: float, label: Tensor | None) -> Tensor:
    """Explicit Euler on ``gain * field(t, x, label)``, one step per interval of ``t_span``: ``[T, *x.shape]``."""
    states = [x]
    for t0, t1 in zip(t_span[:-1], t_span[1:]):
        x = x + (t1 - t0) * gain * field(t0, x, label)
        states.append(x)
    return torch.stack(states)


LABEL = torch.tensor([0, 3, 1])
ARGS = {"gain": 0.75, "label": LABEL}


# --------------------------------------------------------------------------------------------------
# args reach a solver class's own step
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["odeint", "NeuralODE", "ODEProblem"])
def test_args_reach_a_solver_classs_own_step_at_every_step(api: str) -> None:
    field, solver = LabelField(), ConditionalEuler()
    if api == "odeint":
        t_eval, trajectory = odeint(field, x0(), T_SPAN, solver, args=ARGS)
    elif api == "NeuralODE":
        t_eval, trajectory = NeuralODE(field, solver=solver)(x0(), T_SPAN, args=ARGS)
    else:
        t_eval, trajectory = ODEProblem(field, solver).odeint(x0(), T_SPAN, args=ARGS)
    with torch.no_grad():
        expected = by_hand(field, x0(), T_SPAN, 0.75, LABEL)
    torch.testing.assert_close(trajectory, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(t_eval, T_SPAN)
    assert len(solver.seen) == len(T_SPAN) - 1 and all(seen is ARGS for seen in solver.seen)


@pytest.mark.parametrize("cond", [True, False])
def test_a_flow_matching_step_passing_a_label_positionally(cond: bool) -> None:
    """The public FmEuler pattern: the step makes ``t`` a ``[B]`` tensor and calls ``f(t, x, cond)``, with None
    for unconditional sampling; the field takes ``(t, x, y)`` positionally."""

    class FlowEuler(Euler):
        def step(self, f, x, t, dt, k1=None, args=None):
            t = torch.ones(x.shape[0], dtype=x.dtype) * t
            label = args["label"] if args["cond"] else None
            return None, x + dt * f(t, x, label), None

    class Positional(LabelField):
        def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:  # no parameter named args
            return super().forward(t, x, y)

    field = Positional()
    args = {"cond": cond, "label": LABEL}
    with torch.no_grad():
        expected = by_hand(field, x0(), T_SPAN, 1.0, LABEL if cond else None)
        for solve in (lambda: odeint(field, x0(), T_SPAN, FlowEuler(), args=args)[1],
                      lambda: NeuralODE(field, solver=FlowEuler())(x0(), T_SPAN, args=args)[1]):
            torch.testing.assert_close(solve(), expected, atol=1e-12, rtol=0)


class Recording(Euler):
    """Euler through a step of our own that records the ``args`` it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def step(self, f, x, t, dt, k1=None, args=None):
        self.seen.append(args)
        return None, x + dt * f(t, x), None


class Linear64(nn.Linear):
    def __init__(self) -> None:
        super().__init__(2, 2, dtype=F64)


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_without_args_a_solvers_own_step_gets_torchdyns_empty_dict(sensitivity: str) -> None:
    solver = Recording()
    NeuralODE(Linear64(), solver=solver, sensitivity=sensitivity)(x0(), T_SPAN)
    solver.seen, forward = [], solver.seen
    odeint(lambda t, x: -x, x0(), T_SPAN, solver)
    assert forward and solver.seen and all(seen == {} for seen in forward + solver.seen)


def test_a_step_without_an_args_parameter_still_runs_without_args() -> None:
    class OldEuler(Euler):
        def step(self, f, x, t, dt, k1=None):
            return None, x + dt * f(t, x), None

    field = LabelField()
    with torch.no_grad():
        torch.testing.assert_close(odeint(field, x0(), T_SPAN, OldEuler())[1], by_hand(field, x0(), T_SPAN, 1.0, None),
                                   atol=1e-12, rtol=0)
    with pytest.raises(TypeError, match=r"OldEuler.step has no args parameter, so the args given cannot reach it"):
        odeint(field, x0(), T_SPAN, OldEuler(), args=ARGS)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_a_field_with_an_args_parameter_gets_an_empty_dict_from_nodecores_solvers(solver: str) -> None:
    """torchdyn's DEFunc calls a field as ``vf(t, x, args=args)`` with ``args={}`` unless a step hands one on."""
    seen: list[object] = []

    def with_args(t, x, args):
        seen.append(args)
        return -x

    tight = {"atol": 1e-10, "rtol": 1e-10}
    trajectory = NeuralODE(with_args, solver=solver, **tight)(x0(), T_SPAN)[1]
    torch.testing.assert_close(trajectory, NeuralODE(lambda t, x: -x, solver=solver, **tight)(x0(), T_SPAN)[1],
                               atol=0, rtol=0)
    assert seen and all(value == {} for value in seen)


def test_a_plain_field_with_nodecores_solvers_keeps_the_plain_wrapper() -> None:
    """Only fields with an args parameter, or models whose solver has its own step, get the args-forwarding one."""
    assert type(NeuralODE(nn.Linear(2, 2)).vf) is VectorField
    assert type(NeuralODE(lambda t, x: -x, solver="rk4").vf) is VectorField


# --------------------------------------------------------------------------------------------------
# dict-valued states
# --------------------------------------------------------------------------------------------------


class DictEuler(Euler):
    """Euler on a dict state, key by key; ``args`` (when given) scales the step."""

    def step(self, f, x, t, dt, k1=None, args=None):
        dx = f(t, x)
        gain = args.get("gain", 1.0) if args else 1.0
        return None, {key: x[key] + dt * gain * dx[key] for key in x}, None


def pendulum(t, x):
    """``dq/dt = p``, ``dp/dt = -sin q - 0.1 p + 0.3 cos t``, on a dict ``{'q': [B, 1], 'p': [B, 1]}``."""
    return {"q": x["p"], "p": -torch.sin(x["q"]) - 0.1 * x["p"] + 0.3 * torch.cos(t)}


def dict_x0() -> dict[str, Tensor]:
    return {"q": torch.tensor([[0.5], [-1.0]], dtype=F64), "p": torch.tensor([[0.0], [0.25]], dtype=F64)}


def dict_by_hand(x: dict[str, Tensor], t_span: Tensor, gain: float = 1.0) -> list[dict[str, Tensor]]:
    states = [x]
    for t0, t1 in zip(t_span[:-1], t_span[1:]):
        dx = pendulum(t0, x)
        x = {key: x[key] + (t1 - t0) * gain * dx[key] for key in x}
        states.append(x)
    return states


@pytest.mark.parametrize("save_at", [(), (0.0, 0.5, 1.0), (0.25, 1.0)], ids=["all", "with t0", "without t0"])
@pytest.mark.parametrize("api", ["odeint", "NeuralODE"])
def test_a_dict_state_through_an_own_fixed_step_is_the_hand_loop_stacked_per_key(api: str, save_at: tuple) -> None:
    if api == "odeint":
        t_eval, trajectory = odeint(pendulum, dict_x0(), T_SPAN, DictEuler(), save_at=save_at, args={"gain": 0.5})
    else:
        t_eval, trajectory = NeuralODE(pendulum, solver=DictEuler())(dict_x0(), T_SPAN, save_at, {"gain": 0.5})
    hand = dict_by_hand(dict_x0(), T_SPAN, 0.5)
    keep = [T_SPAN.tolist().index(point) for point in save_at] if save_at else list(range(len(T_SPAN)))
    assert isinstance(trajectory, dict) and list(trajectory) == ["q", "p"]
    torch.testing.assert_close(t_eval, T_SPAN[keep])
    for key in ("q", "p"):
        assert trajectory[key].shape == (len(keep), 2, 1)
        torch.testing.assert_close(trajectory[key], torch.stack([hand[i][key] for i in keep]), atol=1e-12, rtol=0)


def test_a_dict_state_without_t_eval_and_backwards() -> None:
    model = NeuralODE(pendulum, solver=DictEuler(), return_t_eval=False)
    backwards = T_SPAN.flip(0)
    trajectory = model(dict_x0(), backwards)
    hand = dict_by_hand(dict_x0(), backwards)
    for key in ("q", "p"):
        torch.testing.assert_close(trajectory[key], torch.stack([state[key] for state in hand]), atol=1e-12, rtol=0)
    assert set(model.trajectory(dict_x0(), T_SPAN)) == {"q", "p"}


def test_a_step_that_replaces_the_state_by_the_fields_tuple_output() -> None:
    """The shape of torchdyn's test_dict_out_and_args: the field takes ``(t, x, args)`` and returns ``(t, dict)``,
    and the step takes the dict as the new state."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def field(t, x, args):
        out = net(torch.cat([x["a"], x["b"]], dim=-1))
        return t, {"a": out[..., :1], "b": out[..., 1:]}

    class Replace(Euler):
        def step(self, f, x, t, dt, k1=None, args=None):
            return None, f(t, x, args)[1], None

    t_span = torch.linspace(0, 1, 30)
    start = {"a": torch.rand(1, 1), "b": torch.rand(1, 1)}
    t_eval, trajectory = NeuralODE(field, solver=Replace())(start, t_span)
    assert t_eval.shape == (30,) and {key: value.shape for key, value in trajectory.items()} == {
        "a": (30, 1, 1), "b": (30, 1, 1)}
    state = start
    with torch.no_grad():
        for i in range(1, 30):
            state = field(None, state, {})[1]
            torch.testing.assert_close(trajectory["a"][i], state["a"])


def test_gradients_through_a_dict_state_match_finite_differences() -> None:
    """Autograd through a step of our own: the dict's tensors and a tensor handed in args, against
    finite differences (gradcheck, float64)."""
    t_span = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)

    def final(q: Tensor, p: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
        trajectory = NeuralODE(pendulum, solver=DictEuler(), return_t_eval=False)({"q": q, "p": p}, t_span,
                                                                                   args={"gain": gain})
        return trajectory["q"][-1], trajectory["p"][-1]

    inputs = (dict_x0()["q"].requires_grad_(), dict_x0()["p"].requires_grad_(),
              torch.tensor(0.8, dtype=F64, requires_grad=True))
    assert torch.autograd.gradcheck(final, inputs, eps=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# clear errors where args or a dict state cannot reach a solver's own step
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "dopri5", HyperEuler(lambda t, x: torch.zeros_like(x))],
                         ids=["euler", "dopri5", "hypersolver"])
def test_args_with_nodecores_own_step_are_refused_naming_them_and_the_alternative(solver) -> None:
    name = solver if isinstance(solver, str) else "HyperEuler"
    pattern = (rf"args=\{{'gain': 2.0\}}: args reach only the step of a solver class of your own .*solver '{name}' "
               r"steps with nodecore's own step, which never reads them .* or capture the values in the field")
    with pytest.raises(ValueError, match=pattern):
        odeint(lambda t, x: -x, x0(), T_SPAN, solver, args={"gain": 2.0})
    with pytest.raises(ValueError, match=pattern):
        NeuralODE(lambda t, x: -x, solver=solver)(x0(), T_SPAN, args={"gain": 2.0})


def test_args_naming_a_tensor_show_its_shape_not_its_values() -> None:
    with pytest.raises(ValueError, match=r"args=\{'label': <tensor \[3\] int64>\}"):
        odeint(lambda t, x: -x, x0(), T_SPAN, "rk4", args={"label": LABEL})


class AdaptiveOwnStep(DormandPrince45):
    def step(self, f, x, t, dt, k1=None, args=None):
        return super().step(f, x, t, dt, k1, args)


@pytest.mark.parametrize("solver, why", [
    ("rk4", "steps with nodecore's own step, which takes tensors only"),
    ("dopri5", "steps with nodecore's own step, which takes tensors only"),
    (AdaptiveOwnStep(), "is adaptive"),
], ids=["rk4", "dopri5", "adaptive own step"])
def test_a_dict_state_needs_a_fixed_step_of_your_own(solver, why: str) -> None:
    name = solver if isinstance(solver, str) else "AdaptiveOwnStep"
    pattern = (rf"x is a dict \(keys \['q', 'p'\]\): a dict-valued state is stepped only by a fixed-step solver class "
               rf"of your own .*solver '{name}' {why}. Pass such a solver object, or concatenate the entries")
    with pytest.raises(TypeError, match=pattern):
        odeint(pendulum, dict_x0(), T_SPAN, solver)
    with pytest.raises(TypeError, match=pattern):
        NeuralODE(pendulum, solver=solver)(dict_x0(), T_SPAN)


class Pendulum(nn.Module):
    """:func:`pendulum` with a parameter, for the adjoint."""

    def __init__(self) -> None:
        super().__init__()
        self.damping = nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t, x):
        return {"q": x["p"], "p": -torch.sin(x["q"]) - self.damping * x["p"]}


def test_the_adjoint_refuses_a_dict_state_and_args_naming_autograd() -> None:
    model = NeuralODE(Pendulum(), solver=DictEuler(), sensitivity="adjoint")
    with pytest.raises(TypeError, match=r"a dict state with sensitivity='adjoint': the adjoint solves for one tensor "
                                        r"state .*use sensitivity='autograd'"):
        model(dict_x0(), T_SPAN)
    model = NeuralODE(LabelField(), solver=ConditionalEuler(), sensitivity="adjoint")
    with pytest.raises(ValueError, match=r"args=\{'gain': 0.75, 'label': <tensor \[3\] int64>\} with "
                                         r"sensitivity='adjoint': .*use sensitivity='autograd'"):
        model(x0(), T_SPAN, args=ARGS)


@pytest.mark.parametrize("options, named", [
    ({"order": 2}, "order=2"), ({"integral_loss": lambda t, x: x.sum()}, "integral_loss"),
])
def test_a_dict_state_refuses_options_that_need_a_tensor(options: dict, named: str) -> None:
    with pytest.raises(TypeError, match=rf"a dict state cannot be used with {named}, which need a tensor state"):
        NeuralODE(pendulum, solver=DictEuler(), **options)(dict_x0(), T_SPAN)


def test_a_step_returning_other_keys_is_named() -> None:
    class DropsKeys(Euler):
        def step(self, f, x, t, dt, k1=None, args=None):
            return None, {"q": x["q"]}, None

    with pytest.raises(TypeError, match=r"the solver's step returned a dict with keys \['q'\] for a dict state with "
                                        r"keys \['q', 'p'\]"):
        odeint(pendulum, dict_x0(), T_SPAN, DropsKeys())


def test_a_field_that_cannot_take_what_the_step_hands_it_is_named() -> None:
    """torchdyn drops the extra argument silently for an x-only field: refused here, unless it is empty."""
    with torch.no_grad():
        model = NeuralODE(nn.Linear(2, 2, dtype=F64), solver=ConditionalEuler())
        with pytest.raises(TypeError, match=r"the solver's step handed the vector field <tensor \[3\] int64> after "
                                            r"\(t, x\), but the field takes x only .*give the field a parameter named "
                                            r"args"):
            model(x0(), T_SPAN, args=ARGS)
        model(x0(), T_SPAN, args={"gain": 1.0, "label": None})  # nothing to hand on: dropped, as torchdyn does
