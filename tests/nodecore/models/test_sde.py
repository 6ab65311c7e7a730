"""NeuralSDE / SDEProblem: torchdyn's SDE layer on torchsde, checked against what the mathematics says.

Zero diffusion gives the ODE's solution; the Ornstein–Uhlenbeck process has its known mean and variance; geometric
Brownian motion on a fixed Brownian path matches its closed form, which differs between Itô and Stratonovich;
autograd and the adjoint give the same gradients on the same path; bad options fail before any work, by name.
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
import torchsde
from torch import Tensor, nn

from nodecore.errors import InputShapeError
from nodecore.fields import DataControl, DepthCat
from nodecore.models.sde import (
    NOISE_TYPES,
    SDE_SOLVERS,
    SDE_TYPES,
    NeuralSDE,
    SDEAccuracyWarning,
    SDEProblem,
)
from nodecore.neuralode import NeuralODE
from tests.nodecore.models._fields import Constant, Linear

F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------------


class Scaled(nn.Module):
    """``x -> c * x``: GBM's drift or diffusion."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return self.c * x


class Elementwise(nn.Module):
    """A learned element-wise diffusion: ``g_i = sigmoid(a_i x_i + b_i)``."""

    def __init__(self, dim: int, general: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.general = general

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.a * x + self.b)
        return torch.diag_embed(g) if self.general else g


def mixing(dim: int) -> nn.Module:
    """A diagonal-noise diffusion whose ``g_i`` depends on every ``x_j`` (an MLP, as most Neural SDEs use)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


def brownian(batch: int, channels: int, *, entropy: int, ds: float, levy: str = "space-time",
             dtype: torch.dtype = torch.float32) -> torchsde.BrownianInterval:
    return torchsde.BrownianInterval(0.0, 1.0, size=(batch, channels), dtype=dtype, entropy=entropy, dt=ds,
                                     levy_area_approximation=levy)


# --------------------------------------------------------------------------------------------------
# Zero diffusion: the ODE
# --------------------------------------------------------------------------------------------------

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)


@pytest.mark.parametrize(("noise_type", "sde_type", "solver", "zero", "tolerance"), [
    ("diagonal", "ito", "srk", torch.zeros(2, dtype=F64), 1e-5),
    ("general", "stratonovich", "midpoint", torch.zeros(2, 3, dtype=F64), 1e-4),  # 2nd order in ds
])
def test_zero_diffusion_gives_the_ode_solution(noise_type: str, sde_type: str, solver: str, zero: Tensor,
                                               tolerance: float) -> None:
    x0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=F64)
    s_span = torch.linspace(0, 1, 5, dtype=F64)
    model = NeuralSDE(Linear(A), Constant(zero), noise_type=noise_type, sde_type=sde_type, solver=solver, ds=0.01)
    trajectory = model.trajectory(x0, s_span)

    exact = torch.stack([x0 @ torch.linalg.matrix_exp(A * t).T for t in s_span])
    ode = NeuralODE(Linear(A), solver="dopri5", atol=1e-10, rtol=1e-10)(x0, s_span)[1]
    assert trajectory.shape == (5, 2, 2)
    torch.testing.assert_close(ode, exact, atol=1e-8, rtol=0)
    torch.testing.assert_close(trajectory, exact, atol=tolerance, rtol=0)
    torch.testing.assert_close(model(x0), exact[-1], atol=tolerance, rtol=0)  # forward: the final state only


# --------------------------------------------------------------------------------------------------
# Ornstein–Uhlenbeck: dX = -θ X dt + σ dW
# --------------------------------------------------------------------------------------------------

THETA, SIGMA, X0, PATHS = 1.2, 0.8, 1.5, 4000


@pytest.mark.parametrize(("noise_type", "sde_type", "solver", "sigma"), [
    ("diagonal", "ito", "srk", torch.tensor([SIGMA])),
    ("additive", "ito", "srk", torch.tensor([[SIGMA]])),
    ("scalar", "ito", "euler", torch.tensor([[SIGMA]])),
    ("general", "stratonovich", "midpoint", torch.tensor([[SIGMA]])),  # additive noise: Itô = Stratonovich
])
def test_ornstein_uhlenbeck_mean_and_variance(noise_type: str, sde_type: str, solver: str, sigma: Tensor) -> None:
    torch.manual_seed(0)
    model = NeuralSDE(Linear(torch.tensor([[-THETA]])), Constant(sigma), noise_type=noise_type, sde_type=sde_type,
                      solver=solver, ds=0.02)
    s_span = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        paths = model.trajectory(torch.full((PATHS, 1), X0), s_span)[1:, :, 0]  # [2, PATHS]
    for t, samples in zip(s_span[1:].tolist(), paths):
        mean = X0 * math.exp(-THETA * t)
        variance = SIGMA**2 / (2 * THETA) * (1 - math.exp(-2 * THETA * t))
        # 4 standard errors of each estimate over PATHS samples
        assert abs(samples.mean().item() - mean) < 4 * math.sqrt(variance / PATHS)
        assert abs(samples.var().item() - variance) < 4 * variance * math.sqrt(2 / PATHS)


def test_torch_seed_repeats_the_path_and_forward_is_the_trajectory_end() -> None:
    model = NeuralSDE(Linear(torch.tensor([[-THETA]])), Constant(torch.tensor([SIGMA])), ds=0.05)
    x0 = torch.ones(16, 1)
    torch.manual_seed(3)
    first = model(x0)
    torch.manual_seed(3)
    again = model(x0)
    torch.manual_seed(4)
    other = model(x0)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - other).abs().max() > 0.01
    bm = brownian(16, 1, entropy=5, ds=0.05)
    torch.testing.assert_close(model(x0, bm=bm), model.trajectory(x0, torch.tensor([0.0, 0.3, 1.0]), bm=bm)[-1])


# --------------------------------------------------------------------------------------------------
# Geometric Brownian motion on a fixed path: Itô and Stratonovich closed forms
# --------------------------------------------------------------------------------------------------

MU, VOL = 0.3, 0.5


@pytest.mark.parametrize(("sde_type", "solver"), [
    ("ito", "srk"), ("ito", "milstein"), ("stratonovich", "midpoint"), ("stratonovich", "milstein"),
    ("stratonovich", "reversible_heun"),
])
def test_geometric_brownian_motion_matches_its_closed_form(sde_type: str, solver: str) -> None:
    torch.manual_seed(0)
    x0 = torch.rand(64, 2, dtype=F64) + 0.5
    bm = brownian(64, 2, entropy=11, ds=0.005, dtype=F64)
    model = NeuralSDE(Scaled(MU), Scaled(VOL), sde_type=sde_type, solver=solver, ds=0.005)
    final = model(x0, bm=bm)

    w1 = bm(0.0, 1.0)
    ito = x0 * torch.exp((MU - VOL**2 / 2) + VOL * w1)
    stratonovich = x0 * torch.exp(MU + VOL * w1)
    exact, other = (ito, stratonovich) if sde_type == "ito" else (stratonovich, ito)
    error = ((final - exact).abs() / exact).mean().item()
    assert error < 5e-3
    assert ((final - other).abs() / other).mean().item() > 20 * error  # the SDE type changes the solution


@pytest.mark.parametrize(("noise_type", "sde_type", "solver", "sigma"), [
    ("general", "ito", "euler", torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.0, 2.0]])),
    ("general", "stratonovich", "heun", torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.0, 2.0]])),
    ("additive", "ito", "srk", torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.0, 2.0]])),
    ("scalar", "ito", "milstein", torch.tensor([[1.0], [-2.0]])),
])
def test_constant_diffusion_adds_g_times_the_brownian_increment(noise_type: str, sde_type: str, solver: str,
                                                                sigma: Tensor) -> None:
    """dX = G dW with a constant G [D, m]: X(1) = x0 + G W(1) on the same path, whatever the noise layout."""
    x0 = torch.randn(5, 2)
    zero_drift = Linear(torch.zeros(2, 2))
    bm = brownian(5, sigma.shape[1], entropy=2, ds=0.1, levy="space-time")
    final = NeuralSDE(zero_drift, Constant(sigma), noise_type=noise_type, sde_type=sde_type, solver=solver,
                      ds=0.1)(x0, bm=bm)
    torch.testing.assert_close(final, x0 + bm(0.0, 1.0) @ sigma.T, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Gradients: autograd and the adjoint agree on a fixed Brownian path
# --------------------------------------------------------------------------------------------------


# Measured relative differences: 2.5e-5, 1.1e-4, 2.1e-3, 1.0e-2 (the adjoint's own discretisation error, O(ds)).
@pytest.mark.parametrize(("noise_type", "sde_type", "solver", "diffusion", "tolerance"), [
    ("diagonal", "stratonovich", "reversible_heun", "elementwise", 1e-4),  # algebraically reversible: exact
    ("diagonal", "stratonovich", "midpoint", "mixing", 1e-3),
    ("diagonal", "ito", "srk", "elementwise", 2e-2),
    ("general", "ito", "euler", "mixing", 5e-2),
])
def test_autograd_and_adjoint_gradients_agree(noise_type: str, sde_type: str, solver: str, diffusion: str,
                                              tolerance: float) -> None:
    torch.manual_seed(0)
    drift = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    if diffusion == "elementwise":
        g = Elementwise(2, general=noise_type == "general")
    else:
        g = nn.Sequential(mixing(2), *([Diag()] if noise_type == "general" else []))
    x0 = torch.randn(8, 2)
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        model = NeuralSDE(drift, g, noise_type=noise_type, sde_type=sde_type, sensitivity=sensitivity,
                          solver=solver, ds=0.02)
        x = x0.clone().requires_grad_()
        bm = brownian(8, 2, entropy=7, ds=0.02, levy=SDE_SOLVERS[solver].levy_areas[0])
        model(x, bm=bm).pow(2).sum().backward()
        grads[sensitivity] = torch.cat([x.grad.flatten(), *(p.grad.flatten() for p in model.parameters())])
        model.zero_grad()
    autograd, adjoint = grads["autograd"], grads["adjoint"]
    assert torch.isfinite(autograd).all()
    n_diffusion = sum(p.numel() for p in g.parameters())
    assert (autograd[-n_diffusion:].abs() > 0).all() and (autograd[:-n_diffusion].abs() > 0).all()
    assert ((autograd - adjoint).norm() / autograd.norm()).item() < tolerance


class Diag(nn.Module):
    def forward(self, g: Tensor) -> Tensor:
        return torch.diag_embed(g)


def test_data_controlled_drift_gets_its_initial_state_gradient_from_both_sensitivities() -> None:
    torch.manual_seed(0)
    drift = nn.Sequential(DataControl(), nn.Linear(4, 2))
    diffusion = Elementwise(2)
    x0 = torch.randn(6, 2)
    grads = []
    for sensitivity in ("autograd", "adjoint"):
        model = NeuralSDE(drift, diffusion, sde_type="stratonovich", sensitivity=sensitivity,
                          solver="reversible_heun", ds=0.05)
        x = x0.clone().requires_grad_()
        model(x, bm=brownian(6, 2, entropy=1, ds=0.05)).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Diagonal noise with a diffusion that mixes dimensions
# --------------------------------------------------------------------------------------------------


def test_mixing_diagonal_diffusion_is_refused_where_torchsde_would_be_wrong() -> None:
    x0 = torch.randn(4, 3)
    torch.manual_seed(0)
    adjoint = NeuralSDE(nn.Linear(3, 3), mixing(3), sensitivity="adjoint", solver="euler", ds=0.1)
    with pytest.raises(ValueError, match="element-wise diffusion.*sde_type='stratonovich'"):
        adjoint(x0)
    assert adjoint.defunc.nfe == 0  # refused before the solve
    milstein = NeuralSDE(nn.Linear(3, 3), mixing(3), sde_type="stratonovich", solver="milstein", ds=0.1)
    with pytest.raises(ValueError, match="element-wise.*midpoint"):
        milstein(x0)
    with pytest.warns(SDEAccuracyWarning, match="'srk'.*solver='euler'"):
        NeuralSDE(nn.Linear(3, 3), mixing(3), ds=0.1)(x0)
    with warnings.catch_warnings():  # element-wise diffusions and derivative-free solvers are fine
        warnings.simplefilter("error")
        NeuralSDE(nn.Linear(3, 3), Elementwise(3), sensitivity="adjoint", ds=0.1)(x0)
        NeuralSDE(nn.Linear(3, 3), mixing(3), solver="euler", ds=0.1)(x0)
        NeuralSDE(nn.Linear(3, 3), mixing(3), sde_type="stratonovich", solver="midpoint", sensitivity="adjoint",
                  ds=0.1)(x0)


# --------------------------------------------------------------------------------------------------
# torchdyn's interface
# --------------------------------------------------------------------------------------------------


def test_signature_and_positional_order_are_torchdyns() -> None:
    params = list(inspect.signature(NeuralSDE).parameters.values())
    torchdyn = [("drift_func", inspect.Parameter.empty), ("diffusion_func", inspect.Parameter.empty),
                ("noise_type", "diagonal"), ("sde_type", "ito"), ("order", 1), ("sensitivity", "autograd"),
                ("s_span", None), ("solver", "srk"), ("atol", 1e-4), ("rtol", 1e-4), ("ds", 1e-3),
                ("intloss", None)]
    assert [(p.name, p.default) for p in params[:len(torchdyn)]] == torchdyn
    assert all(p.kind == p.KEYWORD_ONLY for p in params[len(torchdyn):])

    drift, diffusion = nn.Linear(2, 2), Elementwise(2)
    model = NeuralSDE(drift, diffusion, "diagonal", "ito", 1, "adjoint", torch.linspace(0, 2, 3), "euler", 1e-3,
                      1e-3, 0.05, None)
    assert (model.solver, model.sensitivity, model.ds, model.adaptive) == ("euler", "adjoint", 0.05, False)
    assert model.s_span.tolist() == [0.0, 1.0, 2.0]
    assert NeuralSDE(drift, diffusion).s_span.tolist() == [0.0, 1.0]
    assert model.defunc.f_func is drift and model.defunc.g_func is diffusion
    assert model(torch.randn(3, 2)).shape == (3, 2)


def test_attributes_torchdyn_code_sets_are_honoured_and_checked() -> None:
    model = NeuralSDE(nn.Linear(2, 2), Elementwise(2), ds=0.1)
    x0 = torch.zeros(3, 2)
    model.s_span = torch.linspace(0, 2, 3)
    model.solver, model.ds = "euler", 0.05
    model.defunc.noise_type = "general"
    with pytest.raises(ValueError, match=r"noise_type='general'.*\[B, D, m\].*\(3, 2\)"):
        model(x0)  # the diffusion still returns [B, D]
    model.defunc.noise_type = "diagonal"
    assert model(x0).shape == (3, 2)
    model.solver = "midpoint"
    with pytest.raises(ValueError, match="'midpoint' cannot solve an 'ito' SDE"):
        model(x0)
    model.sensitivity = "backprop"
    with pytest.raises(ValueError, match="unknown sensitivity 'backprop'"):
        model(x0)


def test_drift_and_diffusion_may_take_x_or_t_x_and_see_the_depth() -> None:
    class TimeDrift(nn.Module):
        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            return t * torch.ones_like(x)

    depth = nn.Sequential(DepthCat(1), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        depth[1].weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]))  # dx/dt = [t, 2t]
    x0 = torch.zeros(2, 2)
    for drift, expected in ((TimeDrift(), [0.5, 0.5]), (depth, [0.5, 1.0]), (lambda x: -x, [0.0, 0.0])):
        model = NeuralSDE(drift, lambda x: torch.zeros_like(x), sde_type="stratonovich", solver="midpoint", ds=0.01)
        torch.testing.assert_close(model(x0), torch.tensor([expected, expected]), atol=1e-5, rtol=0)
    assert model.defunc.nfe > 0 and model.defunc.nfe_diffusion > 0
    model.defunc.nfe = 0
    assert model.defunc.nfe == model.defunc.nfe_diffusion == 0


def test_sde_problem_solves_a_torchsde_style_sde() -> None:
    class OU(torchsde.SDEIto):
        def __init__(self) -> None:
            super().__init__(noise_type="diagonal")
            self.theta = nn.Parameter(torch.tensor(THETA))

        def f(self, t: Tensor, y: Tensor) -> Tensor:
            return -self.theta * y

        def g(self, t: Tensor, y: Tensor) -> Tensor:
            return torch.zeros_like(y)

    problem = SDEProblem(OU(), sensitivity="adjoint", solver="euler", ds=0.01)
    x0 = torch.ones(3, 1)
    torch.testing.assert_close(problem(x0), x0 * math.exp(-THETA), atol=5e-3, rtol=0)  # Euler: O(ds)
    problem(x0).sum().backward()
    # d/dθ of 3 e^{-θ}, to the O(ds) of Euler forward and of Euler on the adjoint backward
    assert problem.defunc.theta.grad.item() == pytest.approx(-3 * math.exp(-THETA), rel=3e-2)


def test_solver_table_is_torchsdes() -> None:
    from torchsde._core import methods
    from torchsde.settings import METHODS

    assert set(SDE_SOLVERS) == set(METHODS.all()) - {"adjoint_reversible_heun"}
    for name, entry in SDE_SOLVERS.items():
        for sde_type in SDE_TYPES:
            cls = methods.select(name, sde_type)
            assert (cls.sde_type == sde_type) == (sde_type in entry.sde_types), (name, sde_type)
            if cls.sde_type == sde_type:
                assert set(cls.noise_types) == set(entry.noise_types), name
                assert set(cls.levy_area_approximations) == set(entry.levy_areas), name
    assert set(NOISE_TYPES) == set(torchsde.settings.NOISE_TYPES.all())


# --------------------------------------------------------------------------------------------------
# Clear errors, before any work
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "fragments"), [
    ({"noise_type": "diag"}, ValueError, ["'diag'", "diagonal, general, scalar, additive"]),
    ({"sde_type": "itô"}, ValueError, ["'itô'", "ito, stratonovich"]),
    ({"solver": "rk4"}, ValueError, ["'rk4'", "euler, milstein, srk"]),
    ({"sensitivity": "interpolated_adjoint"}, ValueError, ["'interpolated_adjoint'", "autograd, adjoint"]),
    ({"sde_type": "stratonovich"}, ValueError, ["'srk'", "'stratonovich'", "midpoint"]),
    ({"noise_type": "general"}, ValueError, ["'srk'", "'general'", "valid solvers", "euler"]),
    ({"solver": "log_ode"}, ValueError, ["'log_ode'", "'ito'"]),
    ({"order": 2}, NotImplementedError, ["order=2"]),
    ({"order": 0}, ValueError, ["order", ">= 1"]),
    ({"intloss": lambda t, x: x.sum(1)}, NotImplementedError, ["intloss"]),
    ({"ds": 0.0}, ValueError, ["ds", "> 0"]),
    ({"atol": -1e-3}, ValueError, ["atol"]),
    ({"s_span": torch.tensor([1.0, 0.0])}, ValueError, ["strictly increasing", "[1.0, 0.0]"]),
    ({"s_span": torch.tensor([0.0])}, ValueError, ["at least 2"]),
    ({"s_span": torch.tensor([0.0, math.nan])}, ValueError, ["finite"]),
    ({"sensitivity": "adjoint", "drift_func": lambda x: -x}, TypeError, ["drift_func", "nn.Module"]),
])
def test_bad_options_fail_at_construction(options: dict, error: type, fragments: list[str]) -> None:
    arguments = {"drift_func": nn.Linear(2, 2), "diffusion_func": Elementwise(2), **options}
    with pytest.raises(error) as info:
        NeuralSDE(**arguments)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


class Wrong(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], *self.shape)


@pytest.mark.parametrize(("build", "x", "error", "fragments"), [
    (lambda: NeuralSDE(nn.Linear(2, 2), Elementwise(2)), torch.zeros(2), ValueError, ["[batch, dim]", "(2,)"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Elementwise(2)), torch.zeros(2, 2, 1), ValueError, ["(2, 2, 1)"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Elementwise(2)), torch.zeros(2, 2, dtype=torch.long), ValueError,
     ["floating point"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Elementwise(2)), torch.full((2, 2), math.nan), ValueError, ["NaN"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Elementwise(2)), torch.zeros(2, 3), InputShapeError,
     ["drift", "(2, 3)", "2 input features"]),
    (lambda: NeuralSDE(nn.Linear(2, 3), Elementwise(2)), torch.zeros(4, 2), ValueError,
     ["drift must return", "(4, 2)", "(4, 3)"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Wrong((2, 1))), torch.zeros(4, 2), ValueError,
     ["noise_type='diagonal'", "[B, D]", "(4, 2, 1)"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Wrong((2,)), "general", solver="euler"), torch.zeros(4, 2), ValueError,
     ["noise_type='general'", "[B, D, m]", "(4, 2)"]),
    (lambda: NeuralSDE(nn.Linear(2, 2), Wrong((2, 2)), "scalar", solver="euler"), torch.zeros(4, 2), ValueError,
     ["noise_type='scalar'", "[B, D, 1]", "(4, 2, 2)"]),
    (lambda: NeuralSDE(nn.Linear(2, 2).double(), Elementwise(2).double()), torch.zeros(4, 2), ValueError,
     ["float32", "float64", "model.to"]),
])
def test_bad_inputs_fail_before_the_solve(build, x: Tensor, error: type, fragments: list[str]) -> None:
    model = build()
    with pytest.raises(error) as info:
        model(x)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert model.defunc.nfe == 0


def test_bad_brownian_motion_and_bad_sde_fail_clearly() -> None:
    model = NeuralSDE(nn.Linear(2, 2), Elementwise(2), ds=0.1)
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"bm must have shape.*\[4, 2\].*\[4, 3\]"):
        model(x0, bm=brownian(4, 3, entropy=0, ds=0.1))
    with pytest.raises(ValueError, match="'srk' needs .*space-time.*'none'"):
        model(x0, bm=brownian(4, 2, entropy=0, ds=0.1, levy="none"))
    with pytest.raises(TypeError, match="torchsde Brownian motion"):
        model(x0, bm=torch.zeros(4, 2))
    class DriftOnly(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t: Tensor, x: Tensor) -> Tensor:
            return -x

    with pytest.raises(TypeError, match=r"DriftOnly has no method g\(t, x\)"):
        SDEProblem(DriftOnly())
