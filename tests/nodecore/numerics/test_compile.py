"""``torch.compile`` of a NeuralODE: the same numbers and gradients as eager, the stepping loop inside the graph,
and, after the second call (the first checks the field's output shape), no recompilation from one call to the next.

Dynamo's own ``CompileCounter`` backend runs the captured graphs as they are (no code generation, so no C++
compiler and seconds, not minutes); what it counts is what any backend would be handed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from nodecore import NeuralODE

T_SPAN = torch.linspace(0, 1, 5)
STEP = 0.125  # 8 constant steps over t_span


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))


def _x() -> torch.Tensor:
    return torch.randn(32, 2, generator=torch.Generator().manual_seed(1))


def _run(model: nn.Module, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net = model.vf.vf if isinstance(model, NeuralODE) else model._orig_mod.vf.vf
    with torch.set_grad_enabled(grad):
        trajectory = model(x, T_SPAN)[1]
    if not grad:
        return trajectory, []
    trajectory[-1].pow(2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    return trajectory.detach(), grads


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("solver, stages, grad", [("euler", 1, True), ("rk4", 4, True), ("rk4", 4, False),
                                                  ("dopri5", 6, True)])
def test_a_constant_step_solve_compiles_to_the_same_numbers_without_recompiling(solver, stages, grad):
    x = _x()
    eager = NeuralODE(_net(), solver=solver, step_size=STEP)
    expected, expected_grads = _run(eager, x, grad)

    counter = CompileCounter()
    model = NeuralODE(_net(), solver=solver, step_size=STEP)
    compiled = torch.compile(model, backend=counter)
    trajectory, grads = _run(compiled, x, grad)
    torch.testing.assert_close(trajectory, expected, rtol=1e-6, atol=1e-7)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert model.stats.nfe_forward == eager.stats.nfe_forward

    # The steps are in the graphs: every evaluation's two Linear layers and Tanh are captured ops.
    evaluations = eager.stats.nfe_forward
    assert evaluations >= 8 * stages and counter.op_count >= 3 * evaluations, counter.op_count
    _run(compiled, x, grad)  # the first call checked the field's output shape: its check is compiled out now
    frames = counter.frame_count
    for _ in range(3):  # same shapes, same settings: nothing to compile again
        again, _ = _run(compiled, x, grad)
    assert counter.frame_count == frames
    torch.testing.assert_close(again, expected, rtol=1e-6, atol=1e-7)
    assert model.stats.nfe_forward == eager.stats.nfe_forward


def test_an_adaptive_solve_and_the_adjoint_compile_too():
    """Adaptive steps read the error ratio on the host (Dynamo splits the graph there), and the adjoint runs its
    backward solve outside the graph: both still give eager's numbers."""
    x = _x()
    for settings in ({"solver": "dopri5"}, {"solver": "rk4", "step_size": STEP, "sensitivity": "adjoint"}):
        torch._dynamo.reset()
        expected, expected_grads = _run(NeuralODE(_net(), **settings), x, grad=True)
        compiled = torch.compile(NeuralODE(_net(), **settings), backend=CompileCounter())
        trajectory, grads = _run(compiled, x, grad=True)
        torch.testing.assert_close(trajectory, expected, rtol=1e-6, atol=1e-7)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
