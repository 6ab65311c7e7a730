"""VanDerPol and Lorenz: the fields against hand-written formulas, their Jacobians, what a solve of them shows
(Van der Pol's limit cycle, Lorenz's volume contraction), torchdyn's attributes, and errors on bad states."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nodecore.numerics import Lorenz, VanDerPol, odeint

F64 = torch.float64


@pytest.mark.parametrize("alpha", [10, 0.5, -2.0])
def test_van_der_pol_is_the_formula(alpha: float):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, dtype=F64)
    f = VanDerPol() if alpha == 10 else VanDerPol(alpha)
    assert f.alpha == alpha and f.nfe == 0
    expected = torch.stack([x[..., 1], alpha * (1 - x[..., 0] ** 2) * x[..., 1] - x[..., 0]], -1)
    torch.testing.assert_close(f(torch.tensor(0.3), x), expected, rtol=0, atol=1e-13)
    f(torch.tensor(0.0), x[0])
    assert f.nfe == 2 and isinstance(f, nn.Module) and not list(f.parameters())


def test_van_der_pol_jacobian_and_limit_cycle():
    f = VanDerPol(1.0)
    jac = torch.autograd.functional.jacobian(lambda x: f(torch.tensor(0.0), x), torch.zeros(2, dtype=F64))
    torch.testing.assert_close(jac, torch.tensor([[0.0, 1.0], [-1.0, 1.0]], dtype=F64))  # an unstable focus at 0
    # From near the origin the state spirals out onto the limit cycle, whose amplitude is about 2.0086 (alpha = 1).
    t_span = torch.linspace(0, 60, 601, dtype=F64)
    _, sol = odeint(f, torch.tensor([[0.1, 0.0]], dtype=F64), t_span, solver="dopri5", atol=1e-8, rtol=1e-8)
    assert float(sol[-200:, 0, 0].abs().max()) == pytest.approx(2.0086, abs=2e-3)


def test_lorenz_is_the_formula_with_torchdyns_parameters():
    torch.manual_seed(1)
    x = 10 * torch.randn(5, 3, dtype=F64)
    f = Lorenz()
    assert (f.sigma, f.rho, f.beta) == (10.0, 28.0, 8 / 3)
    a, b, c = x.unbind(-1)
    expected = torch.stack([10 * (b - a), a * (28 - c) - b, a * b - 8 / 3 * c], -1)
    torch.testing.assert_close(f(torch.tensor(0.0), x), expected, rtol=0, atol=1e-12)
    custom = Lorenz(sigma=1.0, rho=2.0, beta=3.0)
    torch.testing.assert_close(custom(None, x), torch.stack([b - a, a * (2 - c) - b, a * b - 3 * c], -1))
    assert isinstance(f.p, nn.Linear) and sum(p.numel() for p in f.parameters()) == 2  # torchdyn's placeholder


def test_lorenz_contracts_volume_and_stays_on_the_attractor():
    f = Lorenz()
    x = torch.tensor([1.0, -2.0, 20.0], dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda z: f(torch.tensor(0.0), z), x)
    assert float(torch.trace(jac)) == pytest.approx(-(10 + 1 + 8 / 3))  # div f = -(sigma + 1 + beta) everywhere
    _, sol = odeint(f, torch.tensor([[1.0, 1.0, 1.0]], dtype=F64), torch.linspace(0, 20, 201, dtype=F64),
                    solver="tsit5", atol=1e-6, rtol=1e-6)
    late = sol[100:, 0]
    assert float(late[:, :2].abs().max()) < 30 and 0 < float(late[:, 2].min()) and float(late[:, 2].max()) < 50
    assert float(late[:, 0].min()) < -5 and float(late[:, 0].max()) > 5  # visits both wings


def test_bad_states_and_parameters_are_refused():
    with pytest.raises(ValueError, match=r"VanDerPol takes states \[\.\.\., 2\].*\(4, 3\)"):
        VanDerPol()(torch.tensor(0.0), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"Lorenz takes states \[\.\.\., 3\].*\(2,\)"):
        Lorenz()(torch.tensor(0.0), torch.zeros(2))
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        VanDerPol("10")
    with pytest.raises(ValueError, match="rho must be a finite number"):
        Lorenz(rho=float("nan"))
    with pytest.raises(TypeError):
        Lorenz(10.0)  # nodecore's parameters are keyword-only; torchdyn's Lorenz takes none
