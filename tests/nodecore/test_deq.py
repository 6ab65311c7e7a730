"""Deep equilibrium models: root finders, implicit gradients, memory, failures, and a trained classifier.

Convergence and gradient checks run in float64 with tight tolerances, on maps whose equilibrium is known
(linear maps) or whose contraction is guaranteed (tanh cells with a spectral-norm bound). Implicit
gradients are checked against finite differences (``gradcheck``) and against backpropagation through an
unrolled iteration; memory is measured with ``saved_tensors_hooks``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

from nodecore import SolverError, ToyDataset
from nodecore.deq import DEQ, ConvergenceError, DEQCell, DEQClassifier, DEQStats
from nodecore.root_finders import ROOT_FINDER_NAMES, ROOT_FINDERS, RootResult, get_root_finder

F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------------


def matrix_with_norm(n: int, norm: float, *, seed: int, symmetric: bool = False) -> Tensor:
    """``[n, n]`` float64 with spectral norm ``norm``; symmetric PSD (eigenvalues in [0, norm]) if asked."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, dtype=F64, generator=generator)
    if symmetric:
        A = A @ A.T
    return norm * A / torch.linalg.matrix_norm(A, ord=2)


def scaled_rotation(n: int, norm: float, *, seed: int) -> Tensor:
    """``norm * Q`` with Q orthogonal: every eigenvalue has modulus ``norm`` (iteration contracts at that rate)."""
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return norm * Q


class Affine(nn.Module):
    """``f(z, x) = z A^T + x``: equilibrium ``z* = x (I - A)^{-T}``, known exactly."""

    def __init__(self, A: Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return z @ self.A.T + x

    def exact(self, x: Tensor) -> Tensor:
        eye = torch.eye(len(self.A), dtype=self.A.dtype)
        return torch.linalg.solve(eye - self.A.detach(), x.detach().T).T


class TanhCell(nn.Module):
    """``f(z, x) = tanh(z W^T + x U^T)`` with state ``[B, n]`` for input ``[B, d]``."""

    def __init__(self, W: Tensor, d: int, *, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(W)
        self.U = nn.Parameter(torch.randn(len(W), d, dtype=W.dtype, generator=generator))

    def state_shape(self, x: Tensor) -> tuple[int, int]:
        return (x.shape[0], len(self.W))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T)


def inputs(batch: int, dim: int, *, seed: int, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(batch, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def relative_residual(f: nn.Module, z: Tensor, x: Tensor) -> Tensor:
    """``[B]``, computed independently of the library."""
    with torch.no_grad():
        fz = f(z, x)
        return (fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)


# --------------------------------------------------------------------------------------------------
# Registry and options
# --------------------------------------------------------------------------------------------------


def test_registry_holds_the_root_finders_and_rejects_unknown_names() -> None:
    assert {"fixed_point", "anderson", "broyden"} <= set(ROOT_FINDER_NAMES)
    assert all(ROOT_FINDERS[name].name == name and ROOT_FINDERS[name].description for name in ROOT_FINDER_NAMES)
    cell = TanhCell(matrix_with_norm(3, 0.5, seed=0), 2)
    for make in (lambda: get_root_finder("newton"), lambda: DEQ(cell, solver="newton"),
                 lambda: DEQ(cell, backward_solver="newton")):
        with pytest.raises(ValueError, match="'newton'") as err:
            make()
        assert all(name in str(err.value) for name in ROOT_FINDER_NAMES)


def test_the_registry_names_the_finders_of_the_numerics_layer() -> None:
    """nodecore.root_finders only names them: the implementation is nodecore.numerics.fixed_point's, once."""
    from nodecore import root_finders
    from nodecore.numerics import fixed_point

    assert ROOT_FINDERS["fixed_point"].solve is root_finders.fixed_point is fixed_point.fixed_point_iteration
    assert ROOT_FINDERS["anderson"].solve is root_finders.anderson is fixed_point.anderson_acceleration
    assert ROOT_FINDERS["broyden"].solve is root_finders.broyden is fixed_point.limited_memory_broyden
    assert RootResult is fixed_point.RootResult and root_finders.EPS == fixed_point.EPS
    assert (root_finders.DEFAULT_DAMPING, root_finders.DEFAULT_MEMORY, root_finders.DEFAULT_REGULARIZATION) == (
        fixed_point.DEFAULT_DAMPING, fixed_point.DEFAULT_MEMORY, fixed_point.DEFAULT_REGULARIZATION)


@pytest.mark.parametrize(
    ("option", "value"),
    [("tol", 0.0), ("tol", math.nan), ("max_iter", 0), ("max_iter", 2.5), ("backward_tol", -1.0),
     ("backward_max_iter", 0), ("damping", 1.5), ("damping", 0.0), ("memory", 0), ("regularization", -1.0)],
)
def test_bad_options_are_rejected_naming_the_value(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        DEQ(TanhCell(matrix_with_norm(3, 0.5, seed=0), 2), **{option: value})


def test_f_must_be_a_module_and_return_the_state_shape() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        DEQ(lambda z, x: z)

    class Widen(nn.Module):
        def forward(self, z: Tensor, x: Tensor) -> Tensor:
            return torch.cat([z, x], dim=-1)

    with pytest.raises(ValueError, match=r"shaped like the state \(4, 2\), got \(4, 4\)"):
        DEQ(Widen())(inputs(4, 2, seed=0))


# --------------------------------------------------------------------------------------------------
# Forward solves
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROOT_FINDER_NAMES)
def test_each_root_finder_reaches_the_known_equilibrium_of_a_contraction(name: str) -> None:
    """``z A^T + x`` with ``||A||_2 = 0.7``: the error is at most ``residual * ||f(z)|| / (1 - 0.7)``."""
    f = Affine(matrix_with_norm(6, 0.7, seed=1))
    x = inputs(5, 6, seed=2)
    tol = 1e-10
    result = ROOT_FINDERS[name].solve(lambda z: f(z, x), torch.zeros_like(x), tol=tol, max_iter=500,
                                      damping=1.0, memory=10, regularization=1e-8)
    assert isinstance(result, RootResult) and result.converged and result.finite
    assert 1 < result.iterations <= 500 and len(result.history) == result.iterations
    assert result.residual <= tol
    independent = relative_residual(f, result.z, x)
    assert torch.allclose(independent.max(), torch.tensor(result.residual, dtype=F64), rtol=1e-6)
    exact = f.exact(x)
    bound = tol * f(result.z, x).norm(dim=1) / (1 - 0.7)
    assert ((result.z - exact).norm(dim=1) <= 1.01 * bound).all()

    deq = DEQ(f, solver=name, tol=tol, max_iter=500)
    with torch.no_grad():
        z = deq(x)
    assert deq.stats == DEQStats(name, result.iterations, result.residual, True)
    assert torch.allclose(z, exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ROOT_FINDER_NAMES)
def test_each_root_finder_converges_on_a_deq_cell(name: str) -> None:
    torch.manual_seed(0)
    cell = DEQCell(3, 8, contraction=0.8).to(F64)
    x = inputs(16, 3, seed=3)
    deq = DEQ(cell, solver=name, tol=1e-9, max_iter=200)
    z = deq(x)
    assert z.shape == (16, 8)
    assert deq.stats.forward_converged and deq.stats.forward_residual <= 1e-9
    assert (relative_residual(cell, z, x) <= 1e-9).all()


def test_anderson_and_broyden_need_fewer_iterations_than_fixed_point_on_a_slow_contraction() -> None:
    """``tanh(z W^T + x U^T)``, W symmetric PSD with norm 0.98, tol 1e-8. Measured: fixed_point 245,
    anderson 20, broyden 46 iterations."""
    cell = TanhCell(matrix_with_norm(16, 0.98, seed=4, symmetric=True), 4)
    x = inputs(8, 4, seed=5, scale=0.1)
    iterations = {}
    for name in ("fixed_point", "anderson", "broyden"):
        deq = DEQ(cell, solver=name, tol=1e-8, max_iter=2000)
        with torch.no_grad():
            deq(x)
        assert deq.stats.forward_converged
        iterations[name] = deq.stats.forward_iterations
    assert iterations["fixed_point"] > 100
    assert 3 * iterations["anderson"] < iterations["fixed_point"]
    assert 2 * iterations["broyden"] < iterations["fixed_point"]


def test_damping_makes_an_oscillating_iteration_converge() -> None:
    """``f(z) = -1.2 z + x`` diverges under plain iteration; damping 0.5 gives the factor -0.1."""
    f = Affine(-1.2 * torch.eye(3, dtype=F64))
    x = inputs(2, 3, seed=6)
    with torch.no_grad(), pytest.raises(ConvergenceError):
        DEQ(f, solver="fixed_point", max_iter=100)(x)
    deq = DEQ(f, solver="fixed_point", damping=0.5, tol=1e-12, max_iter=100)
    with torch.no_grad():
        z = deq(x)
    assert deq.stats.forward_iterations < 20
    assert torch.allclose(z, x / 2.2, atol=1e-12)


def test_state_shape_defaults_to_x_and_a_warm_start_converges_at_once() -> None:
    f = Affine(matrix_with_norm(4, 0.5, seed=7))
    x = inputs(3, 4, seed=8)
    deq = DEQ(f, tol=1e-10)
    with torch.no_grad():
        z = deq(x)
        assert deq.stats.forward_iterations > 5
        deq(x, z0=z)
    assert deq.stats.forward_iterations == 1
    explicit = DEQ(TanhCell(matrix_with_norm(5, 0.5, seed=0), 4), state_shape=lambda x: (x.shape[0], 5))
    assert explicit(x).shape == (3, 5)


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROOT_FINDER_NAMES)
def test_implicit_gradients_pass_gradcheck_for_input_and_parameter(name: str) -> None:
    cell = TanhCell(matrix_with_norm(3, 0.6, seed=9), 2)
    deq = DEQ(cell, solver=name, tol=1e-13, max_iter=300)
    x = inputs(2, 2, seed=10).requires_grad_()
    W = cell.W.detach().clone().requires_grad_()

    def solve(x: Tensor, W: Tensor) -> Tensor:
        return torch.func.functional_call(deq, {"f.W": W}, (x,))

    assert torch.autograd.gradcheck(solve, (x, W), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert deq.stats.backward_converged and deq.stats.backward_residual <= 1e-13


def unrolled(f: nn.Module, x: Tensor, iterations: int) -> Tensor:
    z = torch.zeros(f.state_shape(x), dtype=x.dtype)
    for _ in range(iterations):
        z = f(z, x)
    return z


def loss_of(z: Tensor) -> Tensor:
    weights = torch.linspace(0.5, 2.0, z.shape[-1], dtype=z.dtype)
    return (z.pow(2) * weights).sum() + z[:, 0].sum()


def gradients(model_output: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss_of(model_output), leaves))


@pytest.mark.parametrize("name", ROOT_FINDER_NAMES)
def test_implicit_gradients_match_backprop_through_the_unrolled_iteration(name: str) -> None:
    """DEQCell (spectral norm <= 0.9) unrolled 300 times: its gradients converge to the implicit ones."""
    torch.manual_seed(1)
    cell = DEQCell(3, 8, contraction=0.9).to(F64)
    x = inputs(5, 3, seed=11).requires_grad_()
    leaves = [x, *cell.parameters()]
    deq = DEQ(cell, solver=name, tol=1e-12, max_iter=300)
    implicit = gradients(deq(x), leaves)
    assert deq.stats.backward_converged and deq.stats.backward_iterations > 1
    reference = gradients(unrolled(cell, x, 300), leaves)
    for got, expected in zip(implicit, reference):
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-10)


def saved_bytes(run) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``run()`` builds the graph."""
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = run()
    loss_of(output).backward()  # the saved tensors were real: backward works
    return sum(storages.values())


def test_memory_does_not_grow_with_the_number_of_iterations() -> None:
    """fixed_point, 64 x 32 state, W = 0.8 x rotation. Measured: 11 and 93 iterations (tol 1e-1, 1e-10);
    DEQ saves 47,104 bytes both times (z*, f(z*), W, U, x); the unrolled iteration 210,944 and 1,554,432."""
    cell = TanhCell(scaled_rotation(32, 0.8, seed=12), 8)
    x = inputs(64, 8, seed=13, scale=0.1).requires_grad_()
    deq_bytes, unrolled_bytes, iterations = {}, {}, {}
    for tol in (1e-1, 1e-10):
        deq = DEQ(cell, solver="fixed_point", tol=tol, max_iter=200)
        deq_bytes[tol] = saved_bytes(lambda: deq(x))
        iterations[tol] = deq.stats.forward_iterations
        unrolled_bytes[tol] = saved_bytes(lambda: unrolled(cell, x, iterations[tol]))
    assert 8 <= iterations[1e-1] <= 15 and 80 <= iterations[1e-10] <= 120
    assert deq_bytes[1e-1] == deq_bytes[1e-10]
    growth = iterations[1e-10] / iterations[1e-1]
    assert unrolled_bytes[1e-10] / unrolled_bytes[1e-1] > 0.75 * growth
    assert deq_bytes[1e-10] < unrolled_bytes[1e-1]


def test_no_graph_without_grad_and_second_order_is_refused() -> None:
    cell = TanhCell(matrix_with_norm(3, 0.5, seed=0), 2)
    deq = DEQ(cell)
    x = inputs(2, 2, seed=14, scale=0.5).requires_grad_()
    with torch.no_grad():
        assert not deq(x).requires_grad
    (grad,) = torch.autograd.grad(deq(x).sum(), x, create_graph=False)
    assert grad.shape == x.shape
    with pytest.raises(RuntimeError, match="first-order"):
        torch.autograd.grad(deq(x).sum(), x, create_graph=True)


# --------------------------------------------------------------------------------------------------
# Failures and statistics
# --------------------------------------------------------------------------------------------------


def test_an_expanding_map_raises_convergence_error_with_the_residual() -> None:
    """``2 z + x`` moves away from its fixed point: the relative residual tends to 1/2."""
    deq = DEQ(Affine(2.0 * torch.eye(3, dtype=F64)), solver="fixed_point", max_iter=40)
    with torch.no_grad(), pytest.raises(ConvergenceError) as err:
        deq(inputs(2, 3, seed=15))
    assert isinstance(err.value, SolverError)
    stats = deq.stats
    assert not stats.forward_converged and stats.forward_iterations == 40
    assert 0.4 < stats.forward_residual < 0.6
    message = str(err.value)
    assert f"relative residual {stats.forward_residual:.3g}" in message
    assert "tol=1e-05" in message and "40 iterations" in message
    assert "max_iter" in message and "damping" in message and "spectral" in message


def test_too_few_iterations_raise_and_stats_tell_how_far_the_solve_got() -> None:
    deq = DEQ(TanhCell(matrix_with_norm(4, 0.9, seed=16), 2), max_iter=2)
    with pytest.raises(ConvergenceError, match=r"relative residual 0\.\d+ after 2 iterations") as err:
        deq(inputs(3, 2, seed=17))
    assert f"{deq.stats.forward_residual:.3g}" in str(err.value)
    assert deq.stats.forward_iterations == 2 and not deq.stats.forward_converged


def test_a_diverging_iteration_reports_nan() -> None:
    class Exploding(nn.Module):
        def forward(self, z: Tensor, x: Tensor) -> Tensor:
            return torch.exp(z) + x

    with torch.no_grad(), pytest.raises(ConvergenceError, match="NaN or Inf"):
        DEQ(Exploding(), solver="fixed_point", max_iter=50)(torch.ones(2, 2))


def test_backward_non_convergence_raises_and_is_recorded() -> None:
    cell = TanhCell(matrix_with_norm(4, 0.9, seed=18), 2)
    deq = DEQ(cell, tol=1e-10, max_iter=200, backward_max_iter=2, backward_tol=1e-12)
    x = inputs(3, 2, seed=19).requires_grad_()
    z = deq(x)
    assert deq.stats.forward_converged and deq.stats.backward_residual is None
    with pytest.raises(ConvergenceError, match="backward solve .*backward_max_iter=2") as err:
        loss_of(z).backward()
    assert not deq.stats.backward_converged and deq.stats.backward_iterations == 2
    assert f"relative residual {deq.stats.backward_residual:.3g}" in str(err.value)


def test_stats_are_frozen_and_follow_forward_then_backward() -> None:
    deq = DEQ(TanhCell(matrix_with_norm(4, 0.5, seed=20), 2), solver="broyden")
    assert deq.stats == DEQStats()
    x = inputs(3, 2, seed=21).requires_grad_()
    z = deq(x)
    after_forward = deq.stats
    assert after_forward.root_finder == "broyden" and after_forward.forward_iterations > 1
    assert after_forward.backward_iterations == 0 and after_forward.backward_converged is None
    loss_of(z).backward()
    after_backward = deq.stats
    assert after_backward.backward_converged and after_backward.backward_iterations > 1
    assert after_backward.backward_residual <= deq.backward_tol
    assert dataclasses.replace(after_backward, backward_iterations=0, backward_residual=None,
                               backward_converged=None) == after_forward
    with pytest.raises(dataclasses.FrozenInstanceError):
        after_backward.forward_iterations = 0  # type: ignore[misc]
    assert DEQ(deq.f, **deq.options()).options() == deq.options()


# --------------------------------------------------------------------------------------------------
# A trained classifier
# --------------------------------------------------------------------------------------------------


def test_deq_cell_is_a_contraction() -> None:
    torch.manual_seed(0)
    cell = DEQCell(2, 16, contraction=0.7)
    with torch.no_grad():
        cell.weight.mul_(10.0)
    assert torch.linalg.matrix_norm(cell.recurrent_weight(), ord=2).item() == pytest.approx(0.7, rel=1e-5)
    assert cell.state_shape(torch.zeros(5, 2)) == (5, 16)
    with pytest.raises(ValueError, match="contraction"):
        DEQCell(2, 16, contraction=1.0)


def test_deq_classifier_learns_moons() -> None:
    """512 training points, 50 full-batch Adam steps (lr 0.05), float32. Measured: test accuracy 0.999 on
    1024 held-out points (0.990 after 20 steps); 11-14 forward and 8-13 backward Anderson iterations a step."""
    X, y = ToyDataset().generate(512, "moons", noise=0.1, seed=0)
    X_test, y_test = ToyDataset().generate(1024, "moons", noise=0.1, seed=1)
    torch.manual_seed(0)
    model = DEQClassifier(2, 32, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        loss = nn.functional.cross_entropy(model(X), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert model.stats.forward_converged and model.stats.backward_converged
    with torch.no_grad():
        accuracy = (model(X_test).argmax(dim=-1) == y_test).float().mean().item()
    assert accuracy >= 0.95
    assert model.deq.stats.forward_iterations <= model.deq.max_iter


def test_anderson_backward_handles_samples_without_gradient_even_unregularised() -> None:
    """Only sample 0 enters the loss: the other samples' gradients are exactly 0 and stay so (their Anderson
    systems are all zeros, which the ridge floor keeps solvable)."""
    cell = TanhCell(matrix_with_norm(4, 0.8, seed=22), 2)
    deq = DEQ(cell, solver="anderson", tol=1e-10, max_iter=100, regularization=0.0)
    x = inputs(3, 2, seed=23).requires_grad_()
    deq(x)[0].pow(2).sum().backward()
    assert deq.stats.backward_converged
    assert x.grad[0].abs().sum() > 0 and (x.grad[1:] == 0).all()
