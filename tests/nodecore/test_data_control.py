"""DataControl: the field sees each sample's initial state, and gradients reach it through the control too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nodecore import NeuralODE
from nodecore.nn import Augmenter, DataControl, DepthCat

F64 = torch.float64


def test_the_control_is_the_initial_state_of_each_solve() -> None:
    """dx/dt = -x + u with u = x0 keeps every sample where it started; a second solve uses its own x0."""
    mix = nn.Linear(4, 2, bias=False, dtype=F64)
    with torch.no_grad():
        mix.weight.copy_(torch.tensor([[-1.0, 0, 1, 0], [0, -1, 0, 1]], dtype=F64))
    model = NeuralODE(nn.Sequential(DataControl(), mix), "dopri5", atol=1e-9, rtol=1e-9)
    for _ in range(2):
        x0 = torch.randn(5, 2, dtype=F64)
        _, trajectory = model(x0, torch.linspace(0, 2, 3, dtype=F64))
        assert torch.allclose(trajectory, x0.expand(3, 5, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("sensitivity", "backend"),
                         [("adjoint", "nodecore"), ("interpolated_adjoint", "nodecore"), ("adjoint", "torchdiffeq")])
def test_gradients_through_the_control_match_autograd(sensitivity: str, backend: str) -> None:
    torch.manual_seed(0)
    field = nn.Sequential(DataControl(), nn.Linear(4, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))
    x0 = torch.randn(6, 2, dtype=F64, requires_grad=True)
    t_span = torch.linspace(0, 1, 2, dtype=F64)
    tight = dict(atol=1e-10, rtol=1e-10, atol_adjoint=1e-10, rtol_adjoint=1e-10)

    def gradients(**kwargs) -> list[torch.Tensor]:
        _, trajectory = NeuralODE(field, "dopri5", **tight, **kwargs)(x0, t_span)
        return list(torch.autograd.grad(trajectory[-1].square().sum(), [x0, *field.parameters()]))

    reference = gradients()
    for got, want in zip(gradients(sensitivity=sensitivity, backend=backend), reference):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-8)


def test_torchdyn_nn_names_import_from_nodecore_nn() -> None:
    assert {DataControl, DepthCat, Augmenter} <= {getattr(__import__("nodecore"), n) for n in
                                                 ("DataControl", "DepthCat", "Augmenter")}


def test_a_data_control_used_outside_a_neural_ode_says_so() -> None:
    with pytest.raises(RuntimeError, match="DataControl has no control u"):
        DataControl()(torch.zeros(2, 2))
