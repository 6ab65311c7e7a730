"""torchdyn's solver module paths (numerics.solvers.ode / .hyper / .templates): solvers of your own written on
torchdyn's templates, its lookup tables and tableau constructors."""

from __future__ import annotations

import math

import pytest
import torch

from nodecore import NeuralODE
from nodecore.numerics import HyperEuler, IntegralController, StepCounts, odeint, odeint_mshooting
from nodecore.numerics.integrate import integrate
from nodecore.numerics.solvers import hyper, templates
from nodecore.numerics.solvers.ode import (
    MS_SOLVER_DICT,
    SOLVER_DICT,
    MSBackward,
    MSForward,
    SolverTemplate,
    construct_dopri5,
    construct_rk4,
    construct_tsit5,
    str_to_ms_solver,
    str_to_solver,
)

F64 = torch.float64
T_SPAN = torch.linspace(0, 1, 21, dtype=F64)


def _x0() -> torch.Tensor:
    return torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))


def _rotation(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([-x[:, 1], x[:, 0]], 1) * (1 + 0.5 * torch.cos(t))


class HandMidpoint(SolverTemplate):
    def __init__(self) -> None:
        super().__init__(order=2)
        self.stepping_class = "fixed"

    def step(self, f, x, t, dt, k1=None, args=None):
        half = x + 0.5 * dt * f(t, x)
        return None, x + dt * f(t + 0.5 * dt, half), None


class TableauRK4(SolverTemplate):
    """A step of your own reading torchdyn's tableau layout, float32 until the solve syncs it."""

    def __init__(self) -> None:
        super().__init__(order=4)
        self.stepping_class = "fixed"
        self.tableau = construct_rk4(torch.float32)
        self.synced: list[torch.dtype] = []
        self.t_spans: list[torch.Tensor] = []

    def sync_device_dtype(self, x, t_span):
        out = super().sync_device_dtype(x, t_span)
        self.synced.append(self.tableau[0].dtype)
        self.t_spans.append(t_span)
        return out

    def step(self, f, x, t, dt, k1=None, args=None):
        c, a, b, _ = self.tableau
        k = [f(t, x)]
        for node, row in zip(c, a):
            k.append(f(t + node * dt, x + dt * sum(w * kj for w, kj in zip(row, k))))
        return None, x + dt * sum(w * kj for w, kj in zip(b, k)), None


def test_a_solver_of_your_own_on_torchdyns_template_is_stepped_through_its_step() -> None:
    _, ours = odeint(_rotation, _x0(), T_SPAN, HandMidpoint())
    _, nodecores = odeint(_rotation, _x0(), T_SPAN, "midpoint")
    assert torch.allclose(ours, nodecores, atol=1e-14)
    solver = TableauRK4()
    _, by_tableau = odeint(_rotation, _x0(), T_SPAN, solver)
    assert solver.synced == [F64] and by_tableau.dtype == F64  # synced to the state before the solve
    (seen,) = solver.t_spans  # the hook sees t_span as torchdyn's loop hands it: the state's device and precision
    assert seen.dtype == F64 and seen.device == _x0().device and torch.equal(seen, T_SPAN.to(F64))
    # the same method; its weights were rounded to float32 when built (1/6 to 1e-8), as in torchdyn
    assert torch.allclose(by_tableau, odeint(_rotation, _x0(), T_SPAN, "rk4")[1], atol=1e-6)
    model = NeuralODE(_rotation, solver=HandMidpoint())
    assert torch.allclose(model(_x0(), T_SPAN)[1], nodecores, atol=1e-14)


def test_the_constructed_tableaus_satisfy_their_order_conditions() -> None:
    for construct, order in ((construct_rk4, 4), (construct_dopri5, 5), (construct_tsit5, 5)):
        c, a, b, b_err = construct(F64)
        nodes = torch.cat([torch.zeros(1, dtype=F64), c])
        assert all(row.sum().item() == pytest.approx(node.item(), abs=1e-14) for row, node in zip(a, c))
        for q in range(1, order + 1):  # the bushy-tree conditions sum_i b_i c_i^(q-1) = 1/q
            assert float((b * nodes[: b.numel()] ** (q - 1)).sum()) == pytest.approx(1 / q, abs=1e-13)
        assert float(b_err.sum()) == pytest.approx(0.0, abs=1e-14)  # b - b_hat: both sum to one
        assert c.dtype == F64 and all(row.dtype == F64 for row in a)


def test_torchdyns_lookup_tables_and_helpers() -> None:
    torchdyn_names = {"euler", "midpoint", "rk4", "rk-4", "RungeKutta4", "dopri5", "DormandPrince45",
                      "DormandPrince5", "tsit5", "Tsitouras45", "Tsitouras5", "alf", "AsynchronousLeapfrog"}
    assert torchdyn_names <= set(SOLVER_DICT)
    assert {"mszero", "zero", "parareal", "msbackward", "backward", "discrete-adjoint"} <= set(MS_SOLVER_DICT)
    assert type(str_to_solver("DormandPrince5", F64)).__name__ == "DormandPrince45"
    assert isinstance(str_to_ms_solver("discrete-adjoint"), MSBackward)
    with pytest.raises(ValueError, match="unknown solver 'rk5'; valid solvers: .*Tsitouras5"):
        str_to_solver("rk5")
    with pytest.raises(ValueError, match="unknown multiple-shooting solver 'ms'"):
        str_to_ms_solver("ms")
    _, spelled = odeint(_rotation, _x0(), T_SPAN, "DormandPrince5", atol=1e-8, rtol=1e-8)
    _, named = odeint(_rotation, _x0(), T_SPAN, "dopri5", atol=1e-8, rtol=1e-8)
    assert torch.equal(spelled, named)


def test_msforward_solves_the_shooting_equations() -> None:
    f = lambda t, x: -x  # noqa: E731
    x0 = _x0()
    t_span = torch.linspace(0, 1, 5, dtype=F64)
    _, forward = odeint_mshooting(f, x0, t_span, MSForward(), fine_steps=20, maxiter=4)
    _, backward = odeint_mshooting(f, x0, t_span, MSBackward(), fine_steps=20, maxiter=4)
    assert torch.allclose(forward, backward, atol=1e-12)
    assert torch.allclose(forward[-1], x0 * math.exp(-1), atol=1e-8)


def test_the_hyper_and_templates_paths() -> None:
    assert hyper.HyperEuler is HyperEuler
    assert templates.MultipleShootingDiffeqSolver is MSBackward.__mro__[1]
    with pytest.raises(ValueError, match="stepping_class 'implicit'; valid stepping classes: fixed, adaptive"):
        templates.DiffEqSolver(order=1, stepping_class="implicit")
    with pytest.raises(NotImplementedError, match="must define step"):
        odeint(_rotation, _x0(), T_SPAN, templates.BaseExplicit(order=1))


class HandHeunEuler(SolverTemplate):
    """An adaptive solver of your own: Heun's step with Euler's as the embedded estimate."""

    def __init__(self) -> None:
        super().__init__(order=2)
        self.stepping_class = "adaptive"

    def step(self, f, x, t, dt, k1=None, args=None):
        k1 = f(t, x) if k1 is None else k1
        k2 = f(t + dt, x + dt * k1)
        x_new = x + 0.5 * dt * (k1 + k2)
        return None, x_new, x_new - (x + dt * k1)


def test_an_adaptive_solver_of_your_own_is_error_controlled() -> None:
    exact = lambda x0, t: x0 * torch.exp(-t)  # noqa: E731
    x0 = _x0()
    t_span = torch.tensor([0.0, 2.0], dtype=F64)
    errors, steps = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        _, solution, counts = odeint(lambda t, x: -x, x0, t_span, HandHeunEuler(), atol=tol, rtol=tol,
                                     return_stats=True)
        errors.append(float((solution[-1] - exact(x0, t_span[-1])).abs().max()))
        steps.append(counts.attempts - counts.rejected)
    assert errors[0] > 10 * errors[1] > 100 * errors[2]  # the error follows the tolerance
    assert steps[0] < steps[1] < steps[2] and steps[0] > 1  # by taking more, shorter steps
    assert errors[2] < 1e-5
    model = NeuralODE(lambda t, x: -x, solver=HandHeunEuler(), atol=1e-7, rtol=1e-7)
    assert torch.allclose(model(x0, torch.linspace(0, 2, 5, dtype=F64))[1][-1], exact(x0, t_span[-1]), atol=1e-5)


def test_an_adaptive_solver_of_your_own_goes_on_at_the_planned_step_after_landing_on_a_time() -> None:
    """torchdyn's rule in the loop around a step of your own: a point just after the start costs the one short step
    that lands on it, and the next step is at least the one planned before (it used to restart from the short step
    and grow back over extra steps)."""

    def steps(times: list[float]) -> int:
        _, solution, counts = odeint(lambda t, x: -x, _x0(), torch.tensor(times, dtype=F64), HandHeunEuler(),
                                     atol=1e-4, rtol=1e-4, return_stats=True)
        assert torch.allclose(solution[-1], _x0() * math.exp(-10), atol=1e-3)
        return counts.attempts - counts.rejected

    assert steps([0.0, 1e-3, 10.0]) == steps([0.0, 10.0]) + 1


def test_an_adaptive_solver_of_your_own_starts_from_hairers_step() -> None:
    """A whole-interval first try can have a zero error estimate (periodic forcing over one period, where Heun's
    two slopes agree) and be accepted wrongly; the loop starts from Hairer's estimate, as torchdyn's does."""
    f = lambda t, x: torch.cos(2 * math.pi * t) * torch.ones_like(x)  # noqa: E731  (x(1) = x(0) = 0)
    _, solution = odeint(f, torch.zeros(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), HandHeunEuler(),
                         atol=1e-6, rtol=1e-6)
    assert abs(float(solution[-1, 0])) < 1e-5


def test_an_adaptive_solver_of_your_own_takes_complex_states_and_seminorm() -> None:
    _, solution = odeint(lambda t, x: 1j * x, torch.ones(1, dtype=torch.complex128),
                         torch.tensor([0.0, 1.0], dtype=F64), HandHeunEuler(), atol=1e-8, rtol=1e-8)
    assert abs(complex(solution[-1, 0]) - complex(math.cos(1), math.sin(1))) < 1e-5
    # the error measured on the first entries only (the adjoint's seminorm): the second, fast one is ignored
    fast = lambda t, x: torch.stack([-x[:, 0], -50 * x[:, 1]], 1)  # noqa: E731
    x0 = torch.ones(1, 2, dtype=F64)
    attempts = {}
    for size in (None, 1):
        counts = StepCounts()
        integrate(fast, x0, [0.0, 1.0], HandHeunEuler(), atol=1e-6, rtol=1e-6, controller=IntegralController(),
                  counts=counts, max_steps=10**5, error_size=size)
        attempts[size] = counts.attempts
    assert attempts[1] < attempts[None]


class FixedEuler(SolverTemplate):
    def __init__(self) -> None:
        super().__init__(order=1)
        self.stepping_class = "fixed"

    def step(self, f, x, t, dt, k1=None, args=None):
        return None, x + dt * f(t, x), None


def test_a_solver_of_your_own_runs_without_autograd_and_under_the_adjoint() -> None:
    field = torch.nn.Linear(2, 2).double()
    x0 = _x0()
    with torch.no_grad():
        _, plain = odeint(lambda t, x: field(x), x0, T_SPAN, FixedEuler())
    model = NeuralODE(field, solver=FixedEuler(), sensitivity="adjoint")
    _, trajectory = model(x0, T_SPAN)
    assert torch.allclose(trajectory.detach(), plain, atol=1e-12)
    trajectory[-1].sum().backward()
    assert field.weight.grad is not None and torch.isfinite(field.weight.grad).all()
