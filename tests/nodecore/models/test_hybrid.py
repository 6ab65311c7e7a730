"""HybridNeuralDE (torchdyn's ``models.hybrid``): jump at each observation, then flow, checked against hand-written
loops and closed forms.

With an identity flow it is the plain RNN/GRU/LSTM cell run over the sequence; a linear ODE flow with an additive
jump gives ``Y[t] = sum_{s <= t} exp(A tau)^(t - s + 1) x_s``; ``reverse`` reads the flipped sequence; gradients
match finite differences, and the adjoint flow's match autograd's.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor, nn

from nodecore.errors import InputShapeError
from nodecore.models.hybrid import HybridNeuralDE
from nodecore.neuralode import NeuralODE

F64 = torch.float64
T, B, F, H = 5, 3, 2, 4


def sequence(dtype: torch.dtype = F64, seed: int = 0) -> Tensor:
    return torch.randn(T, B, F, dtype=dtype, generator=torch.Generator().manual_seed(seed))


class AddJump(nn.Module):
    """``h + W x``: an additive jump with a fixed linear read-in (a custom jump: ``(x_t, h) -> h`` and hidden_size)."""

    def __init__(self, read_in: Tensor) -> None:
        super().__init__()
        self.hidden_size = read_in.shape[0]
        self.register_buffer("read_in", read_in)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return h + x @ self.read_in.T


class LinearField(nn.Module):
    """``dh/dt = h A^T``."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return h @ self.a.T


class LastState(nn.Module):
    """A flow's trajectory ``[S, B, H]`` -> its last state, the way torchdyn code wraps a NeuralODE."""

    def forward(self, trajectory: Tensor) -> Tensor:
        return trajectory[-1]


def test_the_signature_is_torchdyns() -> None:
    parameters = inspect.signature(HybridNeuralDE).parameters
    assert list(parameters) == ["flow", "jump", "out", "last_output", "reverse"]
    assert parameters["last_output"].default is True and parameters["reverse"].default is False
    assert list(inspect.signature(HybridNeuralDE.forward).parameters) == ["self", "x"]


@pytest.mark.parametrize("cell", [nn.RNNCell, nn.GRUCell])
@pytest.mark.parametrize("last_output", [True, False])
def test_an_identity_flow_is_the_plain_cell_over_the_sequence(cell: type[nn.Module], last_output: bool) -> None:
    torch.manual_seed(0)
    jump, out = cell(F, H).double(), nn.Linear(H, 2).double()
    x = sequence()
    h, expected = torch.zeros(B, H, dtype=F64), []
    for x_t in x:
        h = jump(x_t, h)
        expected.append(out(h))
    y = HybridNeuralDE(nn.Identity(), jump, out, last_output=last_output)(x)
    # Round-off only: the class applies `out` to the stacked sequence at once, whose matmul may round differently.
    torch.testing.assert_close(y, expected[-1] if last_output else torch.stack(expected), rtol=1e-12, atol=1e-14)


def test_an_lstm_jump_carries_its_cell_state_and_only_h_flows() -> None:
    torch.manual_seed(1)
    jump, flow = nn.LSTMCell(F, H).double(), nn.Sequential(nn.Linear(H, H), nn.Tanh()).double()
    x = sequence()
    h = c = torch.zeros(B, H, dtype=F64)
    expected = []
    for x_t in x:
        h, c = jump(x_t, (h, c))
        h = flow(h)
        expected.append(h)
    y = HybridNeuralDE(flow, jump, nn.Identity(), last_output=False)(x)
    torch.testing.assert_close(y, torch.stack(expected), rtol=0, atol=0)


def test_an_lstm_subclass_is_called_as_an_lstm() -> None:
    class MyLSTM(nn.LSTMCell):
        pass

    torch.manual_seed(2)
    mine, plain = MyLSTM(F, H).double(), nn.LSTMCell(F, H).double()
    plain.load_state_dict(mine.state_dict())
    x = sequence()
    torch.testing.assert_close(HybridNeuralDE(nn.Identity(), mine, nn.Identity())(x),
                               HybridNeuralDE(nn.Identity(), plain, nn.Identity())(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["trajectory", "t_eval_pair", "sequential"])
def test_a_linear_ode_flow_with_an_additive_jump_is_the_matrix_exponential_sum(wrap: str) -> None:
    """``h_t = exp(A tau) (h_{t-1} + W x_t)`` from ``h = 0``, so ``Y[t] = sum_{s <= t} exp(A tau)^(t - s + 1) W x_s``."""
    gen = torch.Generator().manual_seed(3)
    a = 0.5 * torch.randn(H, H, dtype=F64, generator=gen)
    read_in = torch.randn(H, F, dtype=F64, generator=gen)
    tau = 0.7
    node = NeuralODE(LinearField(a), solver="dopri5", atol=1e-11, rtol=1e-11, return_t_eval=wrap == "t_eval_pair",
                     t_span=torch.tensor([0.0, 0.35, tau], dtype=F64))
    flow = nn.Sequential(node, LastState()) if wrap == "sequential" else node
    x = sequence()
    y = HybridNeuralDE(flow, AddJump(read_in), nn.Identity(), last_output=False)(x)
    step = torch.linalg.matrix_exp(a * tau)
    h, expected = torch.zeros(B, H, dtype=F64), []
    for x_t in x:
        h = (h + x_t @ read_in.T) @ step.T
        expected.append(h)
    torch.testing.assert_close(y, torch.stack(expected), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("last_output", [True, False])
def test_reverse_reads_the_flipped_sequence_and_returns_reading_order(last_output: bool) -> None:
    torch.manual_seed(4)
    jump, flow, out = nn.GRUCell(F, H).double(), nn.Linear(H, H).double(), nn.Linear(H, 1).double()
    x = sequence()
    backwards = HybridNeuralDE(flow, jump, out, last_output=last_output, reverse=True)(x)
    forwards = HybridNeuralDE(flow, jump, out, last_output=last_output)(x.flip(0))
    torch.testing.assert_close(backwards, forwards, rtol=0, atol=0)
    assert not torch.allclose(backwards, HybridNeuralDE(flow, jump, out, last_output=last_output)(x))


def test_out_sees_the_whole_stack_of_latents() -> None:
    """torchdyn applies ``out`` to ``Y`` ``[T, B, H]`` and then takes the last entry: an ``out`` that mixes time sees
    every step even with ``last_output``."""
    torch.manual_seed(5)
    jump = nn.RNNCell(F, H).double()
    x = sequence()
    latents = HybridNeuralDE(nn.Identity(), jump, nn.Identity(), last_output=False)(x)
    cumulative = HybridNeuralDE(nn.Identity(), jump, lambda y: y.cumsum(0))(x)
    torch.testing.assert_close(cumulative, latents.sum(0), rtol=1e-12, atol=1e-12)


def test_the_latent_takes_the_inputs_dtype_and_device() -> None:
    for dtype in (torch.float32, F64):
        jump = nn.RNNCell(F, H).to(dtype)
        y = HybridNeuralDE(nn.Identity(), jump, nn.Identity())(sequence(dtype))
        assert y.dtype == dtype and y.shape == (B, H)


def test_gradients_match_finite_differences() -> None:
    """Through the jumps and a fixed-step ODE flow, for the input sequence and every parameter."""
    torch.manual_seed(6)
    field = nn.Sequential(nn.Linear(H, H), nn.Tanh()).double()
    flow = NeuralODE(field, solver="rk4", return_t_eval=False, t_span=torch.linspace(0, 0.5, 4, dtype=F64))
    model = HybridNeuralDE(flow, nn.GRUCell(F, H).double(), nn.Linear(H, 1).double(), last_output=False)
    x = sequence().requires_grad_()
    params = tuple(model.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: torch.func.functional_call(
        model, dict(zip((n for n, _ in model.named_parameters()), p, strict=True)), (x,)), (x, *params))


def test_the_adjoint_flow_gives_autograds_gradients() -> None:
    torch.manual_seed(7)
    field = nn.Sequential(nn.Linear(H, H), nn.Tanh()).double()
    jump, out = nn.RNNCell(F, H).double(), nn.Linear(H, 1).double()
    x = sequence()
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        flow = NeuralODE(field, solver="dopri5", sensitivity=sensitivity, atol=1e-10, rtol=1e-10, atol_adjoint=1e-10,
                         rtol_adjoint=1e-10, return_t_eval=False)
        model = HybridNeuralDE(flow, jump, out)
        model.zero_grad()
        model(x).square().sum().backward()
        grads[sensitivity] = [p.grad.clone() for p in model.parameters()]
    for auto, adjoint in zip(grads["autograd"], grads["adjoint"], strict=True):
        torch.testing.assert_close(adjoint, auto, rtol=1e-6, atol=1e-8)


def test_it_trains() -> None:
    """An ODE-GRU learns to output the running mean of its inputs (a task the flow must not spoil)."""
    torch.manual_seed(8)
    field = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    model = HybridNeuralDE(NeuralODE(field, solver="rk4", return_t_eval=False, t_span=torch.linspace(0, 0.2, 2)),
                           nn.GRUCell(1, 8), nn.Linear(8, 1), last_output=False)
    x = torch.randn(6, 32, 1)
    target = x.cumsum(0) / torch.arange(1, 7).view(6, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = (model(x) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_bad_parts_and_inputs_fail_by_name() -> None:
    jump = nn.RNNCell(F, H)
    with pytest.raises(TypeError, match="flow must be a module or callable, got int"):
        HybridNeuralDE(3, jump, nn.Identity())
    with pytest.raises(TypeError, match="jump must have a positive integer hidden_size .* got None"):
        HybridNeuralDE(nn.Identity(), nn.Linear(F, H), nn.Identity())
    with pytest.raises(ValueError, match="unknown reverse 1"):
        HybridNeuralDE(nn.Identity(), jump, nn.Identity(), reverse=1)
    model = HybridNeuralDE(nn.Identity(), jump, nn.Identity())
    for bad, shape in ((torch.randn(T, F), r"shape \[5, 2\]"), (torch.randn(0, B, F), r"shape \[0, 3, 2\]"),
                       ([[1.0]], "a list")):
        with pytest.raises(InputShapeError, match=rf"\[T, B, features\] with T, B >= 1 \(time first\), got {shape}"):
            model(bad)
    with pytest.raises(TypeError, match=r"flow must map the latent of shape \[3, 4\] to the same shape .* got shape "
                                        r"\[3, 5\]"):
        HybridNeuralDE(nn.Linear(H, 5), jump, nn.Identity())(torch.randn(T, B, F))
    with pytest.raises(TypeError, match="got a dict"):
        HybridNeuralDE(lambda h: {"h": h}, jump, nn.Identity())(torch.randn(T, B, F))
