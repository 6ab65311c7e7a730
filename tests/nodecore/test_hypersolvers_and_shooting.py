"""Hypersolvers and multiple shooting on nodecore's engine: exact reductions and agreement with sequential solves."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nodecore import NeuralODE
from nodecore.numerics import (
    HyperEuler,
    HyperMidpoint,
    HyperRungeKutta4,
    MSBackward,
    MSZero,
    odeint,
    odeint_mshooting,
)

F64 = torch.float64
DAMPED = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=F64)


def damped(t: Tensor, x: Tensor) -> Tensor:
    """A nonlinear, time-invariant field: ``x A^T + 0.1 sin(x)``."""
    return x @ DAMPED.T + 0.1 * torch.sin(x)


class Hypernet(nn.Module):
    def __init__(self, zero: bool) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2, dtype=F64)
        if zero:
            nn.init.zeros_(self.layer.weight)
            nn.init.zeros_(self.layer.bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.layer(x)


HYPERSOLVERS = {HyperEuler: "euler", HyperMidpoint: "midpoint", HyperRungeKutta4: "rk4"}


@pytest.mark.parametrize("hyper", list(HYPERSOLVERS), ids=lambda c: c.__name__)
def test_a_zero_hypernet_equals_its_base_solver_bit_for_bit(hyper: type) -> None:
    x, t_span = torch.randn(5, 2, dtype=F64), torch.linspace(0, 2, 9, dtype=F64)
    corrected = odeint(damped, x, t_span, hyper(Hypernet(zero=True)), step_size=0.05)[1]
    assert torch.equal(corrected, odeint(damped, x, t_span, HYPERSOLVERS[hyper], step_size=0.05)[1])


@pytest.mark.parametrize("hyper", list(HYPERSOLVERS), ids=lambda c: c.__name__)
def test_a_hypersolver_step_adds_h_to_the_order_plus_one_times_the_hypernet(hyper: type) -> None:
    net, x, h = Hypernet(zero=False), torch.randn(3, 2, dtype=F64), 0.1
    solver = hyper(net)
    base = odeint(damped, x, [0.0, h], HYPERSOLVERS[hyper])[1][-1]
    _, stepped, _ = solver.step(damped, x, torch.tensor(0.0, dtype=F64), h)
    expected = base + h ** (solver.order + 1) * net(None, x)
    assert torch.allclose(stepped, expected, rtol=0, atol=1e-15)


def test_a_hypersolver_inside_neural_ode_trains_its_hypernet() -> None:
    """The hypernet is a submodule of the model: it is in model.parameters() and gets a gradient."""
    field = nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))
    model = NeuralODE(field, HyperEuler(Hypernet(zero=False)))
    hypernet_params = list(model.solver_module.hypernet.parameters())
    assert all(any(p is q for q in model.parameters()) for p in hypernet_params)
    _, trajectory = model(torch.randn(4, 2, dtype=F64), torch.linspace(0, 1, 5, dtype=F64))
    trajectory[-1].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hypernet_params)
    assert model.stats.steps_forward == 4 and model.solver.name == "HyperEuler"


def test_a_solver_object_refuses_the_torchdiffeq_backend() -> None:
    with pytest.raises(ValueError, match="backend='torchdiffeq' runs registered solvers by name only, got HyperEuler"):
        NeuralODE(nn.Linear(2, 2), HyperEuler(Hypernet(zero=True)), backend="torchdiffeq")


def _sequential(x: Tensor, t_span: Tensor, fine_steps: int) -> Tensor:
    """The fine solver (rk4) with ``fine_steps - 1`` steps per interval, one interval after the other."""
    step = float(t_span[1] - t_span[0]) / (fine_steps - 1)
    return odeint(damped, x, t_span, "rk4", step_size=step)[1]


@pytest.mark.parametrize("method", ["mszero", "msbackward"])
def test_multiple_shooting_with_as_many_iterations_as_intervals_is_the_sequential_solve(method: str) -> None:
    x, t_span = torch.randn(4, 2, dtype=F64), torch.linspace(0, 3, 7, dtype=F64)
    t_eval, B = odeint_mshooting(damped, x, t_span, method, fine_steps=4, maxiter=6)
    assert torch.equal(t_eval, t_span) and B.shape == (7, 4, 2)
    assert torch.allclose(B, _sequential(x, t_span, 4), rtol=0, atol=1e-12)


def test_a_float32_linspace_counts_as_equally_spaced() -> None:
    """float32 ``linspace`` steps differ by a few ulps of t (4.9e-6 relative here): torchdyn users pass such spans."""
    t_span = torch.linspace(0, 1, 100)
    assert not torch.allclose(t_span.diff(), t_span.diff()[0].expand(99), rtol=1e-6, atol=0)  # really jittered
    x = torch.randn(3, 2, dtype=F64)  # the times keep their float32 rounding in a float64 solve
    _, B = odeint_mshooting(damped, x, t_span, "mszero", fine_steps=2, maxiter=99)
    assert torch.allclose(B, _sequential(x, t_span.to(F64), 2), atol=1e-6)


def test_newton_shooting_converges_faster_than_parareal() -> None:
    x, t_span = torch.randn(4, 2, dtype=F64), torch.linspace(0, 3, 7, dtype=F64)
    reference = _sequential(x, t_span, 4)
    errors = {
        method: [float((odeint_mshooting(damped, x, t_span, method, fine_steps=4, maxiter=k)[1].detach() - reference).abs().max())
                 for k in (1, 2, 3)]
        for method in ("mszero", "msbackward")
    }
    for method, errs in errors.items():
        assert errs[0] > errs[1] > errs[2], (method, errs)
    assert errors["msbackward"][2] < 1e-3 * errors["mszero"][2], errors


def test_multiple_shooting_solver_objects_and_a_given_initial_guess() -> None:
    x, t_span = torch.randn(2, 2, dtype=F64), torch.linspace(0, 1, 5, dtype=F64)
    guess = x.expand(5, 2, 2).clone()
    for solver in (MSZero(), MSBackward(coarse_method="euler", fine_method="rk4")):
        _, B = odeint_mshooting(damped, x, t_span, solver, B0=guess, fine_steps=3, maxiter=4)
        assert torch.allclose(B, _sequential(x, t_span, 3), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "foo"}, "multiple-shooting solver 'foo'; valid"),
        ({"t_span": torch.tensor([0.0, 0.1, 0.5], dtype=F64)}, "equally spaced"),
        ({"B0": torch.zeros(3, 2, 2, dtype=F64)}, "B0 must have shape"),
        ({"fine_steps": 1}, "fine_steps"),
    ],
)
def test_bad_multiple_shooting_arguments_name_the_value(kwargs: dict, message: str) -> None:
    args = {"solver": "mszero", "t_span": torch.linspace(0, 1, 5, dtype=F64)} | kwargs
    with pytest.raises(ValueError, match=message):
        odeint_mshooting(damped, torch.zeros(2, 2, dtype=F64), **args)


def test_ode_problem_has_torchdyn_defaults_and_equals_the_same_neural_ode() -> None:
    from nodecore import ODEProblem

    field = nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))
    problem = ODEProblem(field, "dopri5", None, 1, 1e-4, 1e-4, "adjoint")
    assert (problem.atol, problem.atol_adjoint, problem.seminorm, problem.sensitivity) == (1e-4, 1e-6, False, "adjoint")
    x, t_span = torch.randn(3, 2, dtype=F64), torch.linspace(0, 1, 4, dtype=F64)
    same = NeuralODE(field, "dopri5", atol=1e-4, rtol=1e-4, sensitivity="adjoint", atol_adjoint=1e-6,
                     rtol_adjoint=1e-6, seminorm=False, interpolator="step")  # torchdyn's interpolator=None
    t_eval, solution = problem.odeint(x, t_span)
    assert torch.equal(t_eval, t_span) and torch.equal(solution, same(x, t_span)[1])


def test_a_multiple_shooting_layer_trains_and_matches_the_sequential_solve() -> None:
    from nodecore import MultipleShootingLayer

    field = nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))
    layer = MultipleShootingLayer(field, "mszero", maxiter=4, fine_steps=3)
    x, t_span = torch.randn(3, 2, dtype=F64), torch.linspace(0, 1, 5, dtype=F64)
    _, B = layer(x, t_span)
    sequential = odeint(lambda t, z: field(z), x, t_span, "rk4", step_size=0.125)[1]
    assert torch.allclose(B, sequential, rtol=0, atol=1e-12)
    B[-1].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())
    with pytest.raises(ValueError, match="sensitivities: autograd, adjoint, interpolated_adjoint"):
        MultipleShootingLayer(field, "mszero", sensitivity="backsolve")
    with pytest.raises(NotImplementedError, match="solver_adjoint is not supported by multiple shooting"):
        MultipleShootingLayer(field, "mszero", sensitivity="adjoint", solver_adjoint="rk4")


def test_torchdyn_import_paths_for_the_core_and_numerics_names() -> None:
    """``from torchdyn.core import ...`` and ``from torchdyn.numerics import ...`` become nodecore's by a word swap."""
    from nodecore.core import MultipleShootingLayer as MSL, NeuralODE as Node, ODEProblem as Problem
    from nodecore.numerics import (  # noqa: F401  (importable under torchdyn's names)
        DormandPrince45, Euler, HyperEuler, MSZero, RungeKutta4, Tsitouras45, odeint, odeint_mshooting,
    )
    import nodecore

    assert (Node, Problem, MSL) == (nodecore.NeuralODE, nodecore.ODEProblem, nodecore.MultipleShootingLayer)
    t_eval, solution = odeint(damped, torch.ones(1, 2, dtype=F64), torch.linspace(0, 1, 3, dtype=F64), Tsitouras45())
    assert solution.shape == (3, 1, 2) and torch.equal(t_eval, torch.linspace(0, 1, 3, dtype=F64))


# --- the multiple-shooting adjoint --------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 2, dtype=F64))


def _loss(B: Tensor) -> Tensor:
    """A loss on the last and an inner point, so both ends of the adjoint recursion carry a gradient."""
    return B[-1].square().sum() + (B[3] * torch.tensor([1.0, -2.0], dtype=F64)).sum()


def _gradients(net: nn.Module, x: Tensor, solve) -> Tensor:
    """``[dL/dx, dL/dtheta]`` flattened, for the trajectory ``solve(x)``."""
    x = x.detach().requires_grad_()
    net.zero_grad()
    _loss(solve(x)).backward()
    return torch.cat([x.grad.flatten(), *(p.grad.flatten() for p in net.parameters())])


@pytest.mark.parametrize("method", ["mszero", "msbackward"])
@pytest.mark.parametrize("sensitivity", ["adjoint", "interpolated_adjoint"])
def test_converged_shooting_adjoint_equals_autograd_and_the_sequential_solve(method: str, sensitivity: str) -> None:
    from nodecore.fields import VectorField

    net = _mlp()
    field = VectorField(net)
    x, t_span = torch.randn(3, 2, dtype=F64), torch.linspace(0, 2, 7, dtype=F64)
    adjoint = _gradients(net, x, lambda z: odeint_mshooting(field, z, t_span, method, fine_steps=4, maxiter=6,
                                                            sensitivity=sensitivity)[1])
    autograd = _gradients(net, x, lambda z: odeint_mshooting(field, z, t_span, method, fine_steps=4, maxiter=6)[1])
    sequential = _gradients(net, x, lambda z: odeint(lambda t, y: net(y), z, t_span, "rk4", step_size=2 / 18)[1])
    torch.testing.assert_close(adjoint, sequential, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(autograd, sequential, rtol=1e-12, atol=1e-12)


def test_shooting_adjoint_matches_central_finite_differences() -> None:
    from nodecore.fields import VectorField

    net = _mlp()
    field = VectorField(net)
    x, t_span = torch.randn(2, 2, dtype=F64), torch.linspace(0, 1.5, 6, dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return _loss(odeint_mshooting(field, z, t_span, "msbackward", fine_steps=3, maxiter=5, sensitivity="adjoint")[1])

    gradient = _gradients(net, x, lambda z: odeint_mshooting(field, z, t_span, "msbackward", fine_steps=3, maxiter=5,
                                                             sensitivity="adjoint")[1])
    h = 1e-6
    weight = net[0].weight
    with torch.no_grad():
        for k, (i, j) in enumerate([(0, 0), (3, 1), (7, 0)]):
            weight[i, j] += h
            up = loss(x)
            weight[i, j] -= 2 * h
            down = loss(x)
            weight[i, j] += h
            torch.testing.assert_close(gradient[x.numel() + 2 * i + j], (up - down) / (2 * h), rtol=1e-7, atol=1e-9)
        for i in range(x.numel()):
            shift = torch.zeros(x.numel(), dtype=F64)
            shift[i] = h
            shift = shift.reshape(x.shape)
            torch.testing.assert_close(gradient[i], (loss(x + shift) - loss(x - shift)) / (2 * h), rtol=1e-7,
                                       atol=1e-9)


def _saved_bytes(solve) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``solve()``."""
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        solve()
    return total


def test_the_shooting_adjoint_saves_only_the_points_whatever_maxiter() -> None:
    from nodecore.fields import VectorField

    field = VectorField(_mlp())
    x, t_span = torch.randn(16, 2, dtype=F64, requires_grad=True), torch.linspace(0, 2, 9, dtype=F64)
    saved = {(sensitivity, maxiter): _saved_bytes(
        lambda: odeint_mshooting(field, x, t_span, "mszero", fine_steps=4, maxiter=maxiter, sensitivity=sensitivity))
        for sensitivity in ("autograd", "adjoint") for maxiter in (2, 8)}
    points = 9 * x.numel() * 8
    assert saved["adjoint", 2] == saved["adjoint", 8] == points
    assert saved["autograd", 8] > 3 * saved["autograd", 2] > 30 * points


def test_a_multiple_shooting_layer_with_the_adjoint_trains_as_with_autograd() -> None:
    from nodecore import MultipleShootingLayer

    net = _mlp()
    x, t_span = torch.randn(3, 2, dtype=F64), torch.linspace(0, 1, 5, dtype=F64)
    by_adjoint = _gradients(net, x, lambda z: MultipleShootingLayer(net, "mszero", "adjoint", maxiter=4)(z, t_span)[1])
    by_autograd = _gradients(net, x, lambda z: MultipleShootingLayer(net, "mszero", maxiter=4)(z, t_span)[1])
    torch.testing.assert_close(by_adjoint, by_autograd, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="f must be an nn.Module"):
        odeint_mshooting(damped, x, t_span, "mszero", sensitivity="adjoint")
