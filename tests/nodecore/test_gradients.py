"""Gradients of NeuralODE solves: adjoint against autograd, finite differences, seminorm, memory, depth-variant fields.

Everything is float64. Adjoint gradients solve a second ODE backwards, so they agree with autograd's (the
exact derivative of the forward discretization) only to the solver tolerance; the tolerances asserted
below are stated next to the solver tolerances they follow from.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from nodecore import DepthCat, NeuralODE

F64 = torch.float64
TIGHT = 1e-10  # forward and adjoint solver tolerances for the agreement tests


def mlp(seed: int = 0, dim: int = 2, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(F64)


def depth_variant_mlp(seed: int = 0, dim: int = 2, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(DepthCat(1), nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(F64)


def tight(**overrides) -> dict:
    options = dict(atol=TIGHT, rtol=TIGHT, atol_adjoint=TIGHT, rtol_adjoint=TIGHT)
    options.update(overrides)
    return options


def initial_state(seed: int = 1, batch: int = 5, dim: int = 2) -> Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, dim, dtype=F64)


LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    # Only the last depth: the adjoint solves once from T to 0.
    "last": lambda traj: traj[-1].pow(2).sum(),
    # Every depth, with different weights: the adjoint injects dL/dx(t_i) at each depth on its way back.
    "all": lambda traj: (traj.pow(2) * torch.linspace(0.5, 2.0, traj.shape[0], dtype=F64)[:, None, None]).sum()
    + traj[:, :, 0].sum(),
}


def gradients(
    field: nn.Module, sensitivity: str, loss: str, t_span: Tensor, **options
) -> tuple[list[Tensor], NeuralODE]:
    """Gradients of the loss with respect to ``[x0, *parameters]``, and the model (for its stats)."""
    model = NeuralODE(field, sensitivity=sensitivity, **options)
    x0 = initial_state().requires_grad_(True)
    model.zero_grad()
    _, trajectory = model(x0, t_span)
    LOSSES[loss](trajectory).backward()
    return [x0.grad, *(p.grad for p in model.parameters())], model


def max_relative_difference(a: list[Tensor], b: list[Tensor]) -> float:
    assert len(a) == len(b)
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# Adjoint against autograd
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_adjoint_matches_autograd(solver: str, loss: str) -> None:
    """At rtol=atol=1e-10 both gradients are within ~1e-9 of the exact one (measured 6e-10..2e-9); 1e-6 is
    far from both that and from the O(1e-3) discrepancy a wrong adjoint term would cause."""
    t_span = torch.linspace(0.0, 1.0, 6, dtype=F64)
    field = mlp()
    expected, _ = gradients(field, "autograd", loss, t_span, solver=solver, **tight())
    actual, model = gradients(field, "adjoint", loss, t_span, solver=solver, **tight())
    assert all(g is not None for g in actual)
    assert max_relative_difference(actual, expected) < 1e-6
    assert model.stats.nfe_backward > 0


def test_adjoint_matches_autograd_on_a_decreasing_t_span() -> None:
    t_span = torch.linspace(1.0, -1.0, 5, dtype=F64)
    field = depth_variant_mlp()
    expected, _ = gradients(field, "autograd", "all", t_span, **tight())
    actual, _ = gradients(field, "adjoint", "all", t_span, **tight())
    assert max_relative_difference(actual, expected) < 1e-6


def test_adjoint_injects_gradient_at_the_first_depth_too() -> None:
    """A loss that also reads trajectory[0] (= x0) adds its gradient to x0's directly."""
    t_span = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    for sensitivity in ("autograd", "adjoint"):
        model = NeuralODE(mlp(), sensitivity=sensitivity, **tight())
        x0 = initial_state().requires_grad_(True)
        _, trajectory = model(x0, t_span)
        (trajectory[0].sum() + trajectory[-1].sum()).backward()
        if sensitivity == "autograd":
            expected = x0.grad.clone()
        else:
            assert torch.allclose(x0.grad, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_adjoint_of_a_fixed_step_solver_steps_on_the_forward_grid(solver: str) -> None:
    """Without step_size, a fixed-step solver steps on t_span; a loss on the last depth alone must not let
    the backward solve take one giant step over the whole span (regression: nodecore before 70ef228 did).

    Max relative gap to autograd, measured: euler 3.4% (the O(h) gap between the adjoint and the exact
    derivative of 10 Euler steps) vs 18% with one backward step; rk4 7.5e-9 vs 1.5e-4.
    """
    t_span = torch.linspace(0.0, 1.0, 11, dtype=F64)
    field = mlp()
    expected, _ = gradients(field, "autograd", "last", t_span, solver=solver)
    actual, model = gradients(field, "adjoint", "last", t_span, solver=solver)
    assert model.stats.steps_forward == 10
    assert model.stats.steps_backward == 10
    assert max_relative_difference(actual, expected) < (0.08 if solver == "euler" else 1e-6)


def test_adjoint_gradient_for_parameters_when_x0_needs_none() -> None:
    t_span = torch.tensor([0.0, 1.0], dtype=F64)
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        field = mlp()
        model = NeuralODE(field, sensitivity=sensitivity, **tight())
        _, trajectory = model(initial_state(), t_span)
        trajectory[-1].pow(2).sum().backward()
        grads[sensitivity] = [p.grad for p in field.parameters()]
    assert max_relative_difference(grads["adjoint"], grads["autograd"]) < 1e-6


def test_adjoint_skips_frozen_parameters() -> None:
    t_span = torch.tensor([0.0, 1.0], dtype=F64)
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        field = mlp()
        field[0].weight.requires_grad_(False)
        model = NeuralODE(field, sensitivity=sensitivity, **tight())
        x0 = initial_state().requires_grad_(True)
        _, trajectory = model(x0, t_span)
        trajectory[-1].pow(2).sum().backward()
        assert field[0].weight.grad is None
        grads[sensitivity] = [x0.grad, field[0].bias.grad, field[2].weight.grad, field[2].bias.grad]
    assert max_relative_difference(grads["adjoint"], grads["autograd"]) < 1e-6


# --------------------------------------------------------------------------------------------------
# gradcheck: analytic gradients against finite differences
# --------------------------------------------------------------------------------------------------

W0 = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=F64)
X0 = torch.tensor([[1.0, 0.5], [-0.2, 0.3]], dtype=F64)
T_SPAN = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def test_gradcheck_autograd_wrt_x0_and_a_closure_captured_weight() -> None:
    """Autograd through a fixed-step solver is the exact derivative of the discrete solve: default tolerances.

    The field reads ``weight``, a leaf captured by closure; gradcheck gets that very tensor as an input
    (it perturbs inputs in place for its finite differences, which the closure then sees).
    """
    weight = W0.clone().requires_grad_(True)

    def field(x: Tensor) -> Tensor:
        return torch.tanh(x @ weight.T)

    model = NeuralODE(field, solver="rk4", step_size=0.1, sensitivity="autograd")

    def solve(x0: Tensor, w: Tensor) -> Tensor:
        assert w is weight
        return model(x0, T_SPAN)[1]

    assert torch.autograd.gradcheck(solve, (X0.clone().requires_grad_(True), weight))


class Linear2(nn.Module):
    """``dx/dt = tanh(x W^T)`` with ``W`` a registered parameter (what the adjoint differentiates)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(W0.clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.weight.T)


def adjoint_solve_fn(model: NeuralODE, module: Linear2) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x0, w) -> trajectory`` whose weight *is* ``w``.

    The adjoint returns gradients for the field's registered parameters and re-evaluates the field during
    backward, so ``w`` must stay installed as the parameter until then: it is put into ``_parameters``
    directly (``torch.func.functional_call`` restores the old parameter before backward runs, which would
    yield zero gradients).
    """

    def solve(x0: Tensor, w: Tensor) -> Tensor:
        module._parameters["weight"] = w
        return model(x0, T_SPAN)[1]

    return solve


def test_gradcheck_adjoint_with_a_fixed_step_solver() -> None:
    """Backward with rk4 at h = 0.05 on the same grid: the adjoint differs from the discrete derivative by
    O(h**4) ~ 1e-6 * C; measured to pass at atol 1e-8, asserted at 1e-6."""
    module = Linear2()
    model = NeuralODE(module, solver="rk4", step_size=0.05, sensitivity="adjoint")
    inputs = (X0.clone().requires_grad_(True), W0.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(adjoint_solve_fn(model, module), inputs, atol=1e-6, rtol=1e-5)


def test_gradcheck_adjoint_with_an_adaptive_solver() -> None:
    """dopri5 forward and backward at rtol=atol=1e-10: adjoint error ~1e-9, finite differences (eps=1e-6)
    of an adaptive solve carry ~tol/eps = 1e-4 noise at worst; measured to pass at atol 1e-6."""
    module = Linear2()
    model = NeuralODE(module, solver="dopri5", sensitivity="adjoint", **tight())
    inputs = (X0.clone().requires_grad_(True), W0.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(adjoint_solve_fn(model, module), inputs, atol=1e-5, rtol=1e-4)


def test_adjoint_does_not_silently_drop_the_gradient_of_a_captured_tensor() -> None:
    """A plain-function field is accepted (``NeuralODE(f)`` with ``f(x)`` a callable). If it reads a tensor
    that requires grad, the adjoint must either give that tensor its gradient or refuse clearly."""
    weight = W0.clone().requires_grad_(True)

    def field(x: Tensor) -> Tensor:
        return torch.tanh(x @ weight.T)

    expected_model = NeuralODE(field, solver="rk4", step_size=0.1, sensitivity="autograd")
    expected_model(X0, T_SPAN)[1][-1].sum().backward()
    expected = weight.grad.clone()
    weight.grad = None

    try:
        model = NeuralODE(field, solver="rk4", step_size=0.1, sensitivity="adjoint")
        model(X0, T_SPAN)[1][-1].sum().backward()
    except (ValueError, TypeError):
        return  # refusing is fine
    assert weight.grad is not None, "adjoint mode silently gave the captured weight no gradient"
    assert torch.allclose(weight.grad, expected, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Seminorm
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_seminorm_gives_the_same_gradients_with_no_more_backward_work(solver: str, loss: str) -> None:
    t_span = torch.linspace(0.0, 1.0, 6, dtype=F64)
    field = mlp(hidden=32)
    options = dict(solver=solver, atol=1e-8, rtol=1e-8, atol_adjoint=1e-8, rtol_adjoint=1e-8)
    semi, semi_model = gradients(field, "adjoint", loss, t_span, seminorm=True, **options)
    full, full_model = gradients(field, "adjoint", loss, t_span, seminorm=False, **options)
    assert max_relative_difference(semi, full) < 1e-5  # both within ~1e-7 of the exact gradient
    assert semi_model.stats.nfe_backward <= full_model.stats.nfe_backward
    assert semi_model.stats.steps_backward <= full_model.stats.steps_backward


def test_seminorm_saves_backward_steps_on_a_loss_at_the_end() -> None:
    """Measured: 50 vs 74 backward evaluations (dopri5, 16 hidden units, tol 1e-10)."""
    t_span = torch.tensor([0.0, 1.0], dtype=F64)
    _, semi = gradients(mlp(), "adjoint", "last", t_span, seminorm=True, **tight())
    _, full = gradients(mlp(), "adjoint", "last", t_span, seminorm=False, **tight())
    assert semi.stats.nfe_backward < full.stats.nfe_backward


# --------------------------------------------------------------------------------------------------
# Memory: bytes saved for backward during the forward pass
# --------------------------------------------------------------------------------------------------


def saved_bytes(sensitivity: str, solver: str, step_size: float) -> tuple[int, int]:
    """Total bytes of tensors autograd saves for backward while ``model(x0, t_span)`` runs, and the steps.

    ``saved_tensors_hooks`` sees every tensor packed for backward, including those a custom
    ``autograd.Function`` saves with ``ctx.save_for_backward`` (the adjoint's t_span, trajectory and
    parameters), so both modes are measured the same way.
    """
    torch.manual_seed(0)
    field = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 8)).to(F64)
    model = NeuralODE(field, solver=solver, sensitivity=sensitivity, step_size=step_size)
    x0 = torch.randn(64, 8, dtype=F64, requires_grad=True)
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, trajectory = model(x0, torch.tensor([0.0, 1.0], dtype=F64))
    trajectory[-1].sum().backward()  # the saved tensors were real: backward works
    assert x0.grad is not None and field[0].weight.grad is not None
    return total, model.stats.steps_forward


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_adjoint_memory_is_flat_in_the_number_of_steps(solver: str) -> None:
    """Measured (64x8 state, 8-64-8 MLP): autograd 3.3 MB -> 32.8 MB (rk4), 6.0 MB -> 53.4 MB (dopri5) for
    10 -> 100 steps; adjoint 21072 bytes both times (trajectory, t_span, parameters, one state)."""
    autograd = {h: saved_bytes("autograd", solver, h) for h in (0.1, 0.01)}
    adjoint = {h: saved_bytes("adjoint", solver, h) for h in (0.1, 0.01)}
    coarse_steps, fine_steps = autograd[0.1][1], autograd[0.01][1]
    assert fine_steps >= 9 * coarse_steps
    assert autograd[0.01][0] / autograd[0.1][0] > 5
    assert adjoint[0.01][0] / adjoint[0.1][0] < 1.1
    assert adjoint[0.01][0] < autograd[0.1][0] / 10


# --------------------------------------------------------------------------------------------------
# Depth-variant fields
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_depth_variant_field_gets_correct_adjoint_gradients(solver: str) -> None:
    t_span = torch.linspace(0.0, 2.0, 5, dtype=F64)
    field = depth_variant_mlp()
    expected, _ = gradients(field, "autograd", "all", t_span, solver=solver, **tight())
    actual, _ = gradients(field, "adjoint", "all", t_span, solver=solver, **tight())
    assert max_relative_difference(actual, expected) < 1e-6
    # The depth input matters: the gradient of the weight column that reads t is not zero, and the
    # same solve shifted in depth gives different gradients.
    depth_column = actual[1][:, -1]  # field[1].weight[:, -1] multiplies t
    assert depth_column.abs().max() > 1e-3
    shifted, _ = gradients(field, "adjoint", "all", t_span + 1.0, solver=solver, **tight())
    assert max_relative_difference(shifted, actual) > 1e-3
