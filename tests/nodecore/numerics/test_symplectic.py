"""The asynchronous leapfrog and odeint_symplectic: the step's formula, bounded energy error on a harmonic
oscillator over long times (where an explicit method of the same order drifts), measured order 2, exact
reversibility, backward solves, adaptive stepping, gradients and the errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from nodecore.numerics import SYMPLECTIC_SOLVERS, AsynchronousLeapfrog, odeint, odeint_symplectic

F64 = torch.float64


class Oscillator(nn.Module):
    """``q' = p, p' = -q`` on ``x = [q, p]``: energy ``(q² + p²) / 2`` is conserved."""

    order = 1

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.cat([x[..., 1:], -x[..., :1]], -1)


def riccati(t: Tensor, y: Tensor) -> Tensor:
    """``y' = -2 t y²`` (nonlinear, non-autonomous): ``y(t) = y0 / (1 + y0 t²)`` from ``y0`` at 0."""
    return -2 * t * y**2


Y0 = torch.tensor([0.5, 1.0, 2.0], dtype=F64)


def augmented(f, x0: Tensor, t0: float = 0.0, dim: int = -1) -> Tensor:
    return torch.cat([x0, f(torch.tensor(t0, dtype=x0.dtype), x0)], dim)


def energy(xv: Tensor) -> Tensor:
    return 0.5 * (xv[..., :2] ** 2).sum(-1)


def slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def test_one_step_is_the_leapfrog_formula_at_one_evaluation():
    x, v = torch.tensor([[0.3, -1.2, 0.7]], dtype=F64), torch.tensor([[0.1, 0.4, -0.2]], dtype=F64)
    t0, h = 0.25, 0.1
    x_half = x + h / 2 * v
    v_new = 2 * riccati(torch.tensor(t0 + h / 2, dtype=F64), x_half) - v
    expected = torch.cat([x_half + h / 2 * v_new, v_new], -1)
    _, got, err = AsynchronousLeapfrog().step(riccati, torch.cat([x, v], -1), t0, h)
    assert err is None
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    _, sol, stats = odeint_symplectic(riccati, torch.cat([x, v], -1), [t0, t0 + h, t0 + 2 * h], "alf",
                                      return_stats=True)
    torch.testing.assert_close(sol[1], expected, rtol=0, atol=1e-15)
    assert stats.nfe == 2 and stats.attempts == 2  # one field evaluation per step


def test_harmonic_oscillator_energy_error_stays_bounded_over_long_times():
    f, h = Oscillator(), 0.2
    z0 = torch.tensor([[1.0, 0.0], [0.3, -0.8]], dtype=F64)
    t_span = torch.arange(5_001, dtype=F64) * h  # t in [0, 1000]: about 160 periods
    _, sol = odeint_symplectic(f, augmented(f, z0), t_span, AsynchronousLeapfrog())
    error = ((energy(sol) - energy(z0)) / energy(z0)).abs().max(dim=1).values  # [T], relative
    early, late = float(error[:500].max()), float(error[-500:].max())
    assert float(error.max()) < 1e-3  # small everywhere ...
    assert late <= 1.05 * early  # ... and no drift between the first and the last 100 time units
    # The control: explicit midpoint, also second order, gains ~50% energy in a fifth of that time.
    _, mid = odeint(f, z0, t_span[:1001], solver="midpoint")
    assert float(((energy(mid[-1]) - energy(z0)) / energy(z0)).min()) > 0.3


def test_energy_error_shrinks_with_the_step():
    f, z0 = Oscillator(), torch.tensor([[1.0, 0.0]], dtype=F64)
    bounds = []
    for h in (0.2, 0.1, 0.05):
        t_span = torch.arange(round(100 / h) + 1, dtype=F64) * h
        _, sol = odeint_symplectic(f, augmented(f, z0), t_span, "alf")
        bounds.append(float((energy(sol) - 0.5).abs().max()))
    assert slope([0.2, 0.1, 0.05], bounds) > 1.9  # at least second order in h


def test_measured_order_is_two_on_a_nonlinear_non_autonomous_problem():
    errors, hs = [], []
    for n in (24, 48, 96, 192):
        t_span = torch.linspace(0, 3, n + 1, dtype=F64)
        _, sol = odeint_symplectic(riccati, augmented(riccati, Y0), t_span, AsynchronousLeapfrog())
        exact = Y0 / (1 + Y0 * t_span[:, None] ** 2)
        errors.append(float((sol[:, :3] - exact).abs().max()))
        hs.append(3 / n)
    assert AsynchronousLeapfrog.order == 2
    assert abs(slope(hs, errors) - 2) < 0.1, errors


def test_exactly_reversible_and_backward_solves_keep_the_given_times():
    f, z0 = Oscillator(), torch.tensor([[0.6, 0.8]], dtype=F64)
    t_span = torch.linspace(0, 10, 201, dtype=F64)
    _, forward = odeint_symplectic(f, augmented(f, z0), t_span, "alf")
    t_back, back = odeint_symplectic(f, forward[-1], t_span.flip(0), "alf")
    torch.testing.assert_close(back[-1], forward[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(back.flip(0), forward, rtol=0, atol=1e-12)
    assert torch.equal(t_back, t_span.flip(0))  # the times as given (not negated)
    # A backward solve from x(10) with v = f(x(10)) tracks the exact backward flow to second order.
    z10 = torch.tensor([[math.cos(10) * 0.6 + math.sin(10) * 0.8, -math.sin(10) * 0.6 + math.cos(10) * 0.8]],
                       dtype=F64)
    _, back = odeint_symplectic(f, augmented(f, z10, 10.0), t_span.flip(0), "alf")
    torch.testing.assert_close(back[-1, :, :2], z0, rtol=0, atol=5e-3)


def test_save_at_selects_points_of_t_span():
    f, z0 = Oscillator(), torch.tensor([[1.0, 0.0]], dtype=F64)
    t_span = torch.linspace(0, 2, 21, dtype=F64)
    _, full = odeint_symplectic(f, augmented(f, z0), t_span, "alf")
    t_eval, some = odeint_symplectic(f, augmented(f, z0), t_span, "alf", save_at=t_span[::5])
    assert torch.equal(t_eval, t_span[::5])
    torch.testing.assert_close(some, full[::5], rtol=0, atol=0)


def test_solver_names_and_channel_index():
    assert set(SYMPLECTIC_SOLVERS) == {"alf", "AsynchronousLeapfrog"}
    f = Oscillator()
    xv = augmented(f, torch.tensor([[1.0, 0.0], [0.2, 0.3]], dtype=F64))
    t_span = torch.linspace(0, 1, 11, dtype=F64)
    _, by_object = odeint_symplectic(f, xv, t_span, AsynchronousLeapfrog())
    for name in SYMPLECTIC_SOLVERS:
        torch.testing.assert_close(odeint_symplectic(f, xv, t_span, name)[1], by_object, rtol=0, atol=0)

    class ChannelOscillator(nn.Module):  # the same oscillator on [B, 2 (q, p), L]
        def forward(self, t, x):
            return torch.cat([x[:, 1:], -x[:, :1]], 1)

    # [B, 4, L] with [x, v] along dim 1: each of the L columns is the last-dim problem above.
    columns = xv.reshape(2, 2, 2).permute(0, 2, 1).reshape(2, 4, 1).expand(2, 4, 3).contiguous()
    solver = AsynchronousLeapfrog(channel_index=1)
    _, by_channel = odeint_symplectic(ChannelOscillator(), columns, t_span, solver)
    assert solver.x_shape == 2
    torch.testing.assert_close(by_channel[:, :, :, 0], by_object, rtol=0, atol=1e-15)


def test_adaptive_stepping_meets_tighter_tolerances_with_more_steps():
    f, z0 = Oscillator(), torch.tensor([[1.0, 0.0]], dtype=F64)
    t_span = torch.linspace(0, 2 * math.pi, 5, dtype=F64)
    exact = torch.stack([torch.cos(t_span), -torch.sin(t_span)], -1)
    errors, steps = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        solver = AsynchronousLeapfrog(stepping_class="adaptive")
        t_eval, sol, stats = odeint_symplectic(f, augmented(f, z0), t_span, solver, atol=tol, rtol=tol,
                                               return_stats=True)
        assert torch.equal(t_eval, t_span)
        errors.append(float((sol[:, 0, :2] - exact).abs().max()))
        steps.append(stats.steps)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
    assert steps[0] < steps[1] < steps[2]
    t_all, _ = odeint_symplectic(f, augmented(f, z0), t_span, AsynchronousLeapfrog(stepping_class="adaptive"),
                                 atol=1e-6, rtol=1e-6, return_all_eval=True)
    assert len(t_all) == steps[1] + 1 and bool((t_all.diff() > 0).all())
    assert all(bool(torch.isclose(t, t_all).any()) for t in t_span)


def test_adaptive_error_estimate_is_step_doubling():
    xv = augmented(riccati, Y0)
    solver = AsynchronousLeapfrog(stepping_class="adaptive")
    _, fine, err = solver.step(riccati, xv, 0.1, 0.2)
    _, one, _ = AsynchronousLeapfrog().step(riccati, xv, 0.1, 0.2)
    _, half, _ = AsynchronousLeapfrog().step(riccati, xv, 0.1, 0.1)
    _, two, _ = AsynchronousLeapfrog().step(riccati, half, 0.2, 0.1)
    torch.testing.assert_close(fine, two, rtol=0, atol=0)
    torch.testing.assert_close(err, torch.cat([(two[:3] - one[:3]) / 3, torch.zeros(3, dtype=F64)]), rtol=0, atol=1e-16)


def test_gradients_match_finite_differences():
    f = Oscillator()
    xv = augmented(f, torch.tensor([[0.4, -0.3]], dtype=F64)).requires_grad_()
    t_span = torch.linspace(0, 1, 6, dtype=F64)
    assert torch.autograd.gradcheck(lambda x: odeint_symplectic(riccati, x, t_span, "alf")[1], (xv,))


def test_bad_input_is_refused_with_a_clear_message():
    f = Oscillator()
    xv = augmented(f, torch.tensor([[1.0, 0.0]], dtype=F64))
    t_span = torch.linspace(0, 1, 5, dtype=F64)
    with pytest.raises(ValueError, match="even size"):
        odeint_symplectic(f, xv[:, :3], t_span, "alf")
    with pytest.raises(ValueError, match="unknown symplectic solver 'leapfrog'.*alf"):
        odeint_symplectic(f, xv, t_span, "leapfrog")
    with pytest.raises(ValueError, match="stepping_class"):
        AsynchronousLeapfrog(stepping_class="variable")
    with pytest.raises(ValueError, match="channel_index=2"):
        odeint_symplectic(f, xv, t_span, AsynchronousLeapfrog(channel_index=2))

    class SecondOrder(nn.Module):
        order = 2

        def forward(self, t, x):
            return -x

    with pytest.raises(ValueError, match="order=2"):
        odeint_symplectic(SecondOrder(), xv, t_span, "alf")
    with pytest.raises(ValueError, match="strictly increasing"):
        odeint_symplectic(f, xv, torch.tensor([0.0, 1.0, 0.5], dtype=F64), "alf")
    with pytest.raises(ValueError, match="atol"):
        odeint_symplectic(f, xv, t_span, "alf", atol=-1.0)
    with pytest.raises(ValueError, match="save_at"):
        odeint_symplectic(f, xv, t_span, "alf", save_at=[0.3])
    with pytest.raises(TypeError, match="AsynchronousLeapfrog"):
        odeint_symplectic(f, xv, t_span, object())


@pytest.mark.parametrize("solver", ["alf", "AsynchronousLeapfrog", AsynchronousLeapfrog()], ids=["alf", "name", "object"])
def test_odeint_takes_the_leapfrog_as_torchdyn_does(solver):
    """torchdyn lists 'alf' with the Runge–Kutta solvers: odeint hands it to odeint_symplectic, same result."""
    x0 = torch.tensor([[0.5, 1.0, 2.0]], dtype=F64)
    xv = augmented(riccati, x0)
    t_span = torch.linspace(0.0, 1.0, 11, dtype=F64)
    t_eval, solution, stats = odeint(riccati, xv, t_span, solver, return_stats=True)
    _, expected = odeint_symplectic(riccati, xv, t_span, "alf")
    assert torch.equal(t_eval, t_span)
    torch.testing.assert_close(solution, expected, rtol=0, atol=0)
    assert stats.nfe == len(t_span) - 1
    exact = x0 / (1 + x0 * t_span[-1] ** 2)
    assert float((solution[-1][..., :3] - exact).abs().max()) < 0.01


def test_odeint_refuses_options_the_leapfrog_does_not_take():
    xv = augmented(riccati, Y0[None])
    with pytest.raises(ValueError, match=r"does not take step_size, first_step; it takes atol"):
        odeint(riccati, xv, [0.0, 1.0], "alf", step_size=0.1, first_step=0.01)
