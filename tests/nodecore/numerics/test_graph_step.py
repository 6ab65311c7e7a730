"""The graph-mode step (autograd solves): the same solution as the no-grad step, few recorded ops per stage, and the
per-solve input checks that a repeated state skips."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

from nodecore import NeuralODE
from nodecore.neuralode import _first_parameter
from nodecore.solvers import SOLVER_NAMES
from tests.nodecore.numerics._fields import ReadsDepth, TimeField


@pytest.mark.parametrize("field", [TimeField, ReadsDepth], ids=["takes-t", "depthcat"])
@pytest.mark.parametrize("solver", ["dopri5", "tsit5", "rk4"])
def test_time_dependent_fields_see_the_stage_times_with_grad(field: type, solver: str) -> None:
    model = NeuralODE(field(), solver=solver, atol=1e-9, rtol=1e-9, return_t_eval=False).double()
    x0 = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    final = model(x0, torch.linspace(0.0, 2.0, 41, dtype=torch.float64))[-1]
    assert final.requires_grad
    tol = 1e-7 if solver != "rk4" else 1e-6
    assert torch.allclose(final.detach(), torch.full_like(final, math.sin(2.0)), atol=tol)


def test_a_hook_on_the_field_sees_the_stage_times_with_grad() -> None:
    model = NeuralODE(nn.Linear(2, 2), solver="rk4", return_t_eval=False)
    seen: list[float] = []
    model.vf.register_forward_pre_hook(lambda module, args: seen.append(float(args[0])))
    model(torch.ones(2, 2), torch.tensor([0.0, 0.5, 1.0]))
    assert seen == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("interpolator", ["dense", "step"])
def test_grad_and_no_grad_steps_agree(solver: str, interpolator: str) -> None:
    torch.manual_seed(0)
    field = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x0 = torch.randn(32, 3, dtype=torch.float64)
    t_span = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)
    model = NeuralODE(field, solver=solver, atol=1e-6, rtol=1e-6, interpolator=interpolator, return_t_eval=False)
    with torch.no_grad():
        reference = model(x0, t_span)
    reference_stats = model.stats
    trajectory = model(x0, t_span)
    assert model.stats == reference_stats  # same evaluations, steps and rejections
    assert torch.allclose(trajectory.detach(), reference, rtol=1e-12, atol=1e-12)


def _solver_nodes(output: torch.Tensor, field_nodes: set[str]) -> int:
    """Autograd nodes behind ``output`` that the solver recorded (not the field's own, not leaves)."""
    seen, stack, count = set(), [output.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ not in field_nodes | {"AccumulateGrad"}
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


def test_a_dopri5_step_records_few_ops_per_stage() -> None:
    """What backward walks per 7-stage step: stage 1's input is one add; stages 2-6 each a stack of the earlier
    stages, one product and a view; each stage's output one flat view (23 nodes), plus the trajectory's stack."""
    field = nn.Linear(4, 4, bias=False)
    model = NeuralODE(field, solver="dopri5", step_size=0.25, return_t_eval=False)
    final = model(torch.randn(8, 4), torch.tensor([0.0, 1.0]))[-1]
    steps = model.stats.steps_forward
    assert steps == 4
    field_nodes = {"MmBackward0", "TBackward0"}  # nn.Linear without bias: x @ W.t()
    assert _solver_nodes(final, field_nodes) <= 23 * steps + 4


def test_a_remembered_state_written_in_place_is_checked_again() -> None:
    model = NeuralODE(nn.Linear(2, 2), solver="dopri5", return_t_eval=False)
    x = torch.randn(4, 2)
    t_span = torch.linspace(0.0, 1.0, 3)
    model(x, t_span)
    model(x, t_span)  # the same, unmodified tensor: no second check
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model(x, t_span)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model(torch.tensor([[0.0, float("inf")]]), t_span)


def test_a_model_that_solved_copies_and_pickles() -> None:
    model = NeuralODE(nn.Linear(2, 2), solver="dopri5", return_t_eval=False)
    x = torch.randn(4, 2)
    t_span = torch.linspace(0.0, 1.0, 3)
    expected = model(x, t_span)
    for again in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.allclose(again(x, t_span), expected)
        x_bad = x.clone()
        x_bad[0, 0] = float("nan")
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            again(x_bad, t_span)


def test_inference_tensors_are_checked_every_time() -> None:
    model = NeuralODE(nn.Linear(2, 2), solver="dopri5", return_t_eval=False)
    with torch.inference_mode():
        x = torch.randn(4, 2)
        model(x, torch.linspace(0.0, 1.0, 3))
        assert not model._finite_state.holds(x)


def test_first_parameter_is_the_first_of_parameters() -> None:
    nested = nn.Sequential(nn.Tanh(), nn.Sequential(nn.ReLU(), nn.Linear(2, 3)), nn.Linear(3, 2))
    with_none = nn.Linear(2, 2, bias=False)
    with_none.register_parameter("extra", None)
    for module in (nested, with_none, nn.Sequential(nn.Tanh()), nn.Linear(2, 2)):
        assert _first_parameter(module) is next(module.parameters(), None)
