"""Multiple shooting on a field that reads t: each interval is solved on its own times (torchdyn's start all at 0)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodecore.fields import VectorField
from nodecore.numerics import odeint_mshooting
from nodecore.problems import MultipleShootingLayer


def _forced(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return -x + torch.sin(t)


@pytest.mark.parametrize("solver", ["mszero", "msbackward"])
def test_a_time_dependent_field_converges_to_its_solution(solver: str) -> None:
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t_span = torch.linspace(1.0, 3.0, 5, dtype=torch.float64)  # starts away from 0: shifted intervals show
    _, B = odeint_mshooting(_forced, x0, t_span, solver, fine_steps=40, maxiter=4)
    assert torch.allclose(B, _exact_from(x0, t_span), atol=1e-7)


def _exact_from(x0: torch.Tensor, t_span: torch.Tensor) -> torch.Tensor:
    """The solution through x0 at t_span[0] (the same ODE, started at t0)."""
    t0 = float(t_span[0])
    c = (x0 - (math.sin(t0) - math.cos(t0)) / 2) * math.exp(t0)  # x = c e^-t + (sin t - cos t) / 2
    t = t_span.reshape(-1, 1, 1)
    return c * torch.exp(-t) + (torch.sin(t) - torch.cos(t)) / 2


class _Forced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.k * x + torch.sin(t)


def test_the_layer_and_its_adjoint_see_the_true_time() -> None:
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t_span = torch.linspace(0.5, 2.5, 5, dtype=torch.float64)
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        field = _Forced()
        layer = MultipleShootingLayer(field, "mszero", sensitivity=sensitivity, maxiter=4, fine_steps=40)
        _, B = layer(x0, t_span)
        assert torch.allclose(B.detach(), _exact_from(x0, t_span), atol=1e-7)
        B[-1].sum().backward()
        grads[sensitivity] = float(field.k.grad)
    field, h = _Forced(), 1e-6
    ends = []
    with torch.no_grad():
        for k in (1 + h, 1 - h):
            field.k.fill_(k)
            ends.append(float(MultipleShootingLayer(field, "mszero", maxiter=4, fine_steps=40)(x0, t_span)[1][-1].sum()))
    finite_difference = (ends[0] - ends[1]) / (2 * h)
    assert grads["autograd"] == pytest.approx(finite_difference, rel=1e-6)
    assert grads["adjoint"] == pytest.approx(finite_difference, rel=1e-6)


def test_a_field_that_ignores_time_is_still_solved_as_one_batch() -> None:
    calls: list[tuple[int, ...]] = []

    def field(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return -x

    x0 = torch.ones(3, 2, dtype=torch.float64)
    _, B = odeint_mshooting(VectorField(field), x0, torch.linspace(0, 1, 5, dtype=torch.float64), "mszero",
                            fine_steps=20, maxiter=4)
    assert (4, 3, 2) in calls  # all four intervals in one call
    assert torch.allclose(B[-1], x0 * math.exp(-1.0), atol=1e-8)


def test_nodecores_autonomous_systems_are_shot_as_one_batch() -> None:
    from nodecore.numerics.systems import Lorenz

    calls: list[tuple[int, ...]] = []

    class Recorded(Lorenz):
        def forward(self, t, x, **kwargs):
            calls.append(tuple(x.shape))
            return super().forward(t, x)

    assert VectorField(Lorenz()).ignores_time  # the class's promise reaches the wrapper
    x0 = torch.ones(3, 3, dtype=torch.float64)
    odeint_mshooting(Recorded(), x0, torch.linspace(0, 0.1, 5, dtype=torch.float64), "mszero", fine_steps=4,
                     maxiter=2)
    assert (4, 3, 3) in calls
