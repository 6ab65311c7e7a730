"""``nodecore.core.DEFunc``: torchdyn's field wrapper, importable as ``from torchdyn.core import DEFunc`` is.

Checked against closed forms: a linear field ``x A^T`` gives ``expm(A t)``; the second-order ``x'' = -x`` as a
``DEFunc(order=2)`` gives ``cos``/``sin``; an integral loss ``l = |x|^2`` propagated in ``x[:, 0]`` integrates to
its exact value along the solution.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from nodecore.core import DEFunc, NeuralODE
from nodecore.core.defunc import DEFunc as DEFuncByPath
from nodecore.fields import DepthCat
from nodecore.numerics import odeint

F64 = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)


class LinearField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.matrix = nn.Parameter(A.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.T


def test_import_path_and_a_first_order_field_taking_x_t_x_or_args() -> None:
    assert DEFuncByPath is DEFunc
    x = torch.tensor([[1.0, 2.0]], dtype=F64)

    class TimeArgs(nn.Module):
        def forward(self, t: Tensor, x: Tensor, args: dict = {}) -> Tensor:  # noqa: B006 (torchdyn's signature)
            return x * t + args.get("shift", 0.0)

    for field, expected in ((LinearField().double(), x @ A.T),
                            (lambda t, x: x * t, x * 0.5),
                            (TimeArgs(), x * 0.5)):
        func = DEFunc(field)
        torch.testing.assert_close(func(torch.tensor(0.5, dtype=F64), x), expected)
    func = DEFunc(TimeArgs())
    torch.testing.assert_close(func(0.5, x, {"shift": 1.0}), x * 0.5 + 1.0)
    torch.testing.assert_close(func(0.5, x), x * 0.5)  # args={} when none are given
    assert func.nfe == 2
    func.nfe = 0
    assert func.nfe == 0


def test_solves_match_expm_and_the_parameters_are_registered_once() -> None:
    func = DEFunc(LinearField().double())
    assert [name for name, _ in func.named_parameters()] == ["vf.matrix"]
    assert list(func.state_dict()) == ["vf.matrix"]
    x0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=F64)
    t_span = torch.linspace(0, 1, 5, dtype=F64)
    exact = torch.stack([x0 @ torch.linalg.matrix_exp(A * t).T for t in t_span])
    _, sol = odeint(func, x0, t_span, solver="dopri5", atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(sol, exact, atol=1e-7, rtol=0)
    _, sol = NeuralODE(func, solver="dopri5", atol=1e-10, rtol=1e-10)(x0, t_span)
    torch.testing.assert_close(sol, exact, atol=1e-7, rtol=0)
    sol[-1].sum().backward()
    assert func.vf.matrix.grad is not None and torch.isfinite(func.vf.matrix.grad).all()


def test_second_order_is_the_harmonic_oscillator() -> None:
    func = DEFunc(lambda x: -x[:, :1], order=2)  # x'' = -x, state [x, x']
    x0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    t_span = torch.linspace(0, math.pi, 7, dtype=F64)
    _, sol = odeint(func, x0, t_span, solver="dopri5", atol=1e-10, rtol=1e-10)
    c, s = torch.cos(t_span), torch.sin(t_span)
    torch.testing.assert_close(sol[:, 0, 0], c, atol=1e-7, rtol=0)
    torch.testing.assert_close(sol[:, 1, 0], s, atol=1e-7, rtol=0)
    torch.testing.assert_close(sol[:, 0, 1], -s, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="multiple of 2"):
        func(0.0, torch.ones(1, 3, dtype=F64))
    with pytest.raises(ValueError, match="highest derivative"):
        DEFunc(lambda x: -x, order=2)(0.0, torch.ones(1, 2, dtype=F64))


@pytest.mark.parametrize("order", [1, 2])
def test_integral_loss_in_the_first_column_integrates_exactly(order: int) -> None:
    """x' = -x (order 1) or [q, p]' = [p, -q] (order 2); l = |x|^2 along it, integrated in x[:, 0]."""
    field = (lambda x: -x) if order == 1 else (lambda x: -x[:, :1])
    func = DEFunc(field, order=order)
    func.integral_loss, func.sensitivity = (lambda t, x: (x ** 2).sum(1)), "autograd"
    state = torch.tensor([[2.0, 0.0]], dtype=F64) if order == 2 else torch.tensor([[2.0]], dtype=F64)
    x0 = torch.cat([torch.zeros(1, 1, dtype=F64), state], 1)
    T = 1.5
    _, sol = odeint(func, x0, torch.tensor([0.0, T], dtype=F64), solver="dopri5", atol=1e-11, rtol=1e-11)
    # order 1: int 4 e^{-2t} = 2 (1 - e^{-2T}); order 2: |x|^2 = 4 (cos^2 + sin^2) = 4, so 4 T
    exact = 2 * (1 - math.exp(-2 * T)) if order == 1 else 4 * T
    assert sol[-1, 0, 0].item() == pytest.approx(exact, rel=1e-8)
    func.sensitivity = "adjoint"  # torchdyn propagates the loss in the state only for autograd
    assert func(0.0, state).shape == state.shape


def test_depth_layers_see_t_and_bad_arguments_fail() -> None:
    field = nn.Sequential(DepthCat(1), nn.Linear(3, 2)).double()
    with torch.no_grad():
        field[1].weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]))
        field[1].bias.zero_()
    func = DEFunc(field)
    torch.testing.assert_close(func(torch.tensor(0.25, dtype=F64), torch.zeros(1, 2, dtype=F64)),
                               torch.tensor([[0.25, 0.5]], dtype=F64))
    with pytest.raises(TypeError, match="callable"):
        DEFunc(3)
    with pytest.raises(ValueError):
        DEFunc(LinearField(), order=0)
