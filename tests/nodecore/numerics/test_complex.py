"""Complex states: ``dx/dt = λ x`` with complex ``λ`` against ``x(t) = exp(λ t) x0``, on every solver.

Times stay real (the real dtype of the state's precision), the error norm is real, and a real state takes
exactly the path it took before complex states were allowed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nodecore import NeuralODE
from nodecore.numerics import SOLVERS, odeint

LAM = complex(-0.5, 3.0)
T_END = 2.0
C64, C128 = torch.complex64, torch.complex128
REAL = {C64: torch.float32, C128: torch.float64}
ADAPTIVE = [name for name, s in SOLVERS.items() if s.adaptive]

# Steps per unit 0.5 of time (t in [0, 2]) for the order fits: complex128 errors ~1e-1..1e-13.
STEPS = {
    "euler": [16, 32, 64, 128],
    "midpoint": [4, 8, 16, 32],
    "rk4": [2, 4, 8, 16],
    "rk4_38": [2, 4, 8, 16],
    "adaptive_heun": [4, 8, 16, 32],
    "bosh3": [2, 4, 8, 16],
    "dopri5": [2, 4, 8, 16],
    "tsit5": [2, 4, 8, 16],
    "dopri8": [2, 4, 8],
}


def x0_of(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([1 + 0.5j, -0.3 + 1j], dtype=dtype)


def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    assert not t.is_complex() and t.dtype == REAL[x.dtype]  # times stay real, of the state's precision
    return LAM * x


def exact(t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``[T, 2]`` ``exp(λ t) x0`` in complex128."""
    return torch.exp(LAM * t.to(torch.float64))[:, None] * x0.to(C128)


def slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def test_every_solver_has_a_step_plan():
    assert set(STEPS) == set(SOLVERS)


@pytest.mark.parametrize("name", SOLVERS)
def test_fixed_step_convergence_order_complex128(name):
    x0, t_span = x0_of(C128), torch.linspace(0, T_END, 5, dtype=torch.float64)
    want = exact(t_span, x0)
    hs, errors = [], []
    for m in STEPS[name]:
        t_eval, sol = odeint(field, x0, t_span, solver=name, step_size=0.5 / m)
        assert sol.dtype == C128 and t_eval.dtype == torch.float64
        hs.append(0.5 / m)
        errors.append((sol - want).abs().max().item())
    assert 1e-14 < min(errors) and max(errors) < 1.0, errors
    order = SOLVERS[name].order
    assert order - 0.5 <= slope(hs, errors) <= order + 1.0, (name, order, errors)


@pytest.mark.parametrize("name", SOLVERS)
def test_fixed_step_complex64(name):
    """Low orders: the measured order (errors stay above float32 round-off). High orders reach round-off at
    once, so they are checked to be the same method as in complex128 (equal to float32 accuracy)."""
    x0, t_span = x0_of(C64), torch.linspace(0, T_END, 5)
    order = SOLVERS[name].order
    if order <= 4:
        want = exact(t_span, x0)
        hs, errors = [], []
        for m in STEPS[name][:3]:
            _, sol = odeint(field, x0, t_span, solver=name, step_size=0.5 / m)
            assert sol.dtype == C64
            hs.append(0.5 / m)
            errors.append((sol.to(C128) - want).abs().max().item())
        assert min(errors) > 1e-5, errors
        assert order - 0.5 <= slope(hs, errors) <= order + 1.0, (name, order, errors)
    else:
        h = 0.5 / STEPS[name][0]
        _, sol = odeint(field, x0, t_span, solver=name, step_size=h)
        _, ref = odeint(field, x0.to(C128), t_span.double(), solver=name, step_size=h)
        assert (sol.to(C128) - ref).abs().max().item() < 1e-5


TOLERANCES = {C64: 1e-5, C128: 1e-8}


def tolerance(name: str, dtype: torch.dtype) -> float:
    """Tight, but loose enough for a 2nd-order pair to finish within max_steps."""
    return TOLERANCES[dtype] * (100 if SOLVERS[name].order <= 2 else 1)


def _scaled_error(sol: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    """max |error| / (atol + rtol |x|): the global error in units of the per-step tolerance."""
    return ((sol.to(C128) - want).abs() / (tol + tol * want.abs())).max().item()


@pytest.mark.parametrize("dtype", [C64, C128])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_within_tolerance(name, dtype):
    x0, t_span = x0_of(dtype), torch.linspace(0, T_END, 5, dtype=REAL[dtype])
    tol = tolerance(name, dtype)
    t_eval, sol, counts = odeint(field, x0, t_span, solver=name, atol=tol, rtol=tol, interpolator="step",
                                 return_stats=True)
    assert sol.dtype == dtype and t_eval.dtype == REAL[dtype]
    assert counts.attempts > 4  # error control did work
    assert _scaled_error(sol, exact(t_span, x0), tol) < 50


@pytest.mark.parametrize("dtype", [C64, C128])
@pytest.mark.parametrize("name", [n for n in ADAPTIVE if SOLVERS[n].cls.tableau.dense is not None])
def test_dense_output_at_inner_points(name, dtype):
    """``interpolator='dense'`` reads 81 points off the dense output, in fewer steps than stepping onto them (the
    default, torchdyn's)."""
    x0, t_span = x0_of(dtype), torch.linspace(0, T_END, 81, dtype=REAL[dtype])
    tol = tolerance(name, dtype)
    _, sol, counts = odeint(field, x0, t_span, solver=name, atol=tol, rtol=tol, interpolator="dense",
                            return_stats=True)
    *_, stepped = odeint(field, x0, t_span, solver=name, atol=tol, rtol=tol, return_stats=True)
    assert counts.attempts < stepped.attempts
    assert _scaled_error(sol, exact(t_span, x0), tol) < 100


@pytest.mark.parametrize("name", SOLVERS)
def test_real_system_embedded_as_complex_matches_the_real_solve(name):
    """A real system with zero imaginary parts takes the same steps as its real solve."""
    x0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    t_span = torch.linspace(0, 1, 6, dtype=torch.float64)

    def real_field(t, x):
        return -t * x + torch.sin(x.real) if x.is_complex() else -t * x + torch.sin(x)

    _, real, real_counts = odeint(real_field, x0, t_span, solver=name, atol=1e-7, rtol=1e-7, return_stats=True)
    _, embedded, counts = odeint(real_field, x0.to(C128), t_span, solver=name, atol=1e-7, rtol=1e-7,
                                 return_stats=True)
    assert counts.attempts == real_counts.attempts and counts.rejected == real_counts.rejected
    assert (embedded.real - real).abs().max().item() < 1e-12
    assert embedded.imag.abs().max().item() == 0.0


class ComplexLinear(nn.Module):
    """``dx/dt = λ x`` with a complex parameter ``λ``."""

    def __init__(self, lam: complex) -> None:
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(lam, dtype=C128))

    def forward(self, t, x):
        return self.lam * x


class RealRate(nn.Module):
    """``dx/dt = (a + 3i) x`` with a real parameter ``a`` acting on a complex state."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t, x):
        return (self.a + 3j) * x


SENSITIVITIES = ("autograd", "adjoint", "interpolated_adjoint")
X0 = torch.tensor([[1 + 0.5j, -0.3 + 1j]], dtype=C128)


def _gradients(vf: nn.Module, sensitivity: str, loss) -> tuple[torch.Tensor, torch.Tensor]:
    model = NeuralODE(vf, solver="dopri5", sensitivity=sensitivity, atol=1e-10, rtol=1e-10, atol_adjoint=1e-10,
                      rtol_adjoint=1e-10)
    x = X0.clone().requires_grad_(True)
    _, trajectory = model(x, torch.tensor([0.0, 0.7, T_END], dtype=torch.float64))
    loss(trajectory[-1]).backward()
    (param,) = vf.parameters()
    return x.grad, param.grad


def _norm_loss(x):
    return x.abs().pow(2).sum()


@pytest.mark.parametrize("sensitivity", SENSITIVITIES)
def test_gradients_of_the_squared_modulus_are_analytic(sensitivity):
    """``L = Σ |e^{λT} x0|^2 = e^{2 Re(λ) T} Σ |x0|^2``; torch's gradient of a real loss with respect to a complex
    ``z`` is ``∂L/∂Re z + i ∂L/∂Im z``: ``2 e^{2 Re(λ) T} x0`` for ``x0``, and ``2 T L`` (real) for ``λ``."""
    growth = math.exp(2 * LAM.real * T_END)
    loss_value = growth * X0.abs().pow(2).sum()
    for vf in (ComplexLinear(LAM), RealRate(LAM.real)):
        x_grad, p_grad = _gradients(vf, sensitivity, _norm_loss)
        assert p_grad.dtype == next(vf.parameters()).dtype  # a real parameter gets a real gradient
        torch.testing.assert_close(x_grad, 2 * growth * X0, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(p_grad.to(C128), (2 * T_END * loss_value).to(C128), rtol=1e-7, atol=1e-9)


def _phase_loss(x):
    return (x.real.pow(3) + 2 * x.imag).sum()


@pytest.mark.parametrize("sensitivity", ["adjoint", "interpolated_adjoint"])
def test_adjoint_gradients_match_autograd_and_finite_differences(sensitivity):
    """A loss that depends on the phase (so ``∂L/∂Im λ`` is not 0): every method agrees with autograd, and
    autograd with central differences of the real and imaginary parts."""
    want_x, want_p = _gradients(ComplexLinear(LAM), "autograd", _phase_loss)
    x_grad, p_grad = _gradients(ComplexLinear(LAM), sensitivity, _phase_loss)
    torch.testing.assert_close(x_grad, want_x, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(p_grad, want_p, rtol=1e-6, atol=1e-8)

    def loss_at(lam: complex) -> float:
        x_t = torch.exp(torch.tensor(lam * T_END, dtype=C128)) * X0
        return float(_phase_loss(x_t))

    eps = 1e-6
    d_re = (loss_at(LAM + eps) - loss_at(LAM - eps)) / (2 * eps)
    d_im = (loss_at(LAM + 1j * eps) - loss_at(LAM - 1j * eps)) / (2 * eps)
    torch.testing.assert_close(want_p, torch.tensor(complex(d_re, d_im), dtype=C128), rtol=1e-5, atol=1e-6)


def test_torchdiffeq_backend_autograd_and_clear_adjoint_refusal():
    vf = ComplexLinear(LAM)
    t_span = torch.tensor([0.0, T_END], dtype=torch.float64)
    _, trajectory = NeuralODE(vf, solver="dopri5", backend="torchdiffeq", atol=1e-9, rtol=1e-9)(X0, t_span)
    torch.testing.assert_close(trajectory[-1], exact(t_span, X0[0])[-1][None], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="complex state.*backend='nodecore'"):
        NeuralODE(vf, solver="dopri5", backend="torchdiffeq", sensitivity="adjoint")(X0, t_span)


def test_bad_dtypes_get_clear_errors():
    with pytest.raises(TypeError, match="floating-point or complex"):
        odeint(field, torch.tensor([1, 2]), [0.0, 1.0])
    with pytest.raises(ValueError, match="floating point or complex"):
        NeuralODE(ComplexLinear(LAM))(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="t_span must be real"):
        odeint(field, x0_of(C128), torch.tensor([0.0, 1.0], dtype=C128))
    # Complex parameters on a real state would leave the real state space.
    with pytest.raises(ValueError, match="make x complex"):
        NeuralODE(ComplexLinear(LAM))(torch.ones(1, 2, dtype=torch.float64))
    # A real parameter of another precision than the complex state.
    with pytest.raises(ValueError, match="parameters are torch.float64"):
        NeuralODE(RealRate(-0.5))(torch.ones(1, 2, dtype=C64))
