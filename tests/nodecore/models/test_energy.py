"""Tests for nodecore.models.energy: each field against finite differences of its scalar and against the mechanics
it encodes (energy conservation, Euler-Lagrange solutions, energy decrease). Float64, fixed seeds."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nodecore.models import GNF, HNN, LNN, ConservativeLinearSNF, NeuralODE

F64 = torch.float64
TIGHT = 1e-10


def mlp(dim: int, out: int = 1, hidden: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, out)).double()


def finite_gradient(scalar: nn.Module, x: Tensor, step: float = 1e-6) -> Tensor:
    """Central differences of the per-sample scalar ``[B, D] -> [B, 1]``: ``[B, D]``."""
    grad = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.shape[1]):
            e = torch.zeros_like(x)
            e[:, i] = step
            grad[:, i] = (scalar(x + e) - scalar(x - e)).reshape(-1) / (2 * step)
    return grad


def solve(field: nn.Module, x0: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        return NeuralODE(field, atol=TIGHT, rtol=TIGHT).trajectory(x0, t)


class Quadratic(nn.Module):
    """``H = (q^2 + p^2) / 2`` per sample, ``[B, 2n] -> [B, 1]``."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(1, keepdim=True)


class Oscillator(nn.Module):
    """``L = q'^T M q' / 2 - q^T K q / 2 + c * sum(q^2 * q')``: the last term is the total derivative of
    ``c * sum(q^3) / 3``, so the motion is ``M q'' = -K q`` whatever ``c`` is."""

    def __init__(self, mass: Tensor, stiffness: Tensor, coupling: float = 0.0) -> None:
        super().__init__()
        self.mass, self.stiffness, self.coupling = mass, stiffness, coupling

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1] // 2
        q, v = x[:, :n], x[:, n:]
        kinetic = 0.5 * torch.einsum("bi,ij,bj->b", v, self.mass, v)
        potential = 0.5 * torch.einsum("bi,ij,bj->b", q, self.stiffness, q)
        return kinetic - potential + self.coupling * (q.pow(2) * v).sum(1)


class Sum(nn.Module):
    """``a(x) + 0.1 * b(x)`` with ``a`` returning ``[B]`` and ``b`` ``[B, 1]``."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) + 0.1 * self.b(x).squeeze(1)


def learned_lagrangian(dim: int, seed: int) -> Sum:
    """The unit oscillator plus a small learnable MLP term: ``∂²L/∂q'²`` stays well conditioned."""
    eye = torch.eye(dim, dtype=F64)
    return Sum(Oscillator(eye, eye), mlp(2 * dim, seed=seed))


def test_hnn_field_is_the_symplectic_gradient() -> None:
    torch.manual_seed(1)
    net, n = mlp(4), 2
    x = torch.randn(6, 2 * n, dtype=F64)
    grad = finite_gradient(net, x)
    torch.testing.assert_close(HNN(net)(x), torch.cat([grad[:, n:], -grad[:, :n]], 1), rtol=1e-7, atol=1e-8)


def test_hnn_of_the_harmonic_oscillator_rotates_phase_space() -> None:
    torch.manual_seed(2)
    x0 = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(HNN(Quadratic())(x0), torch.stack([x0[:, 1], -x0[:, 0]], 1))
    t = torch.linspace(0, 4, 9, dtype=F64)
    trajectory = solve(HNN(Quadratic()), x0, t)
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    exact = torch.stack([x0[:, 0] * c + x0[:, 1] * s, x0[:, 1] * c - x0[:, 0] * s], -1)
    torch.testing.assert_close(trajectory, exact, rtol=1e-8, atol=1e-8)


def test_hnn_conserves_its_learned_energy() -> None:
    torch.manual_seed(3)
    net = mlp(4, seed=4)
    trajectory = solve(HNN(net), torch.randn(8, 4, dtype=F64), torch.linspace(0, 5, 26, dtype=F64))
    with torch.no_grad():
        energy = net(trajectory.reshape(-1, 4)).reshape(26, 8)
    drift = (energy - energy[0]).abs().max()
    assert drift < 1e-6, float(drift)
    assert (trajectory[-1] - trajectory[0]).abs().max() > 0.1  # it did move


@pytest.mark.parametrize("model", [HNN, LNN, GNF])
def test_gradients_agree_across_sensitivities(model: type) -> None:
    """The adjoint differentiates the field's own autograd derivative (create_graph under enable_grad)."""
    torch.manual_seed(5)
    x0 = torch.randn(6, 2, dtype=F64)
    grads = []
    for sensitivity in ("autograd", "adjoint", "interpolated_adjoint"):
        net = learned_lagrangian(1, seed=6) if model is LNN else mlp(2, seed=6)
        ode = NeuralODE(model(net), atol=TIGHT, rtol=TIGHT, sensitivity=sensitivity, atol_adjoint=TIGHT,
                        rtol_adjoint=TIGHT)
        ode.trajectory(x0, torch.tensor([0.0, 1.0], dtype=F64))[-1].pow(2).sum().backward()
        grads.append(torch.cat([torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1)
                                for p in net.parameters()]))
    assert grads[0].abs().max() > 1e-3
    for other in grads[1:]:
        torch.testing.assert_close(other, grads[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("coupling", [0.0, 0.7])
def test_lnn_of_the_harmonic_oscillator(coupling: float) -> None:
    """``L = q'^2/2 - q^2/2`` (+ a total derivative): accelerations -q, the solution q0 cos t + v0 sin t."""
    torch.manual_seed(7)
    one = torch.eye(1, dtype=F64)
    lnn = LNN(Oscillator(one, one, coupling))
    x0 = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(lnn(x0), torch.stack([x0[:, 1], -x0[:, 0]], 1), rtol=1e-12, atol=1e-12)
    t = torch.linspace(0, 3, 7, dtype=F64)
    q = solve(lnn, x0, t)[..., 0]
    torch.testing.assert_close(q, x0[:, 0] * torch.cos(t)[:, None] + x0[:, 1] * torch.sin(t)[:, None],
                               rtol=1e-8, atol=1e-8)


def test_lnn_of_coupled_springs_solves_m_q_dd_equals_minus_k_q() -> None:
    torch.manual_seed(8)
    mass = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=F64)
    stiffness = torch.tensor([[3.0, -1.0], [-1.0, 2.0]], dtype=F64)
    x0 = torch.randn(4, 4, dtype=F64)
    out = LNN(Oscillator(mass, stiffness, 0.4))(x0)
    torch.testing.assert_close(out[:, :2], x0[:, 2:])
    torch.testing.assert_close(out[:, 2:], -x0[:, :2] @ torch.linalg.solve(mass, stiffness).T, rtol=1e-12,
                               atol=1e-12)


def test_lnn_matches_the_euler_lagrange_equations_of_a_learned_lagrangian() -> None:
    """Against per-sample Jacobians and Hessians from torch.autograd.functional (a well-conditioned q' part)."""
    torch.manual_seed(9)
    net = learned_lagrangian(2, seed=10)
    x = torch.randn(5, 4, dtype=F64)

    def lagrangian(row: Tensor) -> Tensor:
        return net(row[None]).sum()

    expected = []
    for row in x:
        g = torch.autograd.functional.jacobian(lagrangian, row)
        h = torch.autograd.functional.hessian(lagrangian, row)
        expected.append(torch.linalg.solve(h[2:, 2:], g[:2] - h[2:, :2] @ row[2:]))
    torch.testing.assert_close(LNN(net)(x)[:, 2:], torch.stack(expected), rtol=1e-10, atol=1e-10)


def test_gnf_is_the_negative_energy_gradient_and_descends_it() -> None:
    torch.manual_seed(11)
    energy = mlp(3, seed=12)
    x = torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(GNF(energy)(x), -finite_gradient(energy, x), rtol=1e-7, atol=1e-8)
    trajectory = solve(GNF(energy), x, torch.linspace(0, 2, 21, dtype=F64))
    with torch.no_grad():
        values = energy(trajectory.reshape(-1, 3)).reshape(21, 6)
    assert (values.diff(dim=0) <= 1e-12).all()
    assert (values[0] - values[-1]).min() > 1e-3


def test_conservative_snf_is_skew_and_conserves_its_energy() -> None:
    torch.manual_seed(13)
    energy, interconnection = mlp(3, seed=14), mlp(3, out=9, seed=15)
    snf = ConservativeLinearSNF(energy, interconnection)
    x = torch.randn(6, 3, dtype=F64)
    with torch.no_grad():
        m = interconnection(x).reshape(6, 3, 3)
    expected = torch.einsum("bjk,bj->bk", (m - m.transpose(1, 2)) / 2, finite_gradient(energy, x))
    torch.testing.assert_close(snf(x), expected, rtol=1e-7, atol=1e-8)
    trajectory = solve(snf, x, torch.linspace(0, 3, 16, dtype=F64))
    with torch.no_grad():
        values = energy(trajectory.reshape(-1, 3)).reshape(16, 6)
    assert (values - values[0]).abs().max() < 1e-6
    assert (trajectory[-1] - trajectory[0]).abs().max() > 0.05


@pytest.mark.parametrize("field", [HNN(Quadratic()), LNN(Oscillator(torch.eye(1, dtype=F64), torch.eye(1, dtype=F64))),
                                   GNF(Quadratic())], ids=["HNN", "LNN", "GNF"])
def test_outside_grad_mode_the_output_is_detached_and_the_input_untouched(field: nn.Module) -> None:
    x = torch.randn(3, 2, dtype=F64)
    with torch.no_grad():
        out = field(x)
    assert not out.requires_grad and not x.requires_grad
    torch.testing.assert_close(out, field(x).detach())


def test_bad_inputs_are_named() -> None:
    x = torch.randn(4, 3, dtype=F64)
    for model in (HNN, LNN):
        with pytest.raises(ValueError, match=r"state must be \[B, 2n\].*got \(4, 3\)"):
            model(Quadratic())(x)
        with pytest.raises(ValueError, match=r"one scalar per sample, shape \[4\] or \[4, 1\], got \(4, 2\)"):
            model(nn.Identity())(torch.randn(4, 2, dtype=F64))
        with pytest.raises(TypeError, match="must be an nn.Module or callable"):
            model("H")
    with pytest.raises(ValueError, match=r"state must be \[B, D\], got \(3,\)"):
        GNF(Quadratic())(torch.randn(3, dtype=F64))
    with pytest.raises(ValueError, match=r"energy must return one scalar per sample.*got \(4, 3\)"):
        GNF(nn.Identity())(x)
    with pytest.raises(ValueError, match=r"J must return \[4, 3, 3\] or \[4, 9\].*got \(4, 3\)"):
        ConservativeLinearSNF(Quadratic(), nn.Identity())(x)
