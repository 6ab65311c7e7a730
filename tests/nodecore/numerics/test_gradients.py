"""Gradients through nodecore's engine: finite-difference checks, adjoint against autograd, adjoint memory.

* ``autograd`` differentiates the discrete solve exactly, so ``gradcheck`` (central differences, float64)
  must pass with any solver at constant steps (adaptive step *selection* is not differentiable: the
  finite-difference perturbation could move a step, so the checks pin the steps).
* ``adjoint`` integrates the continuous adjoint ODE backwards: it differs from the exact gradient of the
  discrete solve by the solver's error, O(h^4) for rk4 at h = 0.1 (~1e-7 relative here), well inside
  gradcheck's tolerance.
* Adjoint memory: what the forward keeps for backward (measured with ``saved_tensors_hooks``) does not grow
  with the number of steps; autograd's grows linearly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nodecore import NeuralODE
from nodecore.numerics import INTERPOLATORS

F64 = torch.float64
# Stepping onto every output point: 'step' where the engine has it (None became dense output there).
STEP_ONTO = "step" if "step" in INTERPOLATORS else None


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)


def x0(seed: int = 1, requires_grad: bool = True) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(3, 2, dtype=F64).requires_grad_(requires_grad)


def _check(model: NeuralODE, t_span: torch.Tensor, **tolerances) -> bool:
    params = tuple(model.vf.parameters())

    def solve(x, *_params):  # the parameters are perturbed in place by gradcheck; the model reads them
        return model(x, t_span)[1]

    return torch.autograd.gradcheck(solve, (x0(), *params), **tolerances)


@pytest.mark.parametrize("solver, step_size", [("rk4", None), ("euler", 0.25), ("tsit5", 0.5), ("dopri8", 1.0)])
def test_gradcheck_autograd(solver, step_size):
    model = NeuralODE(mlp(), solver=solver, sensitivity="autograd", step_size=step_size)
    t_span = torch.linspace(0, 1, 3, dtype=F64)
    assert _check(model, t_span, atol=1e-8, rtol=1e-6)


def test_gradcheck_autograd_through_dense_output():
    """Points read off the interpolant are differentiable too (steps pinned so they cannot move)."""
    from nodecore.numerics import IntegralController, odeint

    f = mlp()
    params = tuple(f.parameters())
    t_span = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.75, 1.0], dtype=F64)
    pinned = dict(controller=IntegralController(min_step=0.5, max_step=0.5), first_step=0.5, interpolator="dense")

    def solve(x, *_params):
        return odeint(lambda t, y: f(y), x, t_span, solver="dopri5", **pinned)[1]

    assert torch.autograd.gradcheck(solve, (x0(), *params), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("t_points", [2, 4])
def test_gradcheck_adjoint_fixed_step(t_points):
    """With t_points = 4 the incoming gradients at inner points enter the backward solve between segments."""
    model = NeuralODE(mlp(), solver="rk4", sensitivity="adjoint", step_size=0.1)
    t_span = torch.linspace(0, 1, t_points, dtype=F64)
    assert _check(model, t_span, atol=1e-6, rtol=1e-5)


def _grads(model: NeuralODE, t_span: torch.Tensor, loss_on: str = "all"):
    x = x0()
    model.zero_grad()
    _, traj = model(x, t_span)
    target = torch.sin(torch.arange(traj.numel(), dtype=F64)).view_as(traj)
    per_point = ((traj - target) ** 2).sum(dim=(1, 2))
    loss = per_point[-1] if loss_on == "last" else (per_point * torch.linspace(1, 2, len(t_span), dtype=F64)).sum()
    loss.backward()
    return [x.grad.clone()] + [p.grad.clone() for p in model.vf.parameters()], model.stats


def _assert_grads_close(a, b, rtol, atol):
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss_on", ["last", "all"])
@pytest.mark.parametrize("interpolator", [STEP_ONTO, "dense"])
def test_adjoint_agrees_with_autograd_adaptive(loss_on, interpolator):
    """dopri5 at 1e-9 forward, adjoint at 1e-11, a loss on the final point or on every point of a 20-point
    t_span: the two sensitivities agree to ~1e-7 (the adjoint's own solve error and the forward's)."""
    t_span = torch.linspace(0, 2, 20, dtype=F64)
    common = dict(solver="dopri5", atol=1e-9, rtol=1e-9, interpolator=interpolator)
    autograd_grads, autograd_stats = _grads(NeuralODE(mlp(), sensitivity="autograd", **common), t_span, loss_on)
    adjoint = NeuralODE(mlp(), sensitivity="adjoint", atol_adjoint=1e-11, rtol_adjoint=1e-11, **common)
    adjoint_grads, adjoint_stats = _grads(adjoint, t_span, loss_on)
    _assert_grads_close(adjoint_grads, autograd_grads, rtol=1e-6, atol=1e-8)
    assert autograd_stats.nfe_backward == 0 and autograd_stats.steps_backward == 0
    assert adjoint_stats.nfe_backward > 0 and adjoint_stats.steps_backward > 0
    assert adjoint_stats.nfe_forward == autograd_stats.nfe_forward  # the same forward solve


def test_adjoint_agrees_with_autograd_fixed_step_dense_t_span():
    """rk4 at h = 0.05 on a 20-point t_span, loss on every point: agreement to the O(h^4) discretisation gap."""
    t_span = torch.linspace(0, 1, 21, dtype=F64)
    common = dict(solver="rk4", step_size=0.05)
    autograd_grads, _ = _grads(NeuralODE(mlp(), sensitivity="autograd", **common), t_span)
    adjoint_grads, stats = _grads(NeuralODE(mlp(), sensitivity="adjoint", **common), t_span)
    _assert_grads_close(adjoint_grads, autograd_grads, rtol=1e-6, atol=1e-8)
    assert stats.steps_backward == stats.steps_forward == 20
    assert stats.nfe_backward == 4 * 20


def test_adjoint_seminorm_same_gradients_fewer_or_equal_steps():
    t_span = torch.linspace(0, 2, 2, dtype=F64)
    results = {}
    for seminorm in (True, False):
        model = NeuralODE(mlp(), solver="dopri5", sensitivity="adjoint", atol=1e-8, rtol=1e-8,
                          atol_adjoint=1e-8, rtol_adjoint=1e-8, seminorm=seminorm)
        results[seminorm] = _grads(model, t_span, "last")
    _assert_grads_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-7)
    assert results[True][1].steps_backward <= results[False][1].steps_backward


def _saved_bytes(model: NeuralODE, step_size: float) -> int:
    model.step_size = step_size
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, traj = model(x0(), torch.tensor([0.0, 1.0], dtype=F64))
    traj.sum().backward()  # the graph is usable
    return total[0]


def test_adjoint_memory_is_flat_in_the_number_of_steps():
    adjoint = NeuralODE(mlp(), solver="rk4", sensitivity="adjoint")
    autograd = NeuralODE(mlp(), solver="rk4", sensitivity="autograd")
    adjoint_10, adjoint_100 = _saved_bytes(adjoint, 0.1), _saved_bytes(adjoint, 0.01)
    autograd_10, autograd_100 = _saved_bytes(autograd, 0.1), _saved_bytes(autograd, 0.01)
    assert adjoint.stats.steps_forward == autograd.stats.steps_forward == 100
    assert adjoint_10 == adjoint_100 > 0
    assert autograd_100 > 8 * autograd_10
    assert adjoint_100 * 10 < autograd_100


def test_the_interpolated_adjoint_needs_the_forward_solver() -> None:
    """The interpolant belongs to the solver that took the forward steps; another solver's would not fit."""
    from nodecore.numerics import DormandPrince45, IntegralController, StepCounts
    from nodecore.numerics.adjoint import BackwardSolve

    with pytest.raises(ValueError, match="needs forward_solver"):
        BackwardSolve(solver=DormandPrince45(), atol=1e-6, rtol=1e-6, controller=IntegralController(),
                      counts=StepCounts(), max_steps=100, interpolated=True)
