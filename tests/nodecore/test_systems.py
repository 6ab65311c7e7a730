"""Tests for nodecore.systems and second-order NeuralODEs: parameter recovery, hybrid physics + network, order=2.

Everything is float64 with fixed seeds. The two fitting tests state their tolerances next to the asserts; the
values they reach (measured on the CPU) are in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from nodecore.errors import NonFiniteError
from nodecore.fields import DepthCat, VectorField
from nodecore.neuralode import ORDERS, NeuralODE
from nodecore.systems import LOSSES, DampedPendulum, HybridField, LotkaVolterra, fit_trajectories

F64 = torch.float64
TIGHT = 1e-10
LV_TRUE = (1.1, 0.4, 0.4, 0.1)  # alpha, beta, gamma, delta
G_OVER_L, DAMPING = 4.0, 0.25  # theta'' = -(g/L) sin(theta) - c * omega


def exact(field: nn.Module, z0: Tensor, t: Tensor, *, order: int = 1) -> Tensor:
    """A reference solve: dopri5 at tolerance 1e-10, no gradients."""
    with torch.no_grad():
        return NeuralODE(field, order=order, atol=TIGHT, rtol=TIGHT).trajectory(z0, t)


def lotka_volterra_data(noise: float = 0.02, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Two trajectories over t in [0, 10] (about one period), with multiplicative Gaussian noise of std ``noise``."""
    t = torch.linspace(0.0, 10.0, 41, dtype=F64)
    x0 = torch.tensor([[10.0, 5.0], [5.0, 2.0]], dtype=F64)
    clean = exact(LotkaVolterra(*LV_TRUE, learnable=False).double(), x0, t)
    generator = torch.Generator().manual_seed(seed)
    return t, clean * (1 + noise * torch.randn(clean.shape, generator=generator, dtype=F64))


# --- parameter recovery -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_lotka_volterra_rates_are_recovered_from_noisy_observations() -> None:
    t, x_obs = lotka_volterra_data(noise=0.02)
    guess = (1.5, 0.3, 0.6, 0.13)  # +36%, -25%, +50%, +30%
    model = NeuralODE(LotkaVolterra(*guess).double(), solver="rk4", step_size=0.25)
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=20, line_search_fn="strong_wolfe")

    history = fit_trajectories(model, t, x_obs, epochs=2, optimizer=lbfgs)

    fitted = model.vf.vf.rates.detach()
    true = torch.tensor(LV_TRUE, dtype=F64)
    relative_error = ((fitted - true).abs() / true).tolist()
    # Tolerance: every rate within 5% of the truth (measured: 0.37%, 0.70%, 0.24%, 0.52%).
    assert max(relative_error) < 0.05, dict(zip(LotkaVolterra.NAMES, relative_error))
    assert len(history) == 2 and history[-1] < 1e-3 * history[0]
    assert (model.vf.vf.rates > 0).all()


def test_fit_trajectories_with_adam_lowers_the_loss_and_reports_every_epoch() -> None:
    t, x_obs = lotka_volterra_data(noise=0.0)
    t, x_obs = t[:9], x_obs[:9]  # t in [0, 2]: a cheap solve
    model = NeuralODE(LotkaVolterra(1.5, 0.3, 0.6, 0.13).double(), solver="rk4", step_size=0.25)
    seen: list[tuple[int, float]] = []

    history = fit_trajectories(model, t, x_obs, epochs=25, lr=0.05, callback=lambda e, v: seen.append((e, v)))

    assert len(history) == 25 and seen == list(enumerate(history))
    assert all(isinstance(v, float) for v in history)
    assert history[-1] < 0.1 * history[0]


@pytest.mark.parametrize("loss", LOSSES)
def test_fit_trajectories_losses(loss: str) -> None:
    t, x_obs = lotka_volterra_data(noise=0.0)
    t, x_obs = t[:5], x_obs[:5]
    model = NeuralODE(LotkaVolterra(1.5, 0.3, 0.6, 0.13).double(), solver="rk4", step_size=0.25)
    history = fit_trajectories(model, t, x_obs, epochs=5, lr=0.05, loss=loss)
    assert history[-1] < history[0]


def test_fit_trajectories_rejects_bad_arguments() -> None:
    t, x_obs = lotka_volterra_data(noise=0.0)
    model = NeuralODE(LotkaVolterra().double(), solver="rk4", step_size=0.25)
    with pytest.raises(ValueError, match="valid losses: mse, l1"):
        fit_trajectories(model, t, x_obs, epochs=1, loss="huber")  # type: ignore[arg-type]
    for epochs in (0, 1.5, True):
        with pytest.raises(ValueError, match="epochs"):
            fit_trajectories(model, t, x_obs, epochs=epochs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        fit_trajectories(model, t, x_obs, epochs=1, lr=0.0)
    with pytest.raises(ValueError, match="x_obs must be"):
        fit_trajectories(model, t[:-1], x_obs, epochs=1)
    with pytest.raises(ValueError, match="t_obs must be 1-D"):
        fit_trajectories(model, t[:1], x_obs[:1], epochs=1)
    frozen = NeuralODE(LotkaVolterra(learnable=False).double(), solver="rk4", step_size=0.25)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit_trajectories(frozen, t, x_obs, epochs=1)


# --- physics plus a learned correction ----------------------------------------------------------------------


def correction_mlp(seed: int = 0) -> nn.Module:
    """``[theta, omega] -> a`` correction, starting at zero so the fit starts from the known physics."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net.double()


def energy(z: Tensor) -> Tensor:
    theta, omega = z[..., 0], z[..., 1]
    return 0.5 * omega**2 + G_OVER_L * (1 - torch.cos(theta))


@pytest.mark.slow
def test_hybrid_pendulum_learns_the_damping_it_was_not_told() -> None:
    true = DampedPendulum(G_OVER_L, DAMPING).double()
    t = torch.linspace(0.0, 8.0, 41, dtype=F64)
    z0 = torch.tensor([[1.5, 0.0], [-0.5, 2.0], [0.3, -2.5], [-1.0, -1.0]], dtype=F64)
    generator = torch.Generator().manual_seed(1)
    z_obs = exact(true, z0, t, order=2)
    z_obs = z_obs + 0.01 * torch.randn(z_obs.shape, generator=generator, dtype=F64)  # noise std 0.01

    # Known: gravity only. Unknown: a small MLP, integrated as a second-order system.
    field = HybridField(DampedPendulum(G_OVER_L, damping=0.0).double(), correction_mlp())
    model = NeuralODE(field, order=2, solver="rk4", step_size=0.2)
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=50, line_search_fn="strong_wolfe")
    fit_trajectories(model, t, z_obs, epochs=2, optimizer=lbfgs)

    # The correction against -c * omega on a (theta, omega) grid over the observed range: the states with no
    # more energy than the most energetic initial state (damping only removes energy).
    theta, omega = torch.meshgrid(
        torch.linspace(-2.0, 2.0, 41, dtype=F64), torch.linspace(-4.0, 4.0, 81, dtype=F64), indexing="ij"
    )
    grid = torch.stack([theta.flatten(), omega.flatten()], dim=-1)
    grid = grid[energy(grid) <= energy(z0).max()]
    with torch.no_grad():
        learned = field.correction(0.0, grid).squeeze(-1)
    target = -DAMPING * grid[:, 1]
    relative_error = float((learned - target).norm() / target.norm())
    assert len(grid) > 1000
    assert relative_error < 0.10  # measured: 0.061

    # Held-out initial conditions: the hybrid model predicts them, gravity alone does not.
    z_test = torch.tensor([[1.0, 1.0], [-1.2, 0.5], [0.0, -2.0]], dtype=F64)
    reference = exact(true, z_test, t, order=2)
    with torch.no_grad():
        predicted = model.trajectory(z_test, t)
        undamped = NeuralODE(DampedPendulum(G_OVER_L).double(), order=2, solver="rk4", step_size=0.2).trajectory(
            z_test, t
        )
    error = (predicted - reference).abs().max()
    assert error < 0.05  # measured: 0.012 rad or rad/s, on amplitudes up to 2.1
    assert error < 0.1 * (undamped - reference).abs().max()


# --- second-order NeuralODE ---------------------------------------------------------------------------------


class Spring(nn.Module):
    """``x'' = -k x`` with a learnable stiffness, for a state ``[x, v]``."""

    def __init__(self, k: float = 1.0) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, z: Tensor) -> Tensor:
        return -self.k * z[..., : z.shape[-1] // 2]


class ForcedSpring(nn.Module):
    """``x'' = -x + cos(2t)``: depth-variant, to check that ``t`` reaches a second-order field."""

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return -z[..., :1] + torch.cos(2 * t)


def test_order2_harmonic_oscillator_matches_cos_and_sin() -> None:
    t = torch.linspace(0.0, 2 * math.pi, 17, dtype=F64)
    z0 = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=F64)  # x = (1, 0), v = (0, 1)
    model = NeuralODE(Spring(), order=2, atol=TIGHT, rtol=TIGHT)
    z = model.trajectory(z0, t)[:, 0]
    expected = torch.stack([torch.cos(t), torch.sin(t), -torch.sin(t), torch.cos(t)], dim=-1)
    torch.testing.assert_close(z, expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_order2_passes_t_to_a_depth_variant_field(solver: str) -> None:
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    options = dict(step_size=0.005) if solver == "rk4" else dict(atol=TIGHT, rtol=TIGHT)
    model = NeuralODE(ForcedSpring(), order=2, solver=solver, **options)
    x = model.trajectory(torch.tensor([[1.0, 0.0]], dtype=F64), t)[:, 0, 0]
    # x(0) = 1, x'(0) = 0: x = (4/3) cos t - (1/3) cos 2t.
    torch.testing.assert_close(x, 4 / 3 * torch.cos(t) - torch.cos(2 * t) / 3, atol=1e-8, rtol=0)


def test_order2_with_depthcat_inside_the_field() -> None:
    torch.manual_seed(0)
    field = nn.Sequential(DepthCat(1), nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    model = NeuralODE(field, order=2, solver="rk4", step_size=0.1)
    assert model.trajectory(torch.zeros(3, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)).shape == (2, 3, 2)


def test_order2_vf_returns_velocity_and_acceleration_and_counts() -> None:
    model = NeuralODE(Spring(k=2.0), order=2, solver="rk4", step_size=0.25)
    z = torch.tensor([[1.0, -3.0], [0.5, 4.0]], dtype=F64)
    torch.testing.assert_close(model.vf(0.0, z), torch.tensor([[-3.0, -2.0], [4.0, -1.0]], dtype=F64))
    assert isinstance(model.vf, VectorField) and isinstance(model.vf.vf, Spring)
    assert model.vf.nfe == 1
    model.vf.nfe = 0
    model(z, torch.tensor([0.0, 1.0], dtype=F64))
    assert model.stats.nfe_forward == model.vf.nfe == 16  # 4 steps x 4 evaluations
    assert model.stats.steps_forward == 4


@pytest.mark.parametrize("loss", ["last", "all"])
def test_order2_adjoint_and_autograd_gradients_agree(loss: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    z0 = torch.randn(3, 4, dtype=F64)
    weights = torch.linspace(0.5, 2.0, len(t), dtype=F64)[:, None, None]
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        model = NeuralODE(net, order=2, sensitivity=sensitivity, atol=TIGHT, rtol=TIGHT,
                          atol_adjoint=TIGHT, rtol_adjoint=TIGHT)
        x = z0.clone().requires_grad_(True)
        z = model.trajectory(x, t)
        value = z[-1].pow(2).sum() if loss == "last" else (weights * z.pow(2)).sum()
        grads[sensitivity] = torch.autograd.grad(value, (x, *net.parameters()))
        if sensitivity == "adjoint":
            assert model.stats.nfe_backward > 0
    for auto, adj in zip(grads["autograd"], grads["adjoint"]):
        torch.testing.assert_close(adj, auto, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("order", [0, -1, True, 2.5, "2"])
def test_an_order_that_is_not_a_positive_integer_is_rejected(order: object) -> None:
    assert order not in ORDERS and 3 in ORDERS
    with pytest.raises((ValueError, TypeError), match="order must be an integer >= 1"):
        NeuralODE(Spring(), order=order)  # type: ignore[arg-type]


def test_order2_rejects_an_odd_state_dimension() -> None:
    model = NeuralODE(Spring(), order=2)
    z = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"order=2 needs x = \[position, velocity\].*\(2, 3\)"):
        model(z)
    with pytest.raises(ValueError, match="even last dimension"):
        model.vf(0.0, z)
    assert model.vf.nfe == 0


def test_order2_rejects_a_field_that_returns_the_whole_state() -> None:
    model = NeuralODE(lambda z: -z, order=2)
    with pytest.raises(ValueError, match=r"acceleration shaped like the velocity \(2, 1\).*got \(2, 2\)"):
        model(torch.ones(2, 2, dtype=F64))


def test_order2_blow_up_is_reported() -> None:
    model = NeuralODE(lambda z: z[..., :1] ** 3, order=2, solver="euler", step_size=0.5)
    with pytest.raises(NonFiniteError):
        model(torch.full((1, 2), 10.0, dtype=F64), torch.linspace(0.0, 10.0, 21, dtype=F64))


def test_order_is_in_the_options_and_rebuilds_the_model() -> None:
    model = NeuralODE(Spring(), order=2, solver="rk4", step_size=0.1)
    options = model.options()
    assert options["order"] == 2 and NeuralODE(Spring()).options()["order"] == 1
    rebuilt = NeuralODE(Spring(k=5.0), **options)
    assert rebuilt.order == 2 and rebuilt.options() == options
    rebuilt.load_state_dict(model.state_dict())  # same weight names whatever the order
    assert list(model.state_dict()) == list(NeuralODE(Spring()).state_dict()) == ["vf.vf.k"]
    z0, t = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    torch.testing.assert_close(rebuilt.trajectory(z0, t), model.trajectory(z0, t))


# --- the building blocks --------------------------------------------------------------------------------


def test_lotka_volterra_field_and_positive_rates() -> None:
    field = LotkaVolterra(*LV_TRUE).double()
    torch.testing.assert_close(field.rates, torch.tensor(LV_TRUE, dtype=F64))
    assert field.rates_dict() == pytest.approx(dict(zip(LotkaVolterra.NAMES, LV_TRUE)))
    x = torch.tensor([[4.0, 2.0], [1.0, 3.0]], dtype=F64)
    a, b, c, d = LV_TRUE
    expected = torch.stack([a * x[:, 0] - b * x[:, 0] * x[:, 1], d * x[:, 0] * x[:, 1] - c * x[:, 1]], dim=-1)
    torch.testing.assert_close(field(x), expected)
    with torch.no_grad():
        field.log_rates.fill_(-50.0)  # any value of the parameter is a positive rate
    assert (field.rates > 0).all()
    assert [n for n, _ in field.named_parameters()] == ["log_rates"]
    assert list(LotkaVolterra(learnable=False).parameters()) == []
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            LotkaVolterra(beta=bad)
    with pytest.raises(ValueError, match=r"\[prey, predator\]"):
        field(torch.ones(2, 3, dtype=F64))


def test_damped_pendulum_acceleration() -> None:
    field = DampedPendulum(G_OVER_L, DAMPING).double()
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=F64)  # two pendulums: theta = (0.5, -1), omega = (2, 0)
    expected = -G_OVER_L * torch.sin(z[:, :2]) - DAMPING * z[:, 2:]
    torch.testing.assert_close(field(z), expected)
    assert list(field.parameters()) == [] and set(field.state_dict()) == {"g_over_l", "damping"}
    assert {n for n, _ in DampedPendulum(learnable=True).named_parameters()} == {"g_over_l", "damping"}
    with pytest.raises(ValueError, match="g_over_l"):
        DampedPendulum(0.0)
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        DampedPendulum(1.0, -0.1)
    with pytest.raises(ValueError, match="theta, omega"):
        field(torch.ones(1, 3, dtype=F64))


def test_hybrid_field_adds_known_and_unknown_whatever_they_take() -> None:
    known = lambda z: -2 * z[..., :1]  # noqa: E731 - a plain callable: physics with no parameters
    unknown = ForcedSpring()  # takes (t, z)
    field = HybridField(known, unknown)
    z = torch.tensor([[1.0, 2.0]], dtype=F64)
    t = torch.tensor(0.5, dtype=F64)
    torch.testing.assert_close(field(t, z), -2 * z[..., :1] + (-z[..., :1] + torch.cos(2 * t)))
    torch.testing.assert_close(field.physics(t, z), -2 * z[..., :1])
    torch.testing.assert_close(field.correction(0.5, z), unknown(t, z))  # a Python t is converted
    assert VectorField(field).takes_time
    with pytest.raises(TypeError, match="unknown must be an nn.Module"):
        HybridField(known, lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="known must be"):
        HybridField(3.0, unknown)  # type: ignore[arg-type]


def test_hybrid_field_trains_only_what_is_not_frozen() -> None:
    physics = DampedPendulum(G_OVER_L, learnable=True).double().requires_grad_(False)
    field = HybridField(physics, correction_mlp())
    assert {n for n, p in field.named_parameters() if p.requires_grad} == {
        "unknown.0.weight", "unknown.0.bias", "unknown.2.weight", "unknown.2.bias"
    }
