"""torchdyn's Galerkin layers by name (nodecore.nn.GalLinear, GalConv2d and the basis objects): parameter shapes,
outputs equal to the closed-form expansion for known coefficients, the depth read from DepthCat's column (also
inside a NeuralODE), gradients to every coefficient, and the cases where torchdyn's layers misbehave."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import nodecore.nn as ncnn
from nodecore import NeuralODE
from nodecore.fields import DepthCat
from nodecore.nn import (
    Chebychev,
    Fourier,
    GalConv2d,
    GalLayer,
    GalLinear,
    GaussianRBF,
    MultiquadRBF,
    Polynomial,
    VanillaRBF,
)
from nodecore.numerics import odeint

F64 = torch.float64
DILATION, SHIFT = 2.0, 0.1


def with_depth(x: Tensor, t: float) -> Tensor:
    """``x`` with DepthCat's depth column (channel) appended."""
    cat = DepthCat(1)
    cat.t = torch.tensor(t, dtype=x.dtype)
    return cat(x)


def chebyshev(n: int, s: float) -> float:
    return [1.0, s, 2 * s * s - 1, 4 * s**3 - 3 * s, 8 * s**4 - 8 * s * s + 1][n]


def closed_form(name: str, coeffs: Tensor, s: float) -> Tensor:
    """``[rows]``: every weight at ``s``, written out per basis (centers 0 and scale 2 for the radial ones)."""
    rows, deg, _ = coeffs.shape
    w = torch.zeros(rows, dtype=coeffs.dtype)
    for n in range(deg):
        if name == "Fourier":
            w += coeffs[:, n, 0] * math.cos(n * s) + coeffs[:, n, 1] * math.sin(n * s)
        else:
            phi = {
                "Polynomial": s**n,
                "Chebychev": chebyshev(n, s),
                "VanillaRBF": abs(s) * n / 2,
                "MultiquadRBF": 1 + math.sqrt(1 + (abs(s) * n / 2) ** 2),
                "GaussianRBF": math.exp(-((abs(s) * n / 2) ** 2)),
            }[name]
            w += coeffs[:, n, 0] * phi
    return w


BASES = {"Fourier": Fourier, "Polynomial": Polynomial, "Chebychev": Chebychev, "VanillaRBF": VanillaRBF,
         "MultiquadRBF": MultiquadRBF, "GaussianRBF": GaussianRBF}


def randomised(layer: GalLayer, seed: int = 0) -> GalLayer:
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.coeffs.normal_()
        layer.dilation.fill_(DILATION)
        layer.shift.fill_(SHIFT)
    return layer


def test_exported_from_nodecore_nn():
    for name in ("GalLayer", "GalLinear", "GalConv2d", *BASES):
        assert name in ncnn.__all__ and getattr(ncnn, name) is globals()[name]
    assert "GalerkinLinear" in ncnn.__all__  # nodecore's own layer stays


@pytest.mark.parametrize("name", list(BASES))
def test_shapes_are_torchdyns(name: str):
    deg = 4
    n_eig = 2 if name == "Fourier" else 1
    layer = GalLinear(3, 2, expfunc=BASES[name](deg))
    assert layer.coeffs.shape == ((3 + 1) * 2, deg, n_eig) and (layer.deg, layer.n_eig) == (deg, n_eig)
    assert set(layer.state_dict()) == {"dilation", "shift", "coeffs"}
    assert GalLinear(3, 2, bias=False, expfunc=BASES[name](deg)).coeffs.shape == (3 * 2, deg, n_eig)
    conv = GalConv2d(2, 3, kernel_size=3, expfunc=BASES[name](deg))
    assert conv.coeffs.shape == (3 * 2 * 9 + 3, deg, n_eig) and (conv.ic, conv.oc, conv.ks, conv.pad, conv.stride) == (
        2, 3, 3, 0, 1)
    assert GalConv2d(2, 3, bias=False, expfunc=BASES[name](deg)).coeffs.shape == (3 * 2 * 9, deg, n_eig)


def test_defaults_and_fixed_dilation_and_shift():
    a, b = GalLinear(2, 2), GalLinear(2, 2)
    assert isinstance(a.expfunc, Fourier) and a.expfunc.deg == 5 and a.expfunc is not b.expfunc  # fresh Fourier(5)
    assert a(with_depth(torch.randn(4, 2), 0.3)).abs().max() == 0  # torchdyn's zero initialisation
    fixed = GalLinear(2, 2, dilation=False, shift=False)
    assert [n for n, _ in fixed.named_parameters()] == ["coeffs"] and set(fixed.state_dict()) == {"coeffs"}
    assert float(fixed.dilation) == 1.0 and float(fixed.shift) == 0.0
    assert fixed.double().dilation.dtype == F64  # buffers follow the module


@pytest.mark.parametrize("name", list(BASES))
@pytest.mark.parametrize("bias", [True, False])
def test_gal_linear_is_the_closed_form_expansion(name: str, bias: bool):
    layer = randomised(GalLinear(3, 2, bias=bias, expfunc=BASES[name](4)).double())
    x, t = torch.randn(5, 3, dtype=F64), 0.4
    w = closed_form(name, layer.coeffs.detach(), DILATION * t + SHIFT)
    weight = w[:6].reshape(2, 3)
    expected = x @ weight.T + (w[6:] if bias else 0)
    out = layer(with_depth(x, t))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight, weight, rtol=0, atol=1e-12)  # torchdyn keeps the last weights
    assert (layer.bias is None) == (not bias)


@pytest.mark.parametrize("name", list(BASES))
def test_gal_conv2d_is_the_closed_form_expansion(name: str):
    layer = randomised(GalConv2d(2, 3, kernel_size=3, stride=2, padding=1, expfunc=BASES[name](3)).double())
    x, t = torch.randn(2, 2, 7, 7, dtype=F64), 0.25
    w = closed_form(name, layer.coeffs.detach(), DILATION * t + SHIFT)
    expected = F.conv2d(x, w[:54].reshape(3, 2, 3, 3), w[54:], stride=2, padding=1)
    torch.testing.assert_close(layer(with_depth(x, t)), expected, rtol=0, atol=1e-12)


def test_the_depth_is_the_last_rows_depth_column():
    layer = randomised(GalLinear(2, 3, expfunc=Fourier(3)).double())
    x = torch.randn(4, 2, dtype=F64)
    at = {t: layer(with_depth(x, t)) for t in (0.1, 0.9)}
    assert (at[0.1] - at[0.9]).abs().max() > 1e-3  # the weights move with the depth
    mixed = with_depth(x, 0.1)
    mixed[-1, -1] = 0.9
    torch.testing.assert_close(layer(mixed), at[0.9], rtol=0, atol=0)  # as torchdyn: the last row's depth


def test_inside_a_neural_ode_the_weights_follow_the_solvers_depth():
    """A polynomial Galerkin field W(t) = A0 + A1 t, b(t) = b0 + b1 t, solved by NeuralODE and by hand."""
    layer = GalLinear(2, 2, expfunc=Polynomial(2), dilation=False, shift=False).double()
    torch.manual_seed(2)
    with torch.no_grad():
        layer.coeffs.normal_(std=0.5)
    c = layer.coeffs.detach()[:, :, 0]  # [rows, 2]: constant and linear terms

    def by_hand(t: Tensor, x: Tensor) -> Tensor:
        w = c[:, 0] + c[:, 1] * t
        return x @ w[:4].reshape(2, 2).T + w[4:]

    x0, t_span = torch.randn(3, 2, dtype=F64), torch.linspace(0, 1, 11, dtype=F64)
    model = NeuralODE(nn.Sequential(DepthCat(1), layer), solver="rk4")
    _, sol = model(x0, t_span)
    _, expected = odeint(by_hand, x0, t_span, solver="rk4")
    torch.testing.assert_close(sol, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(BASES))
def test_gradients_reach_the_coefficients_dilation_and_shift(name: str):
    layer = randomised(GalLinear(2, 2, expfunc=BASES[name](3)).double())
    x = torch.randn(3, 2, dtype=F64)
    layer(with_depth(x, 0.4)).square().sum().backward()
    for p in (layer.coeffs, layer.dilation, layer.shift):
        assert p.grad is not None and float(p.grad.abs().max()) > 0  # (torchdyn's Chebychev cuts dilation, shift)
    inputs = (layer.coeffs.detach().clone().requires_grad_(), layer.dilation.detach().clone().requires_grad_(),
              layer.shift.detach().clone().requires_grad_())

    def output(coeffs, dilation, shift):
        return torch.func.functional_call(layer, {"coeffs": coeffs, "dilation": dilation, "shift": shift},
                                          (with_depth(x, 0.4),))

    assert torch.autograd.gradcheck(output, inputs)


def test_polynomial_at_negative_depths_is_finite():
    layer = randomised(GalLinear(2, 2, expfunc=Polynomial(4)).double())
    x, t = torch.randn(3, 2, dtype=F64), -0.7
    w = closed_form("Polynomial", layer.coeffs.detach(), DILATION * t + SHIFT)
    torch.testing.assert_close(layer(with_depth(x, t)), x @ w[:4].reshape(2, 2).T + w[4:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [VanillaRBF, MultiquadRBF, GaussianRBF])
def test_radial_bases_use_their_centers_and_scales_and_learn_them_when_adaptive(cls):
    n, s = torch.arange(4, dtype=F64), torch.tensor(0.9, dtype=F64)
    fixed = cls(4, eps_scales=0.5, centers=0.3).double()
    r, scale, c = abs(0.9 - 0.3), 0.5, 0.3
    expected = {VanillaRBF: r * n / scale, MultiquadRBF: 1 + torch.sqrt(1 + (r * n / scale) ** 2),
                GaussianRBF: torch.exp(-((r * (n - c) / scale) ** 2))}[cls]
    torch.testing.assert_close(fixed(n, s)[0], expected, rtol=0, atol=1e-14)
    assert not list(fixed.parameters())
    adaptive = cls(4, adaptive=True)
    assert {k: tuple(p.shape) for k, p in adaptive.named_parameters()} == {"centers": (4,), "eps_scales": (4,)}
    layer = randomised(GalLinear(2, 2, expfunc=adaptive))
    layer(with_depth(torch.randn(3, 2), 0.4)).sum().backward()
    assert float(adaptive.centers.grad.abs().max()) > 0 and float(adaptive.eps_scales.grad.abs().max()) > 0


def test_a_duck_typed_basis_object_works():
    class Constant(nn.Module):
        deg, n_eig = 2, 1

        def forward(self, n_range, s):
            return [torch.ones_like(n_range)]

    layer = GalLinear(2, 1, expfunc=Constant(), bias=False).double()
    with torch.no_grad():
        layer.coeffs.copy_(torch.tensor([[[1.0], [2.0]], [[0.5], [0.5]]]))
    x = torch.tensor([[1.0, 2.0]], dtype=F64)
    torch.testing.assert_close(layer(with_depth(x, 0.3)), torch.tensor([[3.0 * 1 + 1.0 * 2]], dtype=F64))


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"takes \[\.\.\., 4\] inputs.*DepthCat"):
        GalLinear(3, 2)(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"takes \[B, 3, H, W\].*DepthCat"):
        GalConv2d(2, 4)(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="expfunc must be a basis object"):
        GalLinear(3, 2, expfunc="Fourier")
    with pytest.raises(ValueError, match="deg must be an integer >= 1, got 0"):
        Fourier(0)
    with pytest.raises(ValueError, match="in_features must be an integer >= 1"):
        GalLinear(0, 2)
    with pytest.raises(ValueError, match="eps_scales must be a finite nonzero number"):
        GaussianRBF(3, eps_scales=0)
    with pytest.raises(ValueError, match="Chebychev orders must be integers"):
        Chebychev(3)(torch.linspace(0, 3, 3), torch.tensor(0.5))
