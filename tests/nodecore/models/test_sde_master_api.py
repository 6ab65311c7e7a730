"""NeuralSDE in torchdyn master's call style, and LatentNeuralSDE.

Master's style: ``NeuralSDE(f, g, solver=..., t_span=..., bm=...)`` by keyword, ``model(x, t_span)`` returning
``(t_eval, trajectory)``, as torchdyn's m1e tutorial uses it. Checked against mathematics: zero diffusion gives
the ODE's solution at every point of ``t_span``; the Ornstein–Uhlenbeck process has its known mean and variance.
The latent SDE's KL term is checked where it has a closed form (a constant ``u = (f - h) / g``), and against the
deterministic case (zero diffusion).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchsde
from torch import Tensor, nn
from torch.distributions import Laplace, Normal, kl_divergence

import nodecore.core
import nodecore.models
from nodecore.models import LatentNeuralSDE, NeuralSDE
from nodecore.neuralode import NeuralODE
from tests.nodecore.models._fields import Constant, Linear

F64 = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)


def exact_linear(x0: Tensor, t_span: Tensor) -> Tensor:
    """``x(t) = x0 expm(A t)^T`` at every point of ``t_span``: ``[T, B, D]``."""
    return torch.stack([x0 @ torch.linalg.matrix_exp(A * t).T for t in t_span])


# --------------------------------------------------------------------------------------------------
# torchdyn master's call style
# --------------------------------------------------------------------------------------------------


def test_the_m1e_tutorial_cells_run_and_train() -> None:
    """Cells 8-9 of torchdyn master's m1e_neural_sde_cookbook, then one step of its Learner's training_step."""
    torch.manual_seed(0)
    X = torch.randn(64, 2)
    y = (X[:, 0] > 0).long()
    device = torch.device("cpu")
    # --- cell 8 ---
    t_span = torch.linspace(0, 0.1, 100).to(device)
    size = X.shape
    bm = torchsde.BrownianInterval(t0=t_span[0], t1=t_span[-1], size=size, device=device,
                                   levy_area_approximation="space-time")
    # --- cell 9 ---
    f = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))
    g = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))
    model = NeuralSDE(f, g, solver="euler", noise_type="diagonal", sde_type="ito", sensitivity="autograd",
                      t_span=t_span, bm=bm).to(device)
    # --- the Learner's training_step ---
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    t_eval, y_hat = model(X, t_span)
    trajectory = y_hat
    y_hat = y_hat[-1]
    loss = nn.CrossEntropyLoss()(y_hat, y)
    loss.backward()
    with torch.no_grad():  # the constructor's bm drives every call, as in master: the same path, the same output
        torch.testing.assert_close(model(X)[1], trajectory, atol=0, rtol=0)
    optimizer.step()

    assert torch.equal(t_eval, t_span) and trajectory.shape == (100, 64, 2) and y_hat.shape == (64, 2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.t_span is model.s_span and model.bm is bm and model.return_t_eval is True
    assert nodecore.core.NeuralSDE is NeuralSDE and nodecore.models.NeuralSDE is NeuralSDE


def test_return_t_eval_false_gives_the_trajectory_and_chains_in_sequential() -> None:
    x0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=F64)
    t_span = torch.linspace(0, 1, 4, dtype=F64)
    zero = Constant(torch.zeros(2, dtype=F64))
    model = NeuralSDE(Linear(A), zero, solver="euler", t_span=t_span, return_t_eval=False, ds=1e-3)
    trajectory = model(x0)
    assert trajectory.shape == (4, 2, 2)
    chained = nn.Sequential(model, nn.Flatten(0, 1))
    assert chained(x0).shape == (8, 2)


def test_t_span_and_save_at_are_honoured_and_zero_diffusion_is_the_ode() -> None:
    x0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=F64)
    built = torch.tensor([0.0, 0.3, 1.1], dtype=F64)
    model = NeuralSDE(Linear(A), Constant(torch.zeros(2, dtype=F64)), t_span=built, ds=0.01)  # srk, 1.0.6's
    t_eval, trajectory = model(x0)
    torch.testing.assert_close(t_eval, built)
    torch.testing.assert_close(trajectory, exact_linear(x0, built), atol=1e-6, rtol=0)

    other = torch.tensor([0.5, 0.75, 1.0, 2.0], dtype=F64)  # forward's t_span takes precedence
    t_eval, trajectory = model(x0, other)
    ode = NeuralODE(Linear(A), solver="dopri5", atol=1e-10, rtol=1e-10)(x0, other)[1]
    torch.testing.assert_close(t_eval, other)
    torch.testing.assert_close(trajectory, ode, atol=1e-6, rtol=0)
    assert torch.equal(trajectory[0], x0)

    t_eval, saved = model(x0, other, save_at=[0.75, 2.0])
    torch.testing.assert_close(t_eval, other[[1, 3]])
    torch.testing.assert_close(saved, trajectory[[1, 3]], atol=1e-6, rtol=0)

    model.t_span = other  # master's attribute, one with 1.0.6's s_span
    assert torch.equal(model.s_span, other) and model(x0)[1].shape == (4, 2, 2)
    torch.testing.assert_close(model.trajectory(x0, t_span=built), exact_linear(x0, built), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("solver", "sde_type", "tolerance"), [
    ("euler", "ito", 2e-3),  # Euler: O(ds)
    ("milstein_ito", "ito", 2e-3),  # torchdyn master's names
    ("eulerHeun", "stratonovich", 2e-3),
    ("midpoint", "stratonovich", 1e-5),
])
def test_zero_diffusion_gives_the_ode_solution_with_masters_solvers(solver: str, sde_type: str,
                                                                   tolerance: float) -> None:
    x0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=F64)
    t_span = torch.linspace(0, 1, 5, dtype=F64)
    model = NeuralSDE(Linear(A), Constant(torch.zeros(2, dtype=F64)), solver=solver, sde_type=sde_type,
                      t_span=t_span, ds=1e-3)
    t_eval, trajectory = model(x0, t_span)
    torch.testing.assert_close(trajectory, exact_linear(x0, t_span), atol=tolerance, rtol=0)


THETA, SIGMA, X0, PATHS = 1.2, 0.8, 1.5, 4000


def test_ornstein_uhlenbeck_mean_and_variance_through_masters_call_style() -> None:
    torch.manual_seed(0)
    t_span = torch.tensor([0.0, 0.5, 1.0])
    model = NeuralSDE(Linear(torch.tensor([[-THETA]])), Constant(torch.tensor([SIGMA])), solver="euler",
                      noise_type="diagonal", sde_type="ito", sensitivity="autograd", t_span=t_span, ds=0.01)
    with torch.no_grad():
        t_eval, paths = model(torch.full((PATHS, 1), X0))
    assert torch.equal(t_eval, t_span)
    for t, samples in zip(t_span[1:].tolist(), paths[1:, :, 0]):
        mean = X0 * math.exp(-THETA * t)
        variance = SIGMA**2 / (2 * THETA) * (1 - math.exp(-2 * THETA * t))
        # 4 standard errors over PATHS samples, plus Euler's O(ds) bias (about 0.004 in the mean here)
        assert abs(samples.mean().item() - mean) < 4 * math.sqrt(variance / PATHS) + 0.005
        assert abs(samples.var().item() - variance) < 4 * variance * math.sqrt(2 / PATHS) + 0.005


def test_1_0_6_style_is_unchanged_and_forward_with_t_span_is_masters() -> None:
    x0 = torch.randn(5, 2, dtype=F64)
    model = NeuralSDE(Linear(A), Constant(torch.zeros(2, dtype=F64)), "diagonal", "ito", 1, "autograd",
                      torch.linspace(0, 1, 3, dtype=F64), "srk", ds=0.01)
    assert model.return_t_eval is None
    final = model(x0)
    assert final.shape == (5, 2)
    t_eval, trajectory = model(x0, torch.linspace(0, 1, 3, dtype=F64))
    assert trajectory.shape == (3, 5, 2)
    torch.testing.assert_close(trajectory[-1], final, atol=1e-12, rtol=0)


def test_adjoint_runs_in_masters_style_with_the_constructors_path() -> None:
    torch.manual_seed(0)
    t_span = torch.linspace(0, 0.5, 6)
    bm = torchsde.BrownianInterval(t0=0.0, t1=0.5, size=(8, 2), entropy=3, levy_area_approximation="space-time")
    grads = []
    for sensitivity in ("autograd", "adjoint"):
        torch.manual_seed(1)
        model = NeuralSDE(nn.Linear(2, 2), Constant(torch.tensor([0.3, 0.5])), solver="euler",
                          sensitivity=sensitivity, t_span=t_span, bm=bm, ds=0.01)
        model(torch.ones(8, 2))[1][-1].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 2e-2  # the adjoint's O(ds)


@pytest.mark.parametrize(("options", "error", "fragments"), [
    ({"interpolator": "4th"}, ValueError, ["interpolator='4th'", "None"]),
    ({"t_span": [0.0, 1.0], "s_span": [0.0, 1.0]}, ValueError, ["t_span", "s_span", "not both"]),
    ({"return_t_eval": "yes"}, ValueError, ["'yes'", "True, False"]),
    ({"bm": torch.zeros(3, 2)}, TypeError, ["bm", "torchsde Brownian motion", "Tensor"]),
    ({"t_span": torch.tensor([1.0, 0.0])}, ValueError, ["strictly increasing", "[1.0, 0.0]"]),
    ({"solver": "eulerHeun"}, ValueError, ["'eulerHeun'", "'ito'", "valid solvers"]),
    ({"solver": "rk4"}, ValueError, ["'rk4'", "srk", "milstein_ito"]),
    ({"solver": "milstein_stratonovich"}, ValueError, ["'milstein_stratonovich'", "'ito'", "milstein_ito"]),
])
def test_bad_master_options_fail_at_construction(options: dict, error: type, fragments: list[str]) -> None:
    with pytest.raises(error) as info:
        NeuralSDE(nn.Linear(2, 2), Constant(torch.ones(2)), **options)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_masters_positional_order_is_refused_with_the_fix() -> None:
    with pytest.raises(TypeError) as info:
        NeuralSDE(nn.Linear(2, 2), Constant(torch.ones(2)), 1, "euler")  # master: order, solver
    message = str(info.value)
    for fragment in ("noise_type=1", "diagonal, general", "1.0.6's positional order", "by keyword",
                     "solver='euler'"):
        assert fragment in message, fragment


def test_bad_forward_arguments_fail_before_the_solve() -> None:
    t_span = torch.linspace(0, 1, 3)
    model = NeuralSDE(nn.Linear(2, 2), Constant(torch.ones(2)), solver="euler", t_span=t_span, ds=0.1)
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"save_at.*\[0\.25\].*t_span"):
        model(x0, save_at=[0.25])
    with pytest.raises(NotImplementedError, match="args="):
        model(x0, args={"label": 1})
    short = torchsde.BrownianInterval(t0=0.0, t1=0.5, size=(4, 2))
    with pytest.raises(ValueError, match=r"bm covers \[0, 0.5\].*\[0, 1\]"):
        model(x0, bm=short)
    with pytest.raises(ValueError, match=r"bm must have shape.*\[4, 2\].*\[3, 2\]"):
        model(x0, bm=torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(3, 2)))
    assert model.defunc.nfe == 0


# --------------------------------------------------------------------------------------------------
# LatentNeuralSDE
# --------------------------------------------------------------------------------------------------


class TimeDrift(nn.Module):
    """A posterior drift of ``(t, z)``, as torchsde's example encodes time."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + dim, 16), nn.Tanh(), nn.Linear(16, dim))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        t = t * torch.ones_like(z[:, :1])
        return self.net(torch.cat([torch.sin(t), torch.cos(t), z], dim=-1))


class OUDrift(nn.Module):
    """``theta (mu - z) + shift``: the OU prior's drift (``shift = 0``), or a posterior off it by a constant."""

    def __init__(self, theta: float, mu: float, shift: Tensor | float = 0.0) -> None:
        super().__init__()
        self.theta, self.mu = theta, mu
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.get_default_dtype()))

    def forward(self, z: Tensor) -> Tensor:
        return self.theta * (self.mu - z) + self.shift


SPAN = torch.tensor([0.0, 0.4, 0.8, 1.2, 2.0])


def test_latent_sde_shapes_kl_and_gradients() -> None:
    torch.manual_seed(0)
    sigma, theta, mu = 0.5, 1.0, 0.0
    model = LatentNeuralSDE(TimeDrift(), Constant(torch.tensor([sigma])), OUDrift(theta, mu), sigma, theta, mu,
                            {"trapezoidal_approx": False}, "diagonal", 1, "autograd", SPAN, "srk", 1e-3, 1e-3,
                            None, ds=0.02)  # torchdyn's tutorial's arguments, all of them
    eps = torch.randn(32, 1)
    zs, log_ratio = model(eps)
    assert zs.shape == (5, 32, 1) and log_ratio.shape == ()
    torch.testing.assert_close(zs[0], model.qy0_mean + eps * model.qy0_std)
    assert torch.isfinite(log_ratio) and log_ratio.item() >= 0

    data = torch.sin(SPAN * 2 * math.pi)[:, None, None] * 0.8
    elbo = Laplace(zs, 0.05).log_prob(data.expand_as(zs)).sum(0).mean() - log_ratio
    (-elbo).backward()
    trained = [model.qy0_mean, model.qy0_logvar, *model.defunc.f_func.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in trained)
    assert {name for name, _ in model.named_buffers()} >= {"py0_mean", "py0_logvar"}  # p(z0) is fixed

    assert model.sample_p(SPAN, 7).shape == model.sample_q(SPAN, 7, dt=0.05).shape == (5, 7, 1)
    assert isinstance(model, NeuralSDE) and nodecore.models.LatentNeuralSDE is LatentNeuralSDE


def test_latent_sde_kl_has_its_closed_form_for_a_constant_drift_difference() -> None:
    """f - h = c and g = s constant: u = c / s on every path, so KL(path) = 1/2 |c / s|^2 (t1 - t0), exactly."""
    sigma = torch.tensor([0.5, 2.0])
    theta, mu = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    shift = torch.tensor([0.3, -1.0])
    model = LatentNeuralSDE(OUDrift(1.0, 0.0, shift), Constant(sigma), OUDrift(1.0, 0.0), sigma, theta, mu,
                            s_span=SPAN, solver="euler", ds=0.05)
    torch.manual_seed(0)
    _, log_ratio = model(torch.randn(16, 2))
    path = 0.5 * (shift / sigma).pow(2).sum() * (SPAN[-1] - SPAN[0])
    torch.testing.assert_close(log_ratio, path, atol=1e-5, rtol=1e-5)  # q(z0) = p(z0) at the start

    with torch.no_grad():
        model.qy0_mean.add_(torch.tensor([[0.5, -0.2]]))
        model.qy0_logvar.sub_(0.3)
    _, log_ratio = model(torch.randn(16, 2))
    kl0 = kl_divergence(Normal(model.qy0_mean, model.qy0_std), Normal(mu, sigma / torch.sqrt(2 * theta))).sum()
    torch.testing.assert_close(log_ratio, kl0 + path, atol=1e-5, rtol=1e-5)


def test_latent_sde_kl_with_general_noise_solves_g_u_equals_the_drift_difference() -> None:
    G = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]])
    c = torch.tensor([0.4, -0.2, 0.1])
    model = LatentNeuralSDE(OUDrift(1.0, 0.0, G @ c), Constant(G), OUDrift(1.0, 0.0), 1.0, 1.0,
                            torch.zeros(2), noise_type="general", s_span=SPAN, solver="euler", ds=0.05)
    _, log_ratio = model(torch.randn(4, 2))
    u = torch.linalg.pinv(G) @ (G @ c)  # the least-norm u; any solution of G u = G c gives the same measure
    torch.testing.assert_close(log_ratio, 0.5 * u.pow(2).sum() * 2.0, atol=1e-5, rtol=1e-5)


def test_latent_sde_with_zero_diffusion_is_the_deterministic_flow() -> None:
    """g = 0 and f = h: the ODE z' = theta (mu - z) and no KL; f != h there makes the KL infinite."""
    theta, mu = 0.7, 0.4
    zero = Constant(torch.zeros(1, dtype=F64))
    model = LatentNeuralSDE(OUDrift(theta, mu), zero, OUDrift(theta, mu), 0.5, theta, mu, s_span=SPAN,
                            solver="midpoint", sde_type="stratonovich", ds=0.01).double()
    eps = torch.linspace(-2, 2, 5, dtype=F64)[:, None]
    zs, log_ratio = model(eps)
    z0 = model.qy0_mean + eps * model.qy0_std
    exact = mu + (z0 - mu) * torch.exp(-theta * SPAN.double())[:, None, None]
    torch.testing.assert_close(zs, exact, atol=1e-5, rtol=0)  # the midpoint rule: O(ds^2)
    assert log_ratio.item() == 0.0

    model.defunc.drift.vf.shift.fill_(0.1)
    _, log_ratio = model(eps)
    assert log_ratio.item() == math.inf


def test_latent_sde_adjoint_gradients_equal_autograds_on_one_path() -> None:
    """Reversible Heun's adjoint is exact: q(z0)'s and the drift's gradients through zs and the KL agree."""
    grads = []
    for sensitivity in ("autograd", "adjoint"):
        torch.manual_seed(0)
        model = LatentNeuralSDE(TimeDrift(), Constant(torch.tensor([0.5])), OUDrift(1.0, 0.0), 0.5, 1.0, 0.0,
                                sensitivity=sensitivity, s_span=SPAN, solver="reversible_heun",
                                sde_type="stratonovich", ds=0.02)
        bm = torchsde.BrownianInterval(0.0, 2.0, size=(16, 2), entropy=4, dt=0.02)  # [B, D + 1]: the KL column
        zs, log_ratio = model(torch.linspace(-1, 1, 16)[:, None], bm=bm)
        (zs.pow(2).sum() + log_ratio).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0][:2].abs().min() > 0  # q(z0)'s mean and log-variance
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 1e-3


@pytest.mark.parametrize(("arguments", "error", "fragments"), [
    ({"sigma": -1.0}, ValueError, ["sigma must be > 0", "-1.0"]),
    ({"theta": 0.0}, ValueError, ["theta must be > 0"]),
    ({"mu": torch.zeros(2), "sigma": torch.ones(3)}, ValueError, ["sigma (3,)", "mu (2,)"]),
    ({"sensitivity": "adjoint", "prior_drift": lambda z: -z}, TypeError, ["prior_drift", "nn.Module"]),
    ({"solver": "rk4"}, ValueError, ["'rk4'", "valid solvers"]),
])
def test_latent_sde_bad_arguments_fail_clearly(arguments: dict, error: type, fragments: list[str]) -> None:
    given = {"post_drift": OUDrift(1.0, 0.0), "diffusion": Constant(torch.ones(1)), "prior_drift": OUDrift(1.0, 0.0),
             "sigma": 0.5, "theta": 1.0, "mu": 0.0, **arguments}
    with pytest.raises(error) as info:
        LatentNeuralSDE(**given)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_latent_sde_refuses_noise_of_the_wrong_width() -> None:
    model = LatentNeuralSDE(OUDrift(1.0, 0.0), Constant(torch.ones(1)), OUDrift(1.0, 0.0), 0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"eps must be .*D = 1.*\(4, 3\)"):
        model(torch.randn(4, 3))
    with pytest.raises(ValueError, match="n_sim=5"):
        model.sample_q(SPAN, 5, eps=torch.randn(4, 1))
