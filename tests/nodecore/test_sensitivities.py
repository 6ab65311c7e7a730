"""The interpolated adjoint and integral losses: gradients against autograd through the solver."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nodecore import NeuralODE
from nodecore.numerics import HyperEuler

F64 = torch.float64
TIGHT = dict(atol=1e-9, rtol=1e-9, atol_adjoint=1e-9, rtol_adjoint=1e-9)


def field() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))


def running_cost(t: Tensor, x: Tensor) -> Tensor:
    return 0.1 * x.square().sum(1) + 0.05 * t * x[:, 0]


def _gradients(model: NeuralODE, x: Tensor, t_span: Tensor, loss) -> list[Tensor]:
    _, trajectory = model(x, t_span)
    return list(torch.autograd.grad(loss(trajectory), [x, *model.vf.parameters()]))


def _max_difference(a: list[Tensor], b: list[Tensor]) -> float:
    """The largest entry-wise difference, relative to the largest entry of ``b``."""
    scale = max(float(v.abs().max()) for v in b)
    return max(float((u - v).abs().max()) for u, v in zip(a, b)) / scale


@pytest.mark.parametrize("sensitivity", ["adjoint", "interpolated_adjoint"])
def test_a_loss_on_every_point_of_a_dense_t_span_gets_autograd_gradients(sensitivity: str) -> None:
    net, x = field(), torch.randn(16, 2, dtype=F64, requires_grad=True)
    t_span = torch.linspace(0, 1, 20, dtype=F64)

    def loss(trajectory: Tensor) -> Tensor:
        return trajectory.square().sum()

    reference = _gradients(NeuralODE(net, "dopri5", sensitivity="autograd", **TIGHT), x, t_span, loss)
    model = NeuralODE(net, "dopri5", sensitivity=sensitivity, **TIGHT)
    # autograd differentiates the discrete solve (and its interpolant), the adjoints the continuous
    # problem: both are within the 1e-9 tolerances of the true gradient, so of each other.
    assert _max_difference(_gradients(model, x, t_span, loss), reference) < 1e-8
    assert model.stats.nfe_backward > 0


def test_the_interpolated_adjoint_solves_a_smaller_backward_system_with_the_same_gradient() -> None:
    """Same gradient at default tolerances within the tolerance, and no backward error in x to pay for."""
    net, x = field(), torch.randn(64, 2, dtype=F64, requires_grad=True)
    t_span = torch.tensor([0.0, 2.0], dtype=F64)

    def loss(trajectory: Tensor) -> Tensor:
        return trajectory[-1].square().sum()

    reference = _gradients(NeuralODE(net, "dopri5", **TIGHT), x, t_span, loss)
    errors = {}
    for sensitivity in ("adjoint", "interpolated_adjoint"):
        model = NeuralODE(net, "dopri5", sensitivity=sensitivity, atol=1e-6, rtol=1e-6)
        errors[sensitivity] = _max_difference(_gradients(model, x, t_span, loss), reference)
    assert max(errors.values()) < 1e-3, errors


@pytest.mark.parametrize("sensitivity", ["adjoint", "interpolated_adjoint"])
def test_an_integral_loss_adds_its_gradient_as_the_augmented_autograd_solve_does(sensitivity: str) -> None:
    """torchdyn's convention: autograd carries ∫ l dt in a first state column; the adjoints add it implicitly."""
    net, x = field(), torch.randn(16, 2, dtype=F64, requires_grad=True)
    t_span = torch.linspace(0, 1, 2, dtype=F64)
    augmented = NeuralODE(net, "dopri5", sensitivity="autograd", integral_loss=running_cost, **TIGHT)
    _, trajectory = augmented(torch.cat([torch.zeros(16, 1, dtype=F64), x], 1), t_span)
    cost = trajectory[-1][:, 0].sum()
    reference = torch.autograd.grad(cost + trajectory[-1][:, 1:].square().sum(), [x, *net.parameters()])
    model = NeuralODE(net, "dopri5", sensitivity=sensitivity, integral_loss=running_cost, **TIGHT)
    gradients = _gradients(model, x, t_span, lambda traj: traj[-1].square().sum())
    assert _max_difference(gradients, list(reference)) < 1e-7
    # the cost really is in there: without it the gradient differs
    plain = _gradients(NeuralODE(net, "dopri5", sensitivity=sensitivity, **TIGHT), x, t_span,
                       lambda traj: traj[-1].square().sum())
    assert _max_difference(plain, list(reference)) > 1e-3


def test_the_augmented_autograd_integral_loss_integrates_the_cost() -> None:
    """dx/dt = -x from x0: ∫_0^1 0.1 |x|² dt = 0.05 |x0|² (1 - e^-2)."""

    class Decay(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return -x

    x0 = torch.randn(5, 2, dtype=F64)
    model = NeuralODE(Decay(), "dopri5", integral_loss=lambda t, x: 0.1 * x.square().sum(1), atol=1e-10, rtol=1e-10)
    _, trajectory = model(torch.cat([torch.zeros(5, 1, dtype=F64), x0], 1), torch.tensor([0.0, 1.0], dtype=F64))
    expected = 0.05 * x0.square().sum(1) * (1 - torch.exp(torch.tensor(-2.0, dtype=F64)))
    assert torch.allclose(trajectory[-1][:, 0], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": HyperEuler(lambda t, x, dx: 0 * x), "sensitivity": "interpolated_adjoint"},
         "which solver 'HyperEuler' .*overrides step"),
        ({"sensitivity": "interpolated_adjoint", "backend": "torchdiffeq"}, "need nodecore's engine"),
        ({"integral_loss": running_cost, "backend": "torchdiffeq"}, "need nodecore's engine"),
        ({"interpolator": "step", "backend": "torchdiffeq"}, "need nodecore's engine"),
    ],
)
def test_unsupported_combinations_are_refused_up_front(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NeuralODE(field(), **kwargs)


def test_a_t_span_requiring_grad_refuses_options_torchdiffeq_would_ignore() -> None:
    """Gradients in t_span send the solve to torchdiffeq, which has no integral loss: refused, not ignored."""
    model = NeuralODE(field(), "dopri5", integral_loss=running_cost)
    t_span = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="a t_span that requires grad .*need nodecore's engine"):
        model(torch.zeros(3, 3, dtype=F64), t_span)


def test_a_non_callable_integral_loss_is_refused() -> None:
    with pytest.raises(TypeError, match="integral_loss must be a callable"):
        NeuralODE(field(), integral_loss=0.1)


@pytest.mark.parametrize("solver", ["rk4", "midpoint", "rk4_38"])
def test_the_interpolated_adjoint_of_fixed_step_solvers_matches_autograd(solver: str) -> None:
    """Without dense output the forward keeps a cubic Hermite interpolant per step: at step 1/64 the gradients
    agree with backpropagation through the same steps to the method's error, as the backsolve adjoint does
    (2e-6 for midpoint, 3e-12 for rk4)."""
    net, x = field(), torch.randn(16, 2, dtype=F64, requires_grad=True)
    t_span = torch.linspace(0, 1, 5, dtype=F64)

    def loss(trajectory: Tensor) -> Tensor:
        return trajectory.square().sum()

    options = dict(step_size=1 / 64, return_t_eval=True)
    reference = _gradients(NeuralODE(net, solver, **options), x, t_span, loss)
    model = NeuralODE(net, solver, sensitivity="interpolated_adjoint", **options)
    interpolated = _gradients(model, x, t_span, loss)
    assert _max_difference(interpolated, reference) < 1e-5
    # The interpolant reuses each step's end derivative as the next step's first stage: one extra evaluation.
    plain = NeuralODE(net, solver, **options)
    plain(x, t_span)
    model(x, t_span)
    assert model.stats.nfe_forward == plain.stats.nfe_forward + 1


def test_the_interpolated_adjoint_of_euler_converges_to_the_exact_gradient() -> None:
    """dx/dt = A x: d(sum x(1))/dx0 = 1ᵀ exp(A); Euler's interpolated adjoint is first order in the step."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)

    class Linear(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x @ A.T

    exact = torch.ones(2, dtype=F64) @ torch.linalg.matrix_exp(A)
    errors = []
    for step in (1 / 50, 1 / 100):
        x = torch.randn(3, 2, dtype=F64, requires_grad=True)
        model = NeuralODE(Linear(), "euler", sensitivity="interpolated_adjoint", step_size=step)
        _, trajectory = model(x, torch.tensor([0.0, 1.0], dtype=F64))
        (grad,) = torch.autograd.grad(trajectory[-1].sum(), x)
        errors.append(float((grad - exact).abs().max()))
    assert errors[1] < 0.01
    assert 1.7 < errors[0] / errors[1] < 2.3


@pytest.mark.parametrize("sensitivity", ["adjoint", "interpolated_adjoint"])
def test_stepping_onto_every_point_restarts_the_backward_solve_there_too(sensitivity: str) -> None:
    """interpolator='step' is torchdyn's interpolator=None both ways: the backward solve restarts at every point
    of a dense t_span even when the loss reads only the last one, so its steps are as short as the forward's
    and the gradient is far inside the tolerance (as in torchdyn); dense output skips those restarts."""
    from nodecore.numerics import VanDerPol

    torch.manual_seed(1)
    x = torch.randn(64, 2, dtype=F64, requires_grad=True)
    t_span = torch.linspace(0, 1, 50, dtype=F64)
    tolerances = dict(atol=1e-4, rtol=1e-4, atol_adjoint=1e-4, rtol_adjoint=1e-4)

    def last_point_gradient(**options) -> tuple[Tensor, NeuralODE]:
        model = NeuralODE(VanDerPol(0.5), "dopri5", **options)
        _, trajectory = model(x, t_span)
        return torch.autograd.grad(trajectory[-1].sum(), x)[0], model

    exact, _ = last_point_gradient(atol=1e-11, rtol=1e-11, interpolator="step")
    stepped, stepped_model = last_point_gradient(sensitivity=sensitivity, interpolator="step", **tolerances)
    dense, dense_model = last_point_gradient(sensitivity=sensitivity, interpolator="dense", **tolerances)
    default, _ = last_point_gradient(sensitivity=sensitivity, **tolerances)
    assert torch.equal(default, stepped)  # None is torchdyn's: step onto every point
    assert float((stepped - exact).abs().max()) < 1e-4
    assert float((stepped - exact).abs().mean()) < 0.2 * float((dense - exact).abs().mean())
    assert stepped_model.stats.steps_backward >= len(t_span) - 1 > dense_model.stats.steps_backward
