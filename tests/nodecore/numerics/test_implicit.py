"""Backward Euler (ImplicitEuler) and its multiple-shooting front end (ParallelImplicitEuler): the step is the
root of x1 = x0 + dt f(t + dt, x1), stable on stiff systems, first order, differentiable by the implicit function
theorem."""

import math
import pickle

import pytest
import torch
from torch import nn

from nodecore import NeuralODE
from nodecore.errors import SolverError
from nodecore.numerics import Euler, odeint
from nodecore.numerics.implicit import ImplicitEuler, NewtonConvergenceError
from nodecore.numerics.shooting import ParallelImplicitEuler
from nodecore.numerics.shooting import odeint_mshooting

F64 = torch.float64


def stiff_matrix() -> torch.Tensor:
    """A symmetric 2x2 matrix with eigenvalues -1 and -1000 (eigenvectors (1, 1) and (1, -1))."""
    return torch.tensor([[-500.5, 499.5], [499.5, -500.5]], dtype=F64)


def linear(A: torch.Tensor):
    return lambda t, x: x @ A.T


def test_step_is_the_closed_form_on_a_stiff_linear_system():
    A = stiff_matrix()
    x0 = torch.tensor([[1.0, 2.0], [0.3, -0.4], [0.0, 0.0]], dtype=F64)
    for dt in (1e-3, 0.1, 10.0):
        _, x1, _ = ImplicitEuler().step(linear(A), x0, torch.tensor(0.0, dtype=F64), dt)
        exact = torch.linalg.solve(torch.eye(2, dtype=F64) - dt * A, x0.T).T
        torch.testing.assert_close(x1, exact, rtol=0, atol=1e-12)


def test_torchdyn_attributes():
    solver = ImplicitEuler(dtype=torch.float32)
    assert isinstance(solver, Euler)
    assert solver.order == 1 and solver.stepping_class == "fixed" and not solver.adaptive
    assert solver.max_iters >= 1


def test_stable_at_a_step_where_explicit_euler_blows_up():
    A = stiff_matrix()
    x0 = torch.tensor([[1.0, 2.0]], dtype=F64)
    t_span = torch.linspace(0, 2, 21, dtype=F64)  # dt = 0.1: |1 + dt * (-1000)| = 99
    _, implicit = odeint(linear(A), x0, t_span, ImplicitEuler())
    _, explicit = odeint(linear(A), x0, t_span, Euler())
    assert explicit[-1].abs().max() > 1e30
    # the exact solution's slow mode: 1.5 exp(-t) (1, 1); backward Euler's: 1.5 / 1.1^20; the fast mode is gone
    assert implicit.abs().max() <= x0.abs().max() + 1e-12
    torch.testing.assert_close(implicit[-1], torch.full((1, 2), 1.5 / 1.1**20, dtype=F64), rtol=1e-12, atol=1e-12)


def _error(f, exact, x0: torch.Tensor, T: float, n: int) -> float:
    _, sol = odeint(f, x0, torch.tensor([0.0, T], dtype=F64), ImplicitEuler(), step_size=T / n)
    return float((sol[-1] - exact).abs().max())


def test_first_order_on_a_nonlinear_problem():
    x0 = torch.tensor([[1.0], [0.5], [2.0]], dtype=F64)
    T = 1.0
    exact = x0 / (1 + x0 * T)  # x' = -x^2
    errors = [_error(lambda t, x: -x * x, exact, x0, T, n) for n in (20, 40, 80, 160)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.9 < r < 2.1 for r in ratios), (errors, ratios)


def test_first_order_on_a_time_dependent_problem_evaluates_at_t_plus_dt():
    """x' = -x + sin t: a field read at t instead of t + dt (torchdyn's step) still converges, but its first-order
    error constant differs; the backward-Euler error at t = 2 is known to leading order."""
    x0 = torch.tensor([[1.0]], dtype=F64)
    T = 2.0
    exact = 1.5 * math.exp(-T) + 0.5 * (math.sin(T) - math.cos(T))
    errors = [_error(lambda t, x: -x + torch.sin(t), exact, x0, T, n) for n in (40, 80, 160)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.9 < r < 2.1 for r in ratios), (errors, ratios)
    # the step-by-step reference: the scalar backward-Euler recursion solved in closed form
    n, h, x = 40, T / 40, 1.0
    for k in range(n):
        x = (x + h * math.sin((k + 1) * h)) / (1 + h)
    _, sol = odeint(lambda t, x: -x + torch.sin(t), x0, torch.tensor([0.0, T], dtype=F64), ImplicitEuler(),
                    step_size=T / n)
    assert abs(float(sol[-1]) - x) < 1e-13


def test_shapes_one_dimensional_and_batched_images():
    A = stiff_matrix()
    x0 = torch.tensor([1.0, 2.0], dtype=F64)  # 1-D: one row
    _, x1, _ = ImplicitEuler().step(linear(A), x0, 0.0, 0.1)
    exact = torch.linalg.solve(torch.eye(2, dtype=F64) - 0.1 * A, x0)
    torch.testing.assert_close(x1, exact, rtol=0, atol=1e-12)
    x = torch.randn(3, 2, 2, dtype=F64)  # [B, 2, 2]: rows of 4, each x' = -x^3
    _, x1, _ = ImplicitEuler().step(lambda t, z: -z**3, x, 0.0, 0.5)
    assert x1.shape == x.shape
    torch.testing.assert_close(x1 - x + 0.5 * x1**3, torch.zeros_like(x), rtol=0, atol=1e-13)


def _loss(sol: torch.Tensor) -> torch.Tensor:
    return (sol[-1] ** 2).sum() + torch.sin(sol[2]).sum()


def _central_difference(fn, p: torch.Tensor, index: tuple, eps: float = 1e-5) -> float:
    with torch.no_grad():
        old = p[index].item()
        p[index] = old + eps
        plus = fn()
        p[index] = old - eps
        minus = fn()
        p[index] = old
    return float((plus - minus) / (2 * eps))


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).to(F64)
    x0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t_span = torch.linspace(0, 1, 6, dtype=F64)

    def solve() -> torch.Tensor:
        return _loss(odeint(lambda t, x: net(x), x0, t_span, ImplicitEuler(), step_size=0.1)[1])

    g_x0, g_w, g_b = torch.autograd.grad(solve(), (x0, net[0].weight, net[2].bias))
    for (p, g), index in (((x0, g_x0), (1, 2)), ((x0, g_x0), (3, 0)), ((net[0].weight, g_w), (5, 1)),
                          ((net[2].bias, g_b), (2,))):
        assert g[index].item() == pytest.approx(_central_difference(solve, p, index), rel=1e-6, abs=1e-9)


def test_gradient_of_one_step_is_the_implicit_function_theorem():
    """On x' = A x, d x1 / d x0 = (I - dt A)^{-1} exactly, and d x1 / d dt = (I - dt A)^{-1} A x1."""
    A = stiff_matrix()
    x0 = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    dt = torch.tensor(0.1, dtype=F64, requires_grad=True)
    _, x1, _ = ImplicitEuler().step(linear(A), x0, torch.tensor(0.0, dtype=F64), dt)
    M = torch.linalg.inv(torch.eye(2, dtype=F64) - 0.1 * A)
    w = torch.tensor([[0.7, -1.3]], dtype=F64)
    g_x0, g_dt = torch.autograd.grad((x1 * w).sum(), (x0, dt))
    torch.testing.assert_close(g_x0, w @ M, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_dt, ((w @ M) * (x1.detach() @ A.T)).sum(), rtol=1e-10, atol=1e-12)


def test_values_do_not_depend_on_grad_mode_and_no_spurious_graph():
    x0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    t_span = torch.linspace(0, 1, 11, dtype=F64)
    f = lambda t, x: -x**2 + torch.cos(t)  # noqa: E731
    _, with_grad = odeint(f, x0, t_span, ImplicitEuler())
    with torch.no_grad():
        _, without = odeint(f, x0, t_span, ImplicitEuler())
    assert not with_grad.requires_grad  # nothing upstream needs a gradient
    assert torch.equal(with_grad, without)


def test_neural_ode_with_implicit_euler_trains():
    torch.manual_seed(1)
    field = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).to(F64)
    model = NeuralODE(field, solver=ImplicitEuler())
    t_span = torch.linspace(0, 1, 5, dtype=F64)
    x = torch.randn(8, 2, dtype=F64)
    t_eval, sol = model(x, t_span)
    assert sol.shape == (5, 8, 2)
    torch.testing.assert_close(t_eval, t_span)
    _, reference = odeint(lambda t, z: field(z), x, t_span, ImplicitEuler())
    torch.testing.assert_close(sol, reference, rtol=1e-12, atol=1e-12)
    sol[-1].pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())


@pytest.mark.parametrize("time_dependent", [False, True])
def test_parallel_implicit_euler_is_implicit_euler_one_step_per_interval(time_dependent):
    A = stiff_matrix()
    f = (lambda t, x: x @ A.T + torch.sin(3 * t)) if time_dependent else linear(A)
    x0 = torch.tensor([[1.0, 2.0], [-0.5, 0.25]], dtype=F64)
    t_span = torch.linspace(0, 1, 11, dtype=F64)
    calls = {"shooting": 0, "implicit": 0}

    def counted(name):
        def field(t, x):
            calls[name] += 1
            return f(t, x)

        return field

    t_eval, B = odeint_mshooting(counted("shooting"), x0, t_span, ParallelImplicitEuler())
    _, sol = odeint(counted("implicit"), x0, t_span, ImplicitEuler())
    assert calls["shooting"] == calls["implicit"]  # no coarse sweep for a guess the solver never reads
    assert B.shape == (11, 2, 2)
    torch.testing.assert_close(t_eval, t_span)
    torch.testing.assert_close(B, sol, rtol=1e-13, atol=1e-13)
    # B solves torchdyn's shooting equations B[m+1] = B[m] + dt f(t_{m+1}, B[m+1]) with f at the right times
    dt = t_span[1] - t_span[0]
    for m in range(10):
        residual = B[m + 1] - B[m] - dt * f(t_span[m + 1], B[m + 1])
        assert float(residual.abs().max()) < 1e-12


class TimeField(nn.Module):
    """A small network of (t, x): f(t, x) = net(x) + cos(t)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).to(F64)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.cos(t)


def test_parallel_implicit_euler_gradients_by_both_sensitivities():
    torch.manual_seed(2)
    field = TimeField()
    weight = field.net[0].weight
    x0 = torch.randn(3, 2, dtype=F64)
    t_span = torch.linspace(0, 1, 6, dtype=F64)
    _, sol = odeint(field, x0, t_span, ImplicitEuler())
    reference = torch.autograd.grad(sol[-1].sum(), weight)[0]
    for sensitivity in ("autograd", "adjoint"):
        _, B = odeint_mshooting(field, x0, t_span, ParallelImplicitEuler(), sensitivity=sensitivity)
        grad = torch.autograd.grad(B[-1].sum(), weight)[0]
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-12)


def test_parallel_implicit_euler_options():
    solver = ParallelImplicitEuler(coarse_method="euler", fine_method="euler", max_iters=7)
    assert isinstance(solver.fine_method, ImplicitEuler) and solver.max_iters == 7
    custom = ImplicitEuler(tol=1e-10)
    assert ParallelImplicitEuler(fine_method=custom).fine_method is custom
    with pytest.raises(ValueError, match="backward-Euler"):
        ParallelImplicitEuler(fine_method="rk4")


def test_no_root_raises_a_clear_error():
    # x1 = 1 + x1^2 (x' = x^2 + 1, x0 = 1, dt = 1) has no real root
    with pytest.raises(NewtonConvergenceError, match=r"t=0\.5, dt=1\b.*residual") as info:
        ImplicitEuler().step(lambda t, x: x**2 + 1, torch.tensor([[1.0]], dtype=F64), 0.5, 1.0)
    err = info.value
    assert isinstance(err, SolverError) and err.t == 0.5 and err.dt == 1.0 and err.residual > 0.1
    again = pickle.loads(pickle.dumps(err))
    assert (again.t, again.dt, again.residual, str(again)) == (err.t, err.dt, err.residual, str(err))


def test_too_few_iterations_raise_through_odeint():
    with pytest.raises(NewtonConvergenceError, match="max_iters=1"):
        odeint(lambda t, x: -x**3, torch.tensor([[2.0]], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
               ImplicitEuler(max_iters=1))


def test_bad_options_and_states():
    with pytest.raises(ValueError):
        ImplicitEuler(max_iters=0)
    with pytest.raises(ValueError):
        ImplicitEuler(predictor="rk4")
    with pytest.raises(TypeError, match="floating-point"):
        ImplicitEuler().step(lambda t, x: x, torch.tensor([[1]]), 0.0, 0.1)


@pytest.mark.parametrize("predictor", ["constant", "euler"])
def test_predictors_and_float32(predictor):
    f = lambda t, x: -x**2  # noqa: E731
    x0 = torch.tensor([[1.0, 0.5]])
    _, x1, _ = ImplicitEuler(predictor=predictor).step(f, x0, 0.0, 0.1)
    assert x1.dtype == torch.float32
    exact = (-1 + torch.sqrt(1 + 0.4 * x0.double())) / 0.2
    torch.testing.assert_close(x1.double(), exact, rtol=1e-6, atol=1e-7)


def test_float32_stiff_step_far_beyond_the_explicit_limit():
    """dt |lambda| = 1e7: the scale of the convergence test must not follow |dt f(z)| at a poor iterate."""
    A = stiff_matrix()
    x0 = torch.tensor([[1.0, 2.0], [0.3, -0.4]])
    for predictor in ("constant", "euler"):
        _, x1, _ = ImplicitEuler(predictor=predictor).step(linear(A.float()), x0, 0.0, 1e4)
        exact = torch.linalg.solve(torch.eye(2, dtype=F64) - 1e4 * A, x0.double().T).T
        # float32's own limit here is cond(I - dt A) * eps ~ 1e3 * 6e-8 relative
        torch.testing.assert_close(x1.double(), exact, rtol=0, atol=1e-3 * float(exact.abs().max()))


def test_torchdyns_names_reach_the_implicit_solvers() -> None:
    from nodecore.numerics.solvers.ode import MS_SOLVER_DICT, SOLVER_DICT

    assert SOLVER_DICT["ieuler"] is ImplicitEuler and SOLVER_DICT["implicit_euler"] is ImplicitEuler
    assert MS_SOLVER_DICT["ieuler"] is ParallelImplicitEuler
    assert MS_SOLVER_DICT["parallel-implicit-euler"] is ParallelImplicitEuler
    A = torch.tensor([[-1.0, 0.0], [0.0, -1000.0]], dtype=torch.float64)
    x0 = torch.ones(3, 2, dtype=torch.float64)
    t_span = torch.linspace(0, 1, 11, dtype=torch.float64)
    _, by_name = odeint(lambda t, x: x @ A.T, x0, t_span, "ieuler")
    expected = x0 * torch.tensor([1 / 1.1**10, 1 / 101.0**10], dtype=torch.float64)  # (1 - dt lambda)^-10
    assert torch.allclose(by_name[-1], expected, rtol=1e-12)
    model = NeuralODE(lambda t, x: x @ A.T, solver="implicit_euler")
    assert torch.allclose(model(x0, t_span)[1], by_name, rtol=1e-12)
    with pytest.raises(ValueError, match="got ieuler .*no torchdiffeq twin"):
        NeuralODE(nn.Linear(2, 2), solver="ieuler", backend="torchdiffeq")


def test_parallel_implicit_eulers_max_iters_is_settable() -> None:
    solver = ParallelImplicitEuler()
    solver.max_iters = 7
    assert solver.fine_method.max_iters == 7
    with pytest.raises(ValueError, match="max_iters must be an integer >= 1, got 0"):
        solver.max_iters = 0
