"""torchdyn's remaining test systems: solves against closed forms (exponentials, sine, LTI via the matrix
exponential, Fourier sums via their antiderivative), Rabinovich–Fabrikant against SciPy, shape contracts,
``randomize_parameters`` and the MatMul networks, and errors on bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, Uniform

from nodecore.numerics import (
    CoupledFourierSystem,
    FourierSystem,
    LTISystem,
    MatMulBoundedSystem,
    MatMulSystem,
    ODEProblem2,
    ODEProblem3,
    ODEProblem4,
    SineSystem,
    StiffFourierSystem,
    odeint,
)

F64 = torch.float64
TOL = {"solver": "dopri5", "atol": 1e-11, "rtol": 1e-11}


def solve(f: nn.Module, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t_eval, sol = odeint(f, x0, t, **TOL)
    torch.testing.assert_close(t_eval, t)
    assert sol.shape == (len(t), *x0.shape)
    return sol


def test_import_path_is_torchdyns():
    import nodecore.numerics.systems as systems

    for name in ["ODEProblem2", "ODEProblem3", "ODEProblem4", "SineSystem", "LTISystem", "FourierSystem",
                 "StiffFourierSystem", "CoupledFourierSystem", "MatMulSystem", "MatMulBoundedSystem"]:
        assert issubclass(getattr(systems, name), nn.Module) and getattr(systems, name).__doc__


@pytest.mark.parametrize("system, k", [(ODEProblem2, 0.5), (ODEProblem3, -0.1)])
def test_exponentials(system: type[nn.Module], k: float):
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    f = system()
    torch.testing.assert_close(f(torch.tensor(0.0), x0, args=None), k * x0)  # extra keywords ignored
    sol = solve(f, x0, t)
    torch.testing.assert_close(sol, x0 * torch.exp(k * t)[:, None, None], rtol=1e-9, atol=1e-10)


def test_sine_system():
    x0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    t = torch.linspace(0, 2 * math.pi, 9, dtype=F64)
    f = SineSystem()
    out = f(torch.tensor(0.7, dtype=F64), torch.zeros(2, 5, dtype=F64))
    assert out.shape == (2, 5) and out.dtype == F64
    torch.testing.assert_close(out, torch.full((2, 5), math.sin(0.7), dtype=F64))
    sol = solve(f, x0, t)
    torch.testing.assert_close(sol, x0 + (1 - torch.cos(t))[:, None, None], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 3])
def test_lti_against_the_matrix_exponential(dim: int):
    torch.manual_seed(dim)
    f = LTISystem(dim).double()
    assert f.dim == dim and f.randomizable is True and isinstance(f.l, nn.Linear)
    A, b = f.l.weight.detach(), f.l.bias.detach()
    x0 = torch.randn(2, dim, dtype=F64)
    t = torch.linspace(0, 2, 5, dtype=F64)
    sol = solve(f, x0, t)
    # The augmented matrix [[A, b], [0, 0]] acting on [x, 1] carries the bias exactly.
    M = torch.zeros(dim + 1, dim + 1, dtype=F64)
    M[:dim, :dim], M[:dim, dim] = A, b
    x0_aug = torch.cat([x0, torch.ones(2, 1, dtype=F64)], -1)
    expected = torch.stack([(torch.linalg.matrix_exp(M * s) @ x0_aug.T).T[:, :dim] for s in t])
    torch.testing.assert_close(sol.detach(), expected, rtol=1e-9, atol=1e-10)


def test_lti_randomize_parameters_replaces_the_layer():
    torch.manual_seed(0)
    f = LTISystem(3, randomizable=False).double()
    old = f.l
    f.randomize_parameters()
    assert f.l is not old and f.l.weight.shape == (3, 3) and f.l.weight.dtype == F64
    assert not torch.equal(f.l.weight, old.weight) and f.randomizable is False


def antiderivative(f: FourierSystem, t: torch.Tensor) -> torch.Tensor:
    """G(t) - G(0), G the antiderivative of the unmixed Fourier sum: [T, dim]."""
    s = t.reshape(-1, 1, 1, 1)
    return (f.A / f.w * (torch.sin(f.w * s + f.phi) - torch.sin(f.phi))).sum((-2, -1))


@pytest.mark.parametrize("system, low, high", [(FourierSystem, 2, 20), (StiffFourierSystem, 20, 100),
                                               (CoupledFourierSystem, 2, 20)])
def test_fourier_systems_against_their_antiderivative(system: type[FourierSystem], low: int, high: int):
    torch.manual_seed(3)
    f = system(dim=3).double()
    assert isinstance(f.n_harmonics, int) and low <= f.n_harmonics < high
    for name in ("A", "phi", "w"):
        assert getattr(f, name).shape == (3, f.n_harmonics, 2) and getattr(f, name).dtype == F64
    assert (f.A.abs() <= 10).all() and (f.phi.abs() <= 1).all() and (f.w.abs() <= 20).all()
    x0 = torch.randn(4, 3, dtype=F64)  # a batch: the [1, dim] value at scalar t broadcasts over it
    t = torch.tensor([0.0, 0.1, 0.35, 0.6], dtype=F64)
    sol = solve(f, x0, t).detach()
    G = antiderivative(f, t)
    if isinstance(f, CoupledFourierSystem):
        W, b = f.mixing_l.weight.detach(), f.mixing_l.bias.detach()
        expected = x0 + (G @ W.T + t[:, None] * b)[:, None]
    else:
        expected = x0 + G[:, None]
    torch.testing.assert_close(sol, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("system", [FourierSystem, StiffFourierSystem, CoupledFourierSystem])
def test_fourier_shape_contract_and_vector_t(system: type[FourierSystem]):
    torch.manual_seed(1)
    f = system()
    t = torch.linspace(-1, 2, 6)
    at_once = f(t, None)
    assert at_once.shape == (6, 2)
    one_by_one = torch.cat([f(s, None) for s in t])
    assert f(t[2], None).shape == (1, 2) and f(t[2], torch.zeros(1, 2)).shape == (1, 2)
    torch.testing.assert_close(at_once, one_by_one)
    assert f(t[2], torch.zeros(5, 2)).shape == (5, 2)
    cos = f.A * torch.cos(f.w * 0.4 + f.phi)
    direct = cos.sum((1, 2))[None]
    if isinstance(f, CoupledFourierSystem):
        direct = f.mixing_l(direct)
    torch.testing.assert_close(f(torch.tensor(0.4), torch.zeros(1, 2)), direct)
    with pytest.raises(ValueError, match=r"takes a scalar or 1-D t, got shape \(2, 3\)"):
        f(torch.zeros(2, 3), None)
    assert f.state_dict().keys() == ({"mixing_l.weight", "mixing_l.bias"} if system is CoupledFourierSystem
                                     else set())


@pytest.mark.parametrize("system", [FourierSystem, StiffFourierSystem, CoupledFourierSystem])
def test_fourier_randomize_parameters(system: type[FourierSystem]):
    torch.manual_seed(2)
    f = system(dim=4, A_dist=Normal(0.0, 1.0)).double()
    before = {name: getattr(f, name).clone() for name in ("A", "phi", "w")}
    mixing = getattr(f, "mixing_l", None)
    n = f.n_harmonics
    f.randomize_parameters()
    assert f.n_harmonics == n
    for name, old in before.items():
        new = getattr(f, name)
        assert new.shape == old.shape and new.dtype == F64 and not torch.equal(new, old)
    if mixing is not None:
        assert f.mixing_l is not mixing and f.mixing_l.weight.dtype == F64
        assert not torch.equal(f.mixing_l.weight, mixing.weight)


def test_fourier_defaults_do_not_share_draws():
    torch.manual_seed(4)
    a, b = FourierSystem(), FourierSystem()
    assert a.A_dist is b.A_dist  # the stateless default distribution is shared, its draws are not
    assert a.A is not b.A and (a.n_harmonics != b.n_harmonics or not torch.equal(a.A, b.A))


def activations(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if not isinstance(m, (nn.Linear, nn.Sequential))]


def test_matmul_default_is_torchdyns_network():
    torch.manual_seed(0)
    f = MatMulSystem()
    linears = [m for m in f.net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 32)] + [(32, 32)] * 4 + [(32, 2)]
    assert len(activations(f.net)) == 5 and all(isinstance(m, nn.Tanh) for m in activations(f.net))
    assert f.dim == 2 and f.randomizable is True
    assert "net.0.2.0.weight" in f.state_dict() and "net.0.6.bias" in f.state_dict()  # torchdyn's module layout
    x = torch.randn(7, 2)
    assert f(torch.tensor(0.0), x).shape == (7, 2)
    torch.testing.assert_close(f(None, x), f.net(x))


@pytest.mark.parametrize("layers", [1, 3])
def test_matmul_honours_layers_and_activation(layers: int):
    f = MatMulSystem(dim=3, activation=nn.PReLU(), layers=layers, hdim=8)
    linears = [m for m in f.net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 8)] + [(8, 8)] * (layers - 1) + [(8, 3)]
    acts = activations(f.net)
    assert len(acts) == layers and all(isinstance(m, nn.PReLU) for m in acts)
    assert len({id(m.weight) for m in acts}) == layers  # each layer its own copy: no shared parameters
    assert f(None, torch.randn(5, 3)).shape == (5, 3)


@pytest.mark.parametrize("system", [MatMulSystem, MatMulBoundedSystem])
def test_matmul_randomize_redraws_every_parameter(system: type[MatMulSystem]):
    torch.manual_seed(5)
    f = system(hdim=64)
    before = [p.detach().clone() for p in f.parameters()]
    ids = [id(p) for p in f.parameters()]
    f.randomize_parameters()
    after = list(f.parameters())
    assert [id(p) for p in after] == ids  # in place: an optimiser built over them keeps working
    for old, new in zip(before, after):
        assert new.shape == old.shape and not torch.equal(new, old)
    drawn = torch.cat([p.detach().flatten() for p in after])
    assert abs(float(drawn.mean())) < 0.05 and float(drawn.std()) == pytest.approx(1.0, abs=0.05)  # N(0, 1)


def test_matmul_bounded_is_bounded_by_one():
    torch.manual_seed(6)
    f = MatMulBoundedSystem(activation=nn.ReLU(), layers=2)
    f.randomize_parameters()
    assert isinstance(list(f.net.modules())[-1], nn.Tanh)
    with torch.no_grad():
        out = f(None, 100 * torch.randn(1000, 2))
    assert out.shape == (1000, 2) and float(out.abs().max()) <= 1.0
    assert float(out.abs().max()) > 0.9  # large weights saturate it: the bound is the tanh's, not luck


def rabinovich_fabrikant(t: float, z, alpha: float = 1.1, gamma: float = 0.87):
    x, y, w = z
    return [y * (w - 1 + x * x) + gamma * x, x * (3 * w + 1 - x * x) + gamma * y, -2 * w * (alpha + x * y)]


@pytest.mark.parametrize("params", [{}, {"alpha": 0.14, "gamma": 0.1}])
def test_rabinovich_fabrikant_against_scipy(params: dict):
    solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp
    f = ODEProblem4(**params)
    assert (f.alpha, f.gamma) == (params.get("alpha", 1.1), params.get("gamma", 0.87))
    z0 = [-1.0, 0.0, 0.5]
    t = torch.linspace(0, 2, 5, dtype=F64)
    ref = solve_ivp(rabinovich_fabrikant, (0, 2), z0, method="DOP853", t_eval=t.numpy(), rtol=1e-12, atol=1e-12,
                    args=(f.alpha, f.gamma))
    sol = solve(f, torch.tensor([z0], dtype=F64), t)
    torch.testing.assert_close(sol[:, 0], torch.as_tensor(ref.y.T), rtol=1e-8, atol=1e-8)
    z = torch.randn(4, 2, 3, dtype=F64)
    torch.testing.assert_close(f(None, z), torch.tensor(
        [[rabinovich_fabrikant(0.0, v, f.alpha, f.gamma) for v in row.tolist()] for row in z], dtype=F64))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"ODEProblem4 takes states \[\.\.\., 3\].*\(4, 2\)"):
        ODEProblem4()(None, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="gamma must be a finite number, got inf"):
        ODEProblem4(gamma=float("inf"))
    with pytest.raises(TypeError):
        ODEProblem4(1.1)  # keyword-only: torchdyn's takes none
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1, got 0"):
        LTISystem(0)
    with pytest.raises(ValueError, match=r"randomizable must be True or False, got 1"):
        LTISystem(2, randomizable=1)
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1, got 2.0"):
        FourierSystem(2.0)
    with pytest.raises(ValueError, match=r"phi_dist must be a torch.distributions.Distribution.*got \(-1, 1\)"):
        StiffFourierSystem(phi_dist=(-1, 1))
    with pytest.raises(ValueError, match=r"w_dist must be a torch.distributions.Distribution.*got 3"):
        CoupledFourierSystem(w_dist=3)
    with pytest.raises(ValueError, match=r"layers must be an integer >= 1, got 0"):
        MatMulSystem(layers=0)
    with pytest.raises(ValueError, match=r"hdim must be an integer >= 1, got -3"):
        MatMulBoundedSystem(hdim=-3)
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1, got True, a bool"):
        MatMulSystem(dim=True)
    with pytest.raises(ValueError, match=r"activation must be an nn.Module.*got <built-in method tanh"):
        MatMulSystem(activation=torch.tanh)
    assert isinstance(FourierSystem(A_dist=Uniform(-1.0, 1.0)).A_dist, Uniform)


def test_seeded_draws_follow_torchdyns_order():
    # torchdyn draws n_harmonics, then A, phi, w, then builds mixing_l; its MatMul layers first to last.
    torch.manual_seed(7)
    f = CoupledFourierSystem()
    torch.manual_seed(7)
    n = int(torch.randint(2, 20, size=(1,)))
    A = Uniform(-10, 10).sample(torch.Size([2, n, 2]))
    phi, w = Uniform(-1, 1).sample(torch.Size([2, n, 2])), Uniform(-20, 20).sample(torch.Size([2, n, 2]))
    mixing = nn.Linear(2, 2)
    assert f.n_harmonics == n and torch.equal(f.A, A) and torch.equal(f.phi, phi) and torch.equal(f.w, w)
    assert torch.equal(f.mixing_l.weight, mixing.weight)
    torch.manual_seed(8)
    g = MatMulSystem()
    torch.manual_seed(8)
    first = nn.Linear(2, 32)
    assert torch.equal(g.net[0][0].weight, first.weight)
