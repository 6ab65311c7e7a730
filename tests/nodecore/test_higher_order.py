"""``NeuralODE(order=k)`` for any ``k >= 1``, as in torchdyn.

The state is ``z = [x, x', ..., x^(k-1)]`` (``k`` blocks of ``n`` on the last dim), the field takes the whole
state and returns ``x^(k)``. Checked against analytic solutions (a constant jerk gives a cubic; ``x'''' = -4x``
gives ``Re/Im e^{(-1+i)t}``), against the hand-written first-order system (bit for bit), and for gradients
against ``exp(A T)`` and between sensitivities. Everything is float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from nodecore import NeuralODE, load_checkpoint, load_weights, save_checkpoint
from nodecore.fields import DepthCat, VectorField
from nodecore.neuralode import MIN_ORDER, ORDERS

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}


def span(stop: float, points: int) -> Tensor:
    return torch.linspace(0.0, stop, points, dtype=F64)


class ConstantJerk(nn.Module):
    """``x''' = c`` for a state ``[x, x', x'']`` of blocks ``n = len(c)``."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.c = c
        self.widths: set[int] = set()  # the state widths it was called with

    def forward(self, z: Tensor) -> Tensor:
        self.widths.add(z.shape[-1])
        return self.c.expand(*z.shape[:-1], len(self.c))


class MinusFourX(nn.Module):
    """``x'''' = -4 x``; its solutions are the real and imaginary parts of ``e^{(-1 + i) t}``."""

    def forward(self, z: Tensor) -> Tensor:
        return -4 * z[..., : z.shape[-1] // 4]


class FirstOrderForm(nn.Module):
    """The order-``k`` system written by hand as a first-order field: ``[x', ..., x^(k-1), f(t, z)]``."""

    def __init__(self, field: nn.Module, order: int) -> None:
        super().__init__()
        self.field, self.order = field, order

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        n = z.shape[-1] // self.order
        return torch.cat([z[..., n:], self.field(t, z)], dim=-1)


class TimeMLP(nn.Module):
    """A depth-variant MLP ``(t, z [B, k n]) -> [B, n]``."""

    def __init__(self, order: int, n: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(order * n + 1, 16), nn.Tanh(), nn.Linear(16, n)).double()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([z, t.expand(*z.shape[:-1], 1)], dim=-1))


def mlp(order: int, n: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(order * n, 16), nn.Tanh(), nn.Linear(16, n)).double()


# --- analytic solutions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("solver", "backend"), [("rk4", "nodecore"), ("dopri5", "nodecore"),
                                                 ("dopri5", "torchdiffeq")])
def test_order3_constant_jerk_gives_the_cubic(solver: str, backend: str) -> None:
    c = torch.tensor([0.6, -1.5], dtype=F64)
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=F64)
    v0 = torch.tensor([[0.3, 1.0], [-1.0, 2.0]], dtype=F64)
    a0 = torch.tensor([[2.0, 0.0], [0.25, -0.5]], dtype=F64)
    options = {"step_size": 0.25} if solver == "rk4" else TIGHT  # rk4 is exact on a cubic
    field = ConstantJerk(c)
    model = NeuralODE(field, solver, order=3, backend=backend, **options)
    t = span(2.0, 9)
    z = model.trajectory(torch.cat([x0, v0, a0], dim=-1), t)
    assert z.shape == (9, 2, 6) and field.widths == {6}  # the field sees the whole state, as in torchdyn
    tt = t[:, None, None]
    x = x0 + v0 * tt + a0 * tt**2 / 2 + c * tt**3 / 6
    v = v0 + a0 * tt + c * tt**2 / 2
    a = a0 + c * tt
    torch.testing.assert_close(z, torch.cat([x, v, a], dim=-1), atol=1e-9, rtol=0)


def test_order4_matches_the_damped_oscillation_of_x4_equals_minus_4x() -> None:
    # r = -1 + i has r^4 = -4, so x = e^{rt} solves x'''' = -4x; block k of the state is r^k e^{rt}. The two
    # components are its real part e^{-t} cos t and its imaginary part e^{-t} sin t.
    r = complex(-1.0, 1.0)
    z0 = torch.tensor([[v for k in range(4) for v in ((r**k).real, (r**k).imag)]], dtype=F64)
    assert z0.tolist() == [[1.0, 0.0, -1.0, 1.0, 0.0, -2.0, 2.0, 2.0]]
    t = span(3.0, 13)
    z = NeuralODE(MinusFourX(), order=4, **TIGHT).trajectory(z0, t)[:, 0]
    exact = [r**k * complex(math.cos(s), math.sin(s)) * math.exp(-s) for s in t.tolist() for k in range(4)]
    expected = torch.tensor([[v for e in exact[4 * i: 4 * i + 4] for v in (e.real, e.imag)] for i in range(len(t))],
                            dtype=F64)
    torch.testing.assert_close(z, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(z[:, 0], torch.exp(-t) * torch.cos(t), atol=1e-8, rtol=0)


def test_order3_passes_t_to_the_field() -> None:
    # x''' = cos t from rest: x'' = sin t, x' = 1 - cos t, x = t - sin t.
    model = NeuralODE(lambda t, z: torch.cos(t).expand(*z.shape[:-1], 1), order=3, **TIGHT)
    t = span(4.0, 9)
    z = model.trajectory(torch.zeros(1, 3, dtype=F64), t)[:, 0]
    expected = torch.stack([t - torch.sin(t), 1 - torch.cos(t), torch.sin(t)], dim=-1)
    torch.testing.assert_close(z, expected, atol=1e-8, rtol=0)


def test_order3_with_depthcat_inside_the_field() -> None:
    torch.manual_seed(0)
    field = nn.Sequential(DepthCat(1), nn.Linear(3 * 2 + 1, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    model = NeuralODE(field, order=3, solver="rk4", step_size=0.1)
    z = model.trajectory(torch.zeros(4, 6, dtype=F64), span(1.0, 3))
    assert z.shape == (3, 4, 6) and torch.isfinite(z).all()
    assert not torch.equal(z[-1, :, 4:], torch.zeros(4, 2, dtype=F64))  # the field (it sees t) moved the top block


def test_integral_loss_keeps_its_cost_column_outside_the_blocks() -> None:
    # State [cost, x, x', x''] with x''' = c and running cost x: cost(T) = x0 T + v0 T^2/2 + a0 T^3/6 + c T^4/24.
    field = ConstantJerk(torch.tensor([0.6], dtype=F64))
    model = NeuralODE(field, "rk4", order=3, step_size=0.25, integral_loss=lambda t, z: z[:, :1])
    x0, v0, a0, T = 1.0, -0.5, 2.0, 1.5
    z = model.trajectory(torch.tensor([[0.0, x0, v0, a0]], dtype=F64), span(T, 2))
    expected = x0 * T + v0 * T**2 / 2 + a0 * T**3 / 6 + 0.6 * T**4 / 24
    torch.testing.assert_close(z[-1, 0, 0], torch.tensor(expected, dtype=F64), atol=1e-12, rtol=0)
    assert field.widths == {3}  # the blocks, without the cost column
    with pytest.raises(ValueError, match=r"order=3 needs x = .*after integral_loss's cost column\), got shape \(1, 3"):
        model(torch.zeros(1, 3, dtype=F64))


# --- the same model as the hand-written first-order system ------------------------------------------------------


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_order_k_is_exactly_its_hand_written_first_order_system(order: int) -> None:
    torch.manual_seed(order)
    n, field = 2, TimeMLP(order, 2)
    z0, t = torch.randn(3, order * n, dtype=F64), span(1.0, 6)
    higher = NeuralODE(field, "tsit5", order=order, atol=1e-8, rtol=1e-8)
    first = NeuralODE(FirstOrderForm(field, order), "tsit5", atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(higher.trajectory(z0, t), first.trajectory(z0, t), atol=0, rtol=0)
    assert higher.stats.nfe_forward == first.stats.nfe_forward


def test_vf_returns_the_full_first_order_derivative_and_counts() -> None:
    c = torch.tensor([7.0], dtype=F64)
    model = NeuralODE(ConstantJerk(c), "rk4", order=3, step_size=0.25)
    z = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    torch.testing.assert_close(model.vf(0.0, z), torch.tensor([[2.0, 3.0, 7.0], [5.0, 6.0, 7.0]], dtype=F64))
    assert isinstance(model.vf, VectorField) and isinstance(model.vf.vf, ConstantJerk) and model.vf.nfe == 1
    model.vf.nfe = 0
    model(z, span(1.0, 2))
    assert model.stats.nfe_forward == model.vf.nfe == 16 and model.stats.steps_forward == 4


# --- orders 1 and 2 are unchanged -------------------------------------------------------------------------------


def test_order1_is_the_plain_field_with_any_state_width() -> None:
    model = NeuralODE(lambda x: -x, order=1, **TIGHT)
    assert type(model.vf) is VectorField and model.order == 1 and MIN_ORDER == 1
    x0, t = torch.tensor([[1.0, -2.0, 3.0]], dtype=F64), span(1.0, 5)  # an odd width is fine at order 1
    torch.testing.assert_close(model.trajectory(x0, t), x0 * torch.exp(-t)[:, None, None], atol=1e-9, rtol=0)


def test_order2_harmonic_oscillator_and_its_messages_are_unchanged() -> None:
    model = NeuralODE(lambda z: -z[..., :1], order=2, **TIGHT)
    t = span(2 * math.pi, 9)
    z = model.trajectory(torch.tensor([[1.0, 0.0]], dtype=F64), t)[:, 0]
    torch.testing.assert_close(z, torch.stack([torch.cos(t), -torch.sin(t)], dim=-1), atol=1e-8, rtol=0)
    odd = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError) as caught:
        model(odd)
    assert str(caught.value) == ("order=2 needs x = [position, velocity] concatenated on the last dim (even size 2n), "
                                 "got shape (2, 3)")
    with pytest.raises(ValueError) as caught:
        model.vf(0.0, odd)
    assert str(caught.value) == ("order=2 needs a state [position, velocity] with an even last dimension, "
                                 "got shape (2, 3)")
    with pytest.raises(ValueError) as caught:
        NeuralODE(lambda z: -z, order=2)(torch.ones(2, 2, dtype=F64))
    assert str(caught.value) == ("with order=2 the vector field must return the acceleration shaped like the "
                                 "velocity (2, 1) (half the state's last dimension), got (2, 2)")


# --- gradients ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint", "interpolated_adjoint"])
def test_order3_gradient_wrt_the_initial_state_is_exp_of_the_companion_matrix(sensitivity: str) -> None:
    # A linear field x''' = W z makes dz/dt = A z with A = [[0, I, 0], [0, 0, I], W]; d sum(g * z(T)) / dz0 =
    # exp(A T)^T g.
    torch.manual_seed(1)
    n = 2
    W = nn.Linear(3 * n, n, bias=False).double()
    with torch.no_grad():
        W.weight.mul_(0.5)
    eye, zero = torch.eye(n, dtype=F64), torch.zeros(n, n, dtype=F64)
    A = torch.cat([torch.cat([zero, eye, zero], 1), torch.cat([zero, zero, eye], 1), W.weight.detach()], 0)
    T, g = 1.2, torch.randn(1, 3 * n, dtype=F64)
    model = NeuralODE(W, order=3, sensitivity=sensitivity, **TIGHT, atol_adjoint=1e-10, rtol_adjoint=1e-10)
    z0 = torch.randn(1, 3 * n, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad((model.trajectory(z0, span(T, 2))[-1] * g).sum(), z0)
    torch.testing.assert_close(grad, g @ torch.linalg.matrix_exp(A * T), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("order", [3, 4])
def test_adjoint_and_autograd_gradients_agree(order: int) -> None:
    torch.manual_seed(0)
    net, n = mlp(order, 2), 2
    t = span(1.0, 5)
    z0 = torch.randn(3, order * n, dtype=F64)
    weights = torch.linspace(0.5, 2.0, len(t), dtype=F64)[:, None, None]
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        model = NeuralODE(net, order=order, sensitivity=sensitivity, **TIGHT, atol_adjoint=1e-10, rtol_adjoint=1e-10)
        x = z0.clone().requires_grad_(True)
        loss = (weights * model.trajectory(x, t).pow(2)).sum()
        grads[sensitivity] = torch.autograd.grad(loss, (x, *net.parameters()))
        if sensitivity == "adjoint":
            assert model.stats.nfe_backward > 0
    for auto, adj in zip(grads["autograd"], grads["adjoint"]):
        torch.testing.assert_close(adj, auto, atol=1e-7, rtol=1e-7)


# --- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "shown"), [(0, "0"), (-3, "-3"), (True, "True, a bool"), (2.0, "2.0, a float"),
                                              (2.5, "2.5, a float"), ("3", "'3', a str"), (None, "None, a NoneType")])
def test_an_order_that_is_not_an_integer_from_1_up_is_refused(order: object, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        NeuralODE(nn.Linear(2, 2), order=order)  # type: ignore[arg-type]
    assert str(caught.value) == f"order must be an integer >= 1, got {shown}"
    assert order not in ORDERS


def test_orders_holds_every_integer_from_one_up() -> None:
    assert all(k in ORDERS for k in (1, 2, 3, 10, 1000))
    assert all(k not in ORDERS for k in (0, -1, True, 3.0, "3"))
    model = NeuralODE(MinusFourX(), order=np.int64(4))
    assert model.order == 4 and type(model.order) is int and model.options()["order"] == 4


def test_a_state_whose_width_is_not_a_multiple_of_the_order_is_refused() -> None:
    model = NeuralODE(ConstantJerk(torch.ones(1, dtype=F64)), order=3)
    with pytest.raises(ValueError) as caught:
        model(torch.ones(2, 4, dtype=F64))
    assert str(caught.value) == ("order=3 needs x = [x, x', x''] concatenated on the last dim (size a multiple of 3, "
                                 "3n), got shape (2, 4)")
    with pytest.raises(ValueError, match=r"^order=3 needs a state \[x, x', x''\] with a last dimension divisible by 3, "
                                         r"got shape \(2, 4\)$"):
        model.vf(0.0, torch.ones(2, 4, dtype=F64))
    assert model.vf.nfe == 0
    with pytest.raises(ValueError, match=r"^order=6 needs x = \[x, x', x'', \.\.\., x\^\(5\)\] .*\(size a multiple "
                                         r"of 6, 6n\), got shape \(1, 8\)$"):
        NeuralODE(lambda z: z[..., :1], order=6)(torch.ones(1, 8, dtype=F64))


def test_a_field_that_returns_the_whole_state_is_refused_at_order_3() -> None:
    with pytest.raises(ValueError) as caught:
        NeuralODE(lambda z: -z, order=3)(torch.ones(2, 3, dtype=F64))
    assert str(caught.value) == ("with order=3 the vector field must return x''' shaped like x'' (2, 1) (a third of "
                                 "the state's last dimension), got (2, 3)")
    with pytest.raises(ValueError, match=r"must return x\^\(4\) shaped like x''' \(1, 1\) \(a quarter .* got \(1, 4\)"):
        NeuralODE(lambda z: -z, order=4)(torch.ones(1, 4, dtype=F64))


# --- checkpoints --------------------------------------------------------------------------------------------------


def test_an_order3_checkpoint_round_trips_to_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    model = NeuralODE(mlp(3, 2), "tsit5", order=3, sensitivity="adjoint", t_span=[0.0, 0.5, 1.0])
    path = save_checkpoint(tmp_path / "order3.pt", model, config={"kind": "node", "ode": model.options()})
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["ode"]["order"] == 3
    torch.manual_seed(1)  # other initial weights: the loaded ones must replace them
    rebuilt = load_weights(NeuralODE(mlp(3, 2), **checkpoint.config["ode"]), checkpoint.state_dict, source=path)
    assert rebuilt.order == 3 and rebuilt.options() == model.options()
    assert list(rebuilt.state_dict()) == list(model.state_dict()) == list(NeuralODE(mlp(3, 2)).state_dict())
    z0 = torch.randn(5, 6, dtype=F64)
    t_eval, trajectory = model(z0)
    t_rebuilt, trajectory_rebuilt = rebuilt(z0)
    assert torch.equal(t_rebuilt, t_eval) and torch.equal(trajectory_rebuilt, trajectory)
