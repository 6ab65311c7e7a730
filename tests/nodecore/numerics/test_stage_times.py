"""No-grad solves skip computing stage times only for fields that cannot see the time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodecore import NeuralODE
from nodecore.fields import VectorField
from tests.nodecore.numerics._fields import ReadsDepth, TimeField


class _Linear(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def test_which_fields_ignore_time() -> None:
    assert VectorField(_Linear()).ignores_time
    assert not VectorField(TimeField()).ignores_time
    assert not VectorField(ReadsDepth()).ignores_time


@pytest.mark.parametrize("field", [TimeField, ReadsDepth], ids=["takes-t", "depthcat"])
@pytest.mark.parametrize("solver", ["dopri5", "rk4", "tsit5"])
def test_time_dependent_fields_see_the_stage_times_without_grad(field: type, solver: str) -> None:
    model = NeuralODE(field(), solver=solver, atol=1e-9, rtol=1e-9, return_t_eval=False)
    model.double()
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    t_span = torch.linspace(0.0, 2.0, 41, dtype=torch.float64)
    with torch.no_grad():
        final = model(x0, t_span)[-1]
    expected = math.sin(2.0)
    tol = 1e-7 if solver != "rk4" else 1e-6
    assert torch.allclose(final, torch.full_like(final, expected), atol=tol)


def test_a_field_that_ignores_time_gives_the_same_solution() -> None:
    x0 = torch.randn(8, 2, dtype=torch.float64)
    t_span = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    model = NeuralODE(_Linear(), solver="dopri5", atol=1e-10, rtol=1e-10, return_t_eval=False)
    with torch.no_grad():
        final = model(x0, t_span)[-1]
    assert torch.allclose(final, x0 * math.exp(-1.0), atol=1e-9)


def test_a_shared_solver_computes_stage_times_again_for_a_time_dependent_field() -> None:
    """The workspace is cached on the solver: a time-free solve must not leave its skip on for the next one."""
    from nodecore.numerics import RungeKutta4

    solver = RungeKutta4()
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    t_span = torch.linspace(0.0, 2.0, 41, dtype=torch.float64)
    free = NeuralODE(_Linear(), solver=solver, return_t_eval=False)
    timed = NeuralODE(TimeField(), solver=solver, return_t_eval=False)
    with torch.no_grad():
        free(x0, t_span)
        (workspace,) = solver._workspaces.values()
        assert workspace.stage_times is False
        final = timed(x0, t_span)[-1]
        assert workspace.stage_times is True
    assert torch.allclose(final, torch.full_like(final, math.sin(2.0)), atol=1e-6)


def test_a_hook_on_the_field_still_sees_the_stage_times() -> None:
    model = NeuralODE(_Linear(), solver="rk4", return_t_eval=False)
    seen: list[float] = []
    model.vf.register_forward_pre_hook(lambda module, args: seen.append(float(args[0])))
    with torch.no_grad():
        model(torch.ones(2, 2), torch.tensor([0.0, 0.5, 1.0]))
    # rk4's stage times over two steps of 0.5, then nothing else
    assert seen == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]
