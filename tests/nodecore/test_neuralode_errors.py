"""Bad input to NeuralODE and failing solves: each gets a clear error naming the bad value and what to do."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch import Tensor, nn

from nodecore import NeuralODE, NonFiniteError, SolverError, StepSizeUnderflowError, TooManyStepsError
from nodecore.errors import translate_solver_assertion
from nodecore.solvers import SOLVER_NAMES, SOLVERS

F64 = torch.float64


class Decay(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return -x


def x0() -> Tensor:
    return torch.tensor([[1.0, -0.5], [0.25, 2.0]], dtype=F64)


def model(**options) -> NeuralODE:
    return NeuralODE(Decay(), **options)


# --------------------------------------------------------------------------------------------------
# t_span
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t_span",
    [
        [0.0, 0.5, 0.5, 1.0],  # repeated depth
        [0.0, 1.0, 0.5],  # not monotonic
        [1.0, 0.0, 0.5],
        [0.0, 0.0],
        torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=F64),
    ],
)
def test_t_span_must_be_strictly_monotonic(t_span) -> None:
    with pytest.raises(ValueError, match="strictly increasing, or strictly decreasing") as info:
        model()(x0(), t_span)
    values = t_span.tolist() if isinstance(t_span, Tensor) else t_span
    assert str([float(v) for v in values]) in str(info.value)  # the message shows the bad t_span


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_t_span_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="t_span must be finite") as info:
        model()(x0(), [0.0, bad, 1.0] if bad != -math.inf else [bad, 0.0])
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    ("t_span", "shape"),
    [
        (torch.tensor([[0.0, 1.0]], dtype=F64), "(1, 2)"),
        (torch.tensor([[0.0], [1.0]], dtype=F64), "(2, 1)"),
        (torch.tensor(1.0, dtype=F64), "()"),
        (torch.tensor([0.0], dtype=F64), "(1,)"),
        ([1.0], "(1,)"),
        (torch.empty(0, dtype=F64), "(0,)"),
    ],
)
def test_t_span_must_be_1d_with_two_depths(t_span, shape: str) -> None:
    with pytest.raises(ValueError, match="1-D with at least 2 depths") as info:
        model()(x0(), t_span)
    assert f"got shape {shape}" in str(info.value)


def test_t_span_on_another_device_is_refused_before_any_compute() -> None:
    """The 'meta' device stands in for a second device: the check must fire before anything is computed."""
    solve = model()
    with pytest.raises(ValueError, match="t_span is on meta but x is on cpu") as info:
        solve(x0(), torch.linspace(0, 1, 5, device="meta"))
    assert "t_span.to(x.device)" in str(info.value)
    assert solve.vf.nfe == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_t_span_on_cuda_with_x_on_cpu_is_refused() -> None:  # pragma: no cover - no GPU in CI
    with pytest.raises(ValueError, match="move it with t_span.to"):
        model()(x0(), torch.tensor([0.0, 1.0], device="cuda"))


@pytest.mark.parametrize("t_span", [[1.0, 0.0], [2.0, 1.5, -1.0]])
def test_decreasing_t_span_is_a_valid_backward_solve(t_span) -> None:
    t_eval, trajectory = model(atol=1e-9, rtol=1e-9)(x0(), t_span)
    assert t_eval.tolist() == t_span
    expected = x0() * torch.exp(-(t_eval - t_span[0]))[:, None, None]  # x(t) = x(t0) exp(-(t - t0))
    assert torch.allclose(trajectory, expected, rtol=1e-7)


def test_integer_t_span_is_converted_to_the_state_dtype() -> None:
    t_eval, trajectory = model()(x0(), torch.tensor([0, 1, 2]))
    assert t_eval.dtype == F64 and trajectory.dtype == F64


def test_gradient_with_respect_to_t_span_needs_autograd() -> None:
    t_span = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="gradients with respect to t_span need sensitivity='autograd'"):
        model(sensitivity="adjoint")(x0(), t_span)
    _, trajectory = model(sensitivity="autograd")(x0(), t_span)  # fine with autograd
    trajectory[-1].sum().backward()
    assert t_span.grad is not None


# --------------------------------------------------------------------------------------------------
# x
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_x_must_be_floating_point(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="x must be floating point") as info:
        model()(torch.ones(2, 2, dtype=dtype), [0.0, 1.0])
    assert str(dtype) in str(info.value)
    assert "x.float()" in str(info.value)


@pytest.mark.parametrize("bad", [[[1.0, 0.0]], np.ones((2, 2)), 1.0, None])
def test_x_must_be_a_tensor(bad) -> None:
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got") as info:
        model()(bad, [0.0, 1.0])
    assert type(bad).__name__ in str(info.value)


def test_a_dict_state_with_nodecores_own_step_is_refused_with_the_workaround() -> None:
    """A dict state is stepped only by a solver class's own step (tests/nodecore/test_torchdyn_args.py): nodecore's
    solvers refuse it, naming the solver and both ways out."""
    from nodecore.numerics import odeint

    state = {"i1": torch.rand(1, 1), "i2": torch.rand(1, 1)}
    for solve in (lambda: model()(state, [0.0, 1.0]), lambda: odeint(lambda t, x: x, state, [0.0, 1.0], "euler")):
        with pytest.raises(TypeError, match=r"x is a dict \(keys \['i1', 'i2'\]\): .* solver '(tsit5|euler)' steps "
                                            r"with nodecore's own step.* or concatenate the entries into one tensor "
                                            r"\(torch.cat on the last dim\)"):
            solve()
    with pytest.raises(TypeError, match="got list$"):  # no hint for what is not a mapping
        model()([[1.0, 0.0]], [0.0, 1.0])


@pytest.mark.parametrize("bad", [torch.tensor(1.0, dtype=F64), torch.empty(0, 2, dtype=F64)])
def test_x_must_be_a_non_empty_state(bad: Tensor) -> None:
    with pytest.raises(ValueError, match="non-empty state tensor") as info:
        model()(bad, [0.0, 1.0])
    assert str(tuple(bad.shape)) in str(info.value)


def test_parameters_and_x_must_share_dtype() -> None:
    field = nn.Linear(2, 2)  # float32 parameters
    with pytest.raises(ValueError) as info:
        NeuralODE(field)(x0(), [0.0, 1.0])
    message = str(info.value)
    assert "torch.float64" in message and "torch.float32" in message
    assert "model.to(x.device, x.dtype)" in message
    # Doing what the message says works.
    solve = NeuralODE(field)
    solve.to(x0().device, x0().dtype)
    assert solve(x0(), [0.0, 1.0])[1].dtype == F64


def test_float32_everywhere_is_fine() -> None:
    torch.manual_seed(0)
    t_eval, trajectory = NeuralODE(nn.Linear(2, 2))(torch.randn(3, 2), [0.0, 1.0])
    assert t_eval.dtype == torch.float32 and trajectory.shape == (2, 3, 2)


# --------------------------------------------------------------------------------------------------
# The vector field
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "got"),
    [
        (nn.Linear(2, 3).to(F64), "(2, 3)"),
        (lambda x: x.sum(-1), "(2,)"),
        (lambda x: x[None], "(1, 2, 2)"),
        (lambda t, x: 1.0, "float"),
    ],
)
def test_field_returning_the_wrong_shape(field, got: str) -> None:
    state = x0()
    with pytest.raises(ValueError, match="the vector field must return a tensor shaped like the state") as info:
        NeuralODE(field)(state, [0.0, 1.0])
    message = str(info.value)
    assert "(2, 2)" in message and f"got {got}" in message
    assert "Augmenter" in message  # what to do when the field changes the dimension on purpose


@pytest.mark.parametrize("option", ["seminorm", "return_t_eval"])
@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_flag_that_is_not_true_or_false_is_refused(option: str, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"unknown {option} {bad!r}; valid values: True, False"):
        NeuralODE(nn.Linear(2, 2), **{option: bad})


def test_non_callable_field_is_refused() -> None:
    with pytest.raises(TypeError, match="vector field must be an nn.Module or callable, got int"):
        NeuralODE(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Failing solves: NaN / Inf, too many steps, blow-up
# --------------------------------------------------------------------------------------------------


def poisoned_field(value: float, after: float = 0.5):
    """``dx/dt = -x`` until depth ``after``, then ``value`` (NaN or Inf) everywhere."""

    class Poisoned(nn.Module):  # a module, so the adjoint accepts it too
        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            return torch.where(t > after, torch.full_like(x, value), -x)

    return Poisoned()


def fixed_step(name: str) -> dict:
    return {} if SOLVERS[name].adaptive else {"step_size": 0.1}


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_nan_or_inf_during_a_solve_raises(name: str, value: float, sensitivity: str) -> None:
    """Never a silent NaN: fixed-step solvers end with a non-finite state (NonFiniteError); adaptive ones
    reject every step until the step size underflows (StepSizeUnderflowError)."""
    solve = NeuralODE(poisoned_field(value), solver=name, sensitivity=sensitivity, **fixed_step(name))
    with pytest.raises(SolverError) as info:
        solve(x0().requires_grad_(True), torch.linspace(0.0, 1.0, 5, dtype=F64))
    assert isinstance(info.value, (NonFiniteError, StepSizeUnderflowError))
    message = str(info.value)
    assert "NaN" in message and "Inf" in message
    assert "check the" in message  # says what to look at


def test_nan_in_the_initial_state_raises() -> None:
    bad = x0()
    bad[0, 0] = math.nan
    for options in ({}, {"solver": "euler", "step_size": 0.1}, {"solver": "rk4"}):
        with pytest.raises((SolverError, ValueError)):
            model(**options)(bad, [0.0, 1.0])


def test_too_many_steps_on_an_adaptive_solve() -> None:
    solve = NeuralODE(Decay(), atol=1e-12, rtol=1e-12, max_steps=5)
    with pytest.raises(TooManyStepsError) as info:
        solve(x0(), [0.0, 10.0])
    message = str(info.value)
    assert "forward solve exceeded max_steps=5" in message
    assert "loosen atol/rtol" in message and "raise max_steps" in message
    assert solve.stats.steps_forward + solve.stats.rejected_forward == 6  # stopped at the first step too many


def test_too_many_steps_on_a_fixed_step_solve() -> None:
    with pytest.raises(TooManyStepsError, match="max_steps=5"):
        NeuralODE(Decay(), solver="euler", step_size=0.01, max_steps=5)(x0(), [0.0, 1.0])
    # Exactly at the cap is fine: 5 steps of 0.2.
    NeuralODE(Decay(), solver="euler", step_size=0.2, max_steps=5)(x0(), [0.0, 1.0])


def test_too_many_steps_in_the_adjoint_backward_pass() -> None:
    """A loose forward solve fits in max_steps; the adjoint solve at rtol=atol=1e-12 does not."""
    torch.manual_seed(0)
    field = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).to(F64)
    solve = NeuralODE(
        field, sensitivity="adjoint", atol=1e-3, rtol=1e-3, atol_adjoint=1e-12, rtol_adjoint=1e-12, max_steps=10
    )
    _, trajectory = solve(torch.randn(4, 2, dtype=F64, requires_grad=True), [0.0, 1.0])
    assert solve.stats.steps_forward <= 10
    with pytest.raises(TooManyStepsError, match=r"backward \(adjoint\) solve exceeded max_steps=10"):
        trajectory[-1].sum().backward()
    assert solve.stats.steps_backward + solve.stats.rejected_backward == 11


class Square(nn.Module):
    """``dx/dt = x**2``: from x0 = 1 the solution 1 / (1 - t) blows up at t = 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x**2


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_finite_time_blow_up_raises_a_solver_error(name: str) -> None:
    options = {} if SOLVERS[name].adaptive else {"step_size": 0.01}
    with pytest.raises(SolverError) as info:
        NeuralODE(Square(), solver=name, **options)(torch.ones(1, 1, dtype=F64), [0.0, 2.0])
    error = info.value
    message = str(error)
    if SOLVERS[name].adaptive:
        assert isinstance(error, StepSizeUnderflowError)
        assert "step size underflowed" in message and "stiff" in message
    else:
        assert isinstance(error, NonFiniteError)
        assert "blew up" in message and "smaller step_size" in message


def test_error_hierarchy() -> None:
    for cls in (NonFiniteError, StepSizeUnderflowError, TooManyStepsError):
        assert issubclass(cls, SolverError)
    assert issubclass(SolverError, RuntimeError)


@pytest.mark.parametrize(
    ("assertion", "expected"),
    [
        ("underflow in dt 1e-17", StepSizeUnderflowError),
        ("non-finite values in state `y`: tensor([nan])", NonFiniteError),
        ("max_num_steps exceeded (10>=10)", TooManyStepsError),
    ],
)
def test_torchdiffeq_assertions_are_translated(assertion: str, expected: type) -> None:
    translated = translate_solver_assertion(AssertionError(assertion))
    assert type(translated) is expected
    if expected is not NonFiniteError:
        assert assertion in str(translated)  # the original detail is kept


def test_unrelated_assertions_pass_through() -> None:
    original = AssertionError("t must be strictly increasing or decreasing")
    assert translate_solver_assertion(original) is original


# --------------------------------------------------------------------------------------------------
# Constructor arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["atol", "rtol", "atol_adjoint", "rtol_adjoint", "step_size"])
@pytest.mark.parametrize("bad", [0, 0.0, -1e-3, math.nan, math.inf, "1e-3", torch.tensor(1e-3)])
def test_bad_tolerances_and_step_size(name: str, bad) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0, got ") as info:
        NeuralODE(Decay(), **{name: bad})
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, 1.5, 100.0, "100", None])
def test_bad_max_steps(bad) -> None:
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got ") as info:
        NeuralODE(Decay(), max_steps=bad)
    assert repr(bad) in str(info.value)


def test_good_arguments_are_kept() -> None:
    solve = NeuralODE(Decay(), atol=1e-6, rtol=1e-5, atol_adjoint=1e-7, rtol_adjoint=1e-8, max_steps=7, step_size=1)
    assert (solve.atol, solve.rtol, solve.atol_adjoint, solve.rtol_adjoint) == (1e-6, 1e-5, 1e-7, 1e-8)
    assert solve.max_steps == 7 and solve.step_size == 1.0


def test_a_non_finite_initial_state_is_rejected_before_solving() -> None:
    model = NeuralODE(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model(torch.tensor([[0.0, float("nan")]]), torch.linspace(0, 1, 3))


def test_max_steps_takes_any_integer_but_not_a_bool() -> None:
    import numpy as np

    assert NeuralODE(nn.Linear(2, 2), max_steps=np.int64(5)).max_steps == 5
    with pytest.raises(ValueError, match="max_steps"):
        NeuralODE(nn.Linear(2, 2), max_steps=True)


def test_constant_steps_of_an_adaptive_solver_never_overshoot_the_end() -> None:
    seen: list[float] = []

    class Recording(nn.Module):
        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            seen.append(float(t))
            return -x

    NeuralODE(Recording(), solver="dopri5", step_size=0.3)(torch.ones(1, 1), torch.linspace(0, 1, 3))
    assert max(seen) <= 1.0 + 1e-12


def test_a_t_span_changed_in_place_after_a_solve_is_checked_again() -> None:
    model = NeuralODE(nn.Linear(2, 2))
    t_span = torch.linspace(0, 1, 3)
    model(torch.ones(1, 2), t_span)
    t_span[1] = 0.0  # no longer strictly monotonic
    with pytest.raises(ValueError, match="strictly increasing"):
        model(torch.ones(1, 2), t_span)


def test_nan_in_the_last_constant_step_of_an_adaptive_solver_raises() -> None:
    class LateNaN(nn.Module):
        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            return torch.where(t > 0.75, torch.full_like(x, math.nan), -x)

    with pytest.raises(NonFiniteError):
        NeuralODE(LateNaN(), solver="dopri5", step_size=0.5)(torch.ones(1, 2), torch.tensor([0.0, 1.0]))
