"""root_find (torchdyn's API) on batched systems with known roots: every method and line search finds them to the
requested tolerance; Newton converges quadratically, Broyden superlinearly, chord linearly at its predicted rate;
the termination condition stops exactly when all four of its conditions hold; line searches never let |g| grow;
bad input fails before any work, and a blow-up says what to try. Also torchdyn's import paths for the numerics
utilities, integrators and ``numerics.solvers.root``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from nodecore.errors import NonFiniteError
from nodecore.numerics.root import (
    ROOT_SOLVER_DICT,
    SEARCH_METHODS,
    BroydenBad,
    BroydenFull,
    LineSearchArmijo,
    NaiveSearch,
    RootLogger,
    TerminationCondition,
    _blow_up_message,
    batch_jacobian,
    root_find,
)

F64 = torch.float64
METHODS = tuple(ROOT_SOLVER_DICT)
SEARCHES = tuple(SEARCH_METHODS)
A = torch.tensor([[2.0, 5.0], [3.0, 0.5], [7.0, 1.5]], dtype=F64)  # per-sample, per-component constants
CUBE_ROOT = A ** (1 / 3)
P = torch.tensor([1.0, 1.3, 0.8], dtype=F64)  # the coupled system's root, per sample: (P, Q)
Q = torch.tensor([1.2, 0.9, 1.5], dtype=F64)
COUPLED_ROOT = torch.stack([P, Q], 1)


def cubic(z: Tensor) -> Tensor:
    """``z**3 - A``: root ``A**(1/3)``, a different one in every sample and component."""
    return z**3 - A


def coupled(z: Tensor) -> Tensor:
    """``[x^3 + y - (p^3 + q), x + y^3 - (p + q^3)]``: root ``(p, q)`` per sample, a full Jacobian."""
    x, y = z[:, 0], z[:, 1]
    return torch.stack([x**3 + y - (P**3 + Q), x + y**3 - (P + Q**3)], 1)


def errors(logger: RootLogger, root: Tensor, z0: Tensor) -> list[Tensor]:
    """``|z_k - root|`` elementwise for k = 0, 1, ... (from the logger)."""
    return [(z - root).abs() for z in [z0, *logger.data["z"]]]


def solve(g, z0: Tensor, **options) -> tuple[Tensor, RootLogger]:
    z, logger = root_find(g, z0, **options)
    assert z.shape == z0.shape and logger.iterations == len(logger.data["z"])
    return z, logger


# --- every method finds the root ---------------------------------------------------------------------------


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_search_finds_the_cubic_root_to_the_requested_tolerance(method: str, search: str) -> None:
    z0 = 1.15 * CUBE_ROOT  # near enough for chord to converge (its rate here is 1 - 1/1.15^2 = 0.24)
    alpha = 1.0 if search == "none" else 0.1  # with a line search alpha is only the first trial
    z, logger = solve(cubic, z0, alpha=alpha, f_tol=1e-10, x_tol=1e-10, method=method, search_method=search)
    assert logger.converged and logger.data["termination_condition"] == "total condition"
    assert (cubic(z).norm(dim=1) <= 1e-10).all()
    assert (logger.data["dz"][-1].norm(dim=1) <= 1e-10).all()
    torch.testing.assert_close(z, CUBE_ROOT, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_finds_the_root_of_a_coupled_system(method: str) -> None:
    z0 = COUPLED_ROOT + torch.tensor([0.15, -0.1], dtype=F64)
    z, logger = solve(coupled, z0, f_tol=1e-9, x_tol=1e-9, method=method)  # torchdyn's defaults otherwise
    assert logger.converged and (coupled(z).norm(dim=1) <= 1e-9).all()
    torch.testing.assert_close(z, COUPLED_ROOT, rtol=0, atol=1e-9)


# --- measured convergence rates ------------------------------------------------------------------------------


def test_newton_squares_the_error_every_iteration() -> None:
    """For ``z^3 - a`` one Newton step maps the error ``e`` to exactly ``e^2 (2z + r) / (3z^2)``."""
    z0 = 1.5 * CUBE_ROOT
    _, logger = solve(cubic, z0, alpha=1.0, f_tol=1e-14, x_tol=1e-14, method="newton", search_method="none")
    zs = [z0, *logger.data["z"]]
    measured = 0
    for z, z_next in itertools.pairwise(zs):
        e, e_next = (z - CUBE_ROOT).abs(), (z_next - CUBE_ROOT).abs()
        if e.min() < 1e-6:
            break
        torch.testing.assert_close(e_next, e**2 * (2 * z + CUBE_ROOT) / (3 * z**2), rtol=1e-6, atol=1e-15)
        measured += 1
    assert measured >= 3
    # and on the coupled system (full Jacobian), the estimated order is 2
    z0 = COUPLED_ROOT + torch.tensor([0.15, -0.1], dtype=F64)
    _, logger = solve(coupled, z0, alpha=1.0, f_tol=1e-14, x_tol=1e-14, method="newton", search_method="none")
    e = [err.max().item() for err in errors(logger, COUPLED_ROOT, z0)]
    orders = [math.log(e[k + 1] / e[k]) / math.log(e[k] / e[k - 1]) for k in range(1, len(e) - 1) if e[k + 1] > 1e-14]
    assert len(orders) >= 2 and all(1.9 < p < 2.1 for p in orders[1:]), orders


def test_chord_converges_linearly_at_its_predicted_rate() -> None:
    """Chord keeps ``J(z0) = 3 z0^2``; from ``z0 = 1.2 r`` the error contracts by ``1 - 3r^2 / 3z0^2 = 1 - 1/1.44``."""
    z0 = 1.2 * CUBE_ROOT
    _, logger = solve(cubic, z0, alpha=1.0, f_tol=1e-13, x_tol=1e-13, method="chord", search_method="none")
    e = errors(logger, CUBE_ROOT, z0)
    ratios = [e[k + 1] / e[k] for k in range(len(e) - 1) if e[k + 1].min() > 1e-11]
    assert len(ratios) >= 15
    for ratio in ratios[:-8]:
        assert (ratio < 0.31).all()  # at least linear from the start
    for ratio in ratios[-8:]:
        torch.testing.assert_close(ratio, torch.full_like(ratio, 1 - 1 / 1.44), rtol=2e-3, atol=0)
    # the Jacobian never changes: no faster than linear on the coupled system either
    z0 = COUPLED_ROOT + torch.tensor([0.15, -0.1], dtype=F64)
    _, logger = solve(coupled, z0, alpha=1.0, f_tol=1e-12, x_tol=1e-12, method="chord", search_method="none")
    e = [err.max().item() for err in errors(logger, COUPLED_ROOT, z0)]
    late = [e[k + 1] / e[k] for k in range(2, len(e) - 1) if e[k + 1] > 1e-11]
    assert len(late) >= 10 and all(0.1 < r < 0.5 for r in late), late


@pytest.mark.parametrize("method", ["broyden", "broyden_fast"])
def test_broyden_converges_superlinearly(method: str) -> None:
    # scalar systems: both updates are the secant method, of order (1 + sqrt 5) / 2
    a = torch.tensor([[2.0], [5.0], [0.5]], dtype=F64)
    root = a ** (1 / 3)
    z0 = 1.2 * root
    _, logger = solve(lambda z: z**3 - a, z0, alpha=1.0, f_tol=1e-14, x_tol=1e-14, method=method,
                      search_method="none")
    for b in range(3):
        e = [err[b, 0].item() for err in errors(logger, root, z0)]
        orders = [math.log(e[k + 1] / e[k]) / math.log(e[k] / e[k - 1])
                  for k in range(2, len(e) - 1) if e[k + 1] > 1e-13]
        assert len(orders) >= 2 and all(1.4 < p < 2.0 for p in orders), orders
    # a coupled system: the contraction factor of the error goes to 0 (chord's stays near 0.3)
    z0 = COUPLED_ROOT + torch.tensor([0.15, -0.1], dtype=F64)
    _, logger = solve(coupled, z0, alpha=1.0, f_tol=1e-14, x_tol=1e-14, method=method, search_method="none")
    e = [err.max().item() for err in errors(logger, COUPLED_ROOT, z0)]
    ratios = [e[k + 1] / e[k] for k in range(len(e) - 1) if e[k + 1] > 1e-13]
    assert all(r < 0.35 for r in ratios) and all(r < 0.03 for r in ratios[-3:]), ratios
    assert ratios[-1] < 0.01 and ratios[-1] < min(ratios[:3]) / 50, ratios


def test_the_two_broyden_updates_satisfy_the_secant_condition_and_change_what_they_should() -> None:
    gen = torch.Generator().manual_seed(0)
    J_inv = torch.randn(4, 3, 3, dtype=F64, generator=gen) + 3 * torch.eye(3, dtype=F64)
    dz, dg = torch.randn(4, 3, dtype=F64, generator=gen), torch.randn(4, 3, dtype=F64, generator=gen)
    ortho = torch.randn(4, 3, dtype=F64, generator=gen)
    for method in (BroydenFull(), BroydenBad()):
        new = method.update_jacobian(dg, dz, J_inv)  # torchdyn's positional order
        torch.testing.assert_close(torch.einsum("bij,bj->bi", new, dg), dz)  # J_inv_new dg = dz
    # "good": the Jacobian J = J_inv^-1 changes only along dz (J_new v = J v for v orthogonal to dz)
    v = ortho - (ortho * dz).sum(1, keepdim=True) / (dz * dz).sum(1, keepdim=True) * dz
    good = BroydenFull().update_jacobian(dg, dz, J_inv)
    torch.testing.assert_close(torch.linalg.solve(good, v), torch.linalg.solve(J_inv, v))
    # "bad": J_inv changes only along dg (J_inv_new w = J_inv w for w orthogonal to dg)
    w = ortho - (ortho * dg).sum(1, keepdim=True) / (dg * dg).sum(1, keepdim=True) * dg
    bad = BroydenBad().update_jacobian(dg, dz, J_inv)
    torch.testing.assert_close(torch.einsum("bij,bj->bi", bad, w), torch.einsum("bij,bj->bi", J_inv, w))
    # a zero step (a converged sample) leaves its estimate alone instead of dividing by zero
    zero = torch.zeros(4, 3, dtype=F64)
    for method in (BroydenFull(), BroydenBad()):
        torch.testing.assert_close(method.update_jacobian(zero, zero, J_inv), J_inv)


@pytest.mark.parametrize("method", METHODS)
def test_one_step_called_as_torchdyn_calls_it(method: str) -> None:
    solver = ROOT_SOLVER_DICT[method]
    z0 = 1.2 * CUBE_ROOT
    J_inv = solver.initial_jacobian(cubic, z0)
    torch.testing.assert_close(J_inv, torch.diag_embed(1 / (3 * z0**2)))
    z, dz, geval, new = solver.step(g=cubic, z0=z0, J_inv=J_inv, geval_old=cubic(z0), alpha=0.5)
    torch.testing.assert_close(dz, cubic(z0) / (3 * z0**2))
    torch.testing.assert_close(z, z0 - 0.5 * dz)
    torch.testing.assert_close(geval, cubic(z))
    if method == "newton":
        torch.testing.assert_close(new, torch.diag_embed(1 / (3 * z**2)))
    elif method == "chord":
        assert new is J_inv
    else:
        torch.testing.assert_close(torch.einsum("bij,bj->bi", new, geval - cubic(z0)), z - z0)


# --- fewer equations than unknowns ------------------------------------------------------------------------
#
# torchdyn's tests hand root_find a residual of shape [N, 1] for z of shape [N, 2] (their 'ackley'). torchdyn does
# not broadcast it: its Jacobian is [N, 1, 2] and J_inv its [N, 2, 1] pseudo-inverse, so every step is the
# minimum-norm solution of the linearised equation. nodecore does the same for any M <= D equations.
#
# |z|^2 - r^2 = 0 (one equation, a circle of roots): the gradient 2z is radial, so every J_inv and every Broyden
# update is a multiple of z0 and every method walks along z0's ray, to the root r z0 / |z0|.

RADII = torch.tensor([[1.0], [2.0], [0.5]], dtype=F64)
RAY_Z0 = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.2, -0.3]], dtype=F64)  # outside, outside and inside the circle
RAY_ROOT = RADII * RAY_Z0 / RAY_Z0.norm(dim=1, keepdim=True)


def circle(z: Tensor) -> Tensor:
    """``|z|^2 - r^2``: ``[B, 2] -> [B, 1]``."""
    return z.square().sum(1, keepdim=True) - RADII**2


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("method", METHODS)
def test_one_equation_in_two_unknowns_reaches_the_root_on_the_starting_ray(method: str, search: str) -> None:
    alpha = 1.0 if search == "none" else 0.1
    z, logger = solve(circle, RAY_Z0, alpha=alpha, f_tol=1e-10, x_tol=1e-10, method=method, search_method=search)
    assert logger.converged and logger.data["geval"][-1].shape == (3, 1)
    torch.testing.assert_close(z, RAY_ROOT, rtol=0, atol=1e-9)


def test_newton_on_one_equation_is_herons_square_root() -> None:
    """Newton's minimum-norm step maps the radius rho to (rho^2 + r^2) / (2 rho): the error e to e^2 / (2 rho)."""
    _, logger = solve(circle, RAY_Z0, alpha=1.0, f_tol=1e-14, x_tol=1e-14, method="newton", search_method="none")
    radii = [RAY_Z0.norm(dim=1, keepdim=True)] + [z.norm(dim=1, keepdim=True) for z in logger.data["z"]]
    measured = 0
    for rho, rho_next in itertools.pairwise(radii):
        if (rho - RADII).abs().min() < 1e-6:
            break
        torch.testing.assert_close(rho_next - RADII, (rho - RADII) ** 2 / (2 * rho), rtol=1e-6, atol=1e-15)
        measured += 1
    assert measured >= 3


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("method", METHODS)
def test_a_linear_underdetermined_system_ends_at_the_projection_of_z0(method: str, search: str) -> None:
    """``A z = c`` with ``A`` ``[2, 3]`` per sample: every step lies in the row space of ``A`` (the Broyden updates
    of a linear map leave ``J_inv = A^+`` exact), so the solve ends at ``z0 - A^+ (A z0 - c)``, the nearest root."""
    gen = torch.Generator().manual_seed(0)
    A, c = torch.randn(4, 2, 3, dtype=F64, generator=gen), torch.randn(4, 2, dtype=F64, generator=gen)
    z0 = torch.randn(4, 3, dtype=F64, generator=gen)

    def g(z: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", A, z) - c

    z, logger = solve(g, z0, alpha=0.5, f_tol=1e-12, x_tol=1e-12, method=method, search_method=search)
    assert logger.converged
    torch.testing.assert_close(z, z0 - torch.einsum("bij,bj->bi", torch.linalg.pinv(A), g(z0)), rtol=0, atol=1e-11)


@pytest.mark.parametrize("method", METHODS)
def test_two_nonlinear_equations_in_three_unknowns(method: str) -> None:
    """The circle where the sphere ``|z| = 2`` meets the plane ``x + y - w = 1``: off any ray, torchdyn's defaults."""
    def g(z: Tensor) -> Tensor:
        x, y, w = z.unbind(1)
        return torch.stack([x**2 + y**2 + w**2 - 4, x + y - w - 1], 1)

    z0 = torch.tensor([[1.0, 2.0, 0.5], [-1.5, 0.5, -1.0], [0.3, -0.3, 2.0]], dtype=F64)
    z, logger = solve(g, z0, f_tol=1e-10, x_tol=1e-10, method=method)
    assert logger.converged
    torch.testing.assert_close(z.norm(dim=1), torch.full((3,), 2.0, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(z[:, 0] + z[:, 1] - z[:, 2], torch.ones(3, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_through_an_underdetermined_solve_are_those_of_the_root_reached(method: str) -> None:
    """The root reached is ``r z0 / |z0|``, so ``d sum(z*) / dr = sum(z0 / |z0|)``."""
    r = RADII.clone().requires_grad_()
    z, logger = root_find(lambda z: z.square().sum(1, keepdim=True) - r**2, RAY_Z0, f_tol=1e-12, x_tol=1e-12,
                          method=method)
    assert logger.converged
    (grad,) = torch.autograd.grad(z.sum(), r)
    torch.testing.assert_close(grad, (RAY_Z0 / RAY_Z0.norm(dim=1, keepdim=True)).sum(1, keepdim=True), rtol=1e-8,
                               atol=0)


def test_torchdyns_ackley_has_no_root_and_is_not_reported_converged() -> None:
    """``-200 exp(-0.02 |z|) < 0`` everywhere: torchdyn's test of it (``func(root) <= 1e-2``) holds at any z. Here |g|
    falls as z runs off to infinity (Newton's step for the exponential stays 50 long), and no method claims a root."""
    def ackley(z: Tensor) -> Tensor:
        return -200 * torch.exp(-0.02 * z.square().sum(-1, keepdim=True).sqrt())

    z0 = 0.1 * torch.randn(10, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for method in METHODS:
        z, logger = solve(ackley, z0, alpha=1.0, search_method="armijo", f_tol=1e-3, f_rtol=1e-3, x_tol=1e-2,
                          x_rtol=1e-2, maxiters=50, method=method)
        assert not logger.converged and logger.iterations == 50
        norms = [ackley(z0).abs()] + [g.abs() for g in logger.data["geval"]]
        assert all((after <= before).all() for before, after in itertools.pairwise(norms))
        assert (z.norm(dim=1) > z0.norm(dim=1)).all()


def test_the_broyden_updates_keep_the_secant_condition_for_a_rectangular_estimate() -> None:
    gen = torch.Generator().manual_seed(1)
    J_inv = torch.randn(4, 3, 2, dtype=F64, generator=gen)  # [B, D, M]: 2 equations in 3 unknowns
    dz, dg = torch.randn(4, 3, dtype=F64, generator=gen), torch.randn(4, 2, dtype=F64, generator=gen)
    for method in (BroydenFull(), BroydenBad()):
        new = method.update_jacobian(dg, dz, J_inv)
        assert new.shape == J_inv.shape
        torch.testing.assert_close(torch.einsum("bij,bj->bi", new, dg), dz)


# --- the termination condition -----------------------------------------------------------------------------
#
# g(z) = z - c with step size 1/2 (no line search): every method takes the same steps (the Jacobian is 1, and
# the Broyden updates of a linear map leave it exact), so from z0 = c + e0 the error after k iterations is
# e0 / 2^k (exact in binary floating point), |g| after iteration k is e0 / 2^k and the direction dz used in
# iteration k is the previous error e0 / 2^(k-1). By hand, the first k meeting each condition:


def linear(c: float):
    return lambda z: z - c


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("e0", "tolerances", "expected"), [
    # |g| <= 1e-2: k >= 7; |dz| <= 1e-3: k - 1 >= 10; both: 11
    ([1.0], {"f_tol": 1e-2, "f_rtol": 0.1, "x_tol": 1e-3, "x_rtol": 1}, 11),
    # f binds: |g| <= 1e-4 needs k >= 14 (2^-13 = 1.2e-4); |dz| <= 1e-2 holds from k = 8
    ([1.0], {"f_tol": 1e-4, "f_rtol": 0.1, "x_tol": 1e-2, "x_rtol": 1}, 14),
    # f_rtol binds, relative to |g(z0)| = 1: 2^-k <= 1e-3 needs k >= 10 (relative to |g(z1)|, torchdyn's, 11)
    ([1.0], {"f_tol": 1.0, "f_rtol": 1e-3, "x_tol": 1.0, "x_rtol": 1}, 10),
    # batch: sample 1 as in the first case (11); sample 2 (e0 = 4): 4 * 2^-(k-1) <= 1e-3 needs k >= 13
    ([1.0, 4.0], {"f_tol": 1e-2, "f_rtol": 0.1, "x_tol": 1e-3, "x_rtol": 1}, 13),
])
def test_termination_stops_as_soon_as_every_condition_holds(method: str, e0: list[float], tolerances: dict,
                                                            expected: int) -> None:
    z0 = 3.0 + torch.tensor(e0, dtype=F64)[:, None]
    z, logger = solve(linear(3.0), z0, alpha=0.5, method=method, search_method="none", **tolerances)
    assert logger.converged and logger.iterations == expected
    assert logger.data["iteration"] == list(range(1, expected + 1))
    torch.testing.assert_close(z, 3.0 + z0.new_tensor(e0)[:, None] / 2**expected, rtol=0, atol=0)
    torch.testing.assert_close(logger.data["dz"][-1], z0.new_tensor(e0)[:, None] / 2 ** (expected - 1),
                               rtol=0, atol=0)


def test_x_rtol_is_relative_to_the_new_iterate() -> None:
    """Root 0 from z0 = 1: z_k = 2^-k and dz = 2^-(k-1) = 2 |z_k|, so x_rtol = 2 holds (k >= 8 by the
    absolute tolerances) and anything below never does."""
    z0 = torch.ones(2, 1, dtype=F64)
    _, logger = solve(linear(0.0), z0, alpha=0.5, x_rtol=2.0, method="chord", search_method="none")
    assert logger.converged and logger.iterations == 8
    _, logger = solve(linear(0.0), z0, alpha=0.5, x_rtol=1.99, method="chord", search_method="none")
    assert not logger.converged and logger.iterations == 100


@pytest.mark.parametrize("maxiters", [1, 7])
def test_maxiters_is_honoured(maxiters: int) -> None:
    calls = []

    def g(z: Tensor) -> Tensor:
        calls.append(z.shape)
        return z

    z0 = torch.ones(2, 1, dtype=F64)
    z, logger = solve(g, z0, alpha=0.5, maxiters=maxiters, method="chord", search_method="none")
    assert not logger.converged and logger.iterations == maxiters and "termination_condition" not in logger.data
    torch.testing.assert_close(z, z0 / 2**maxiters, rtol=0, atol=0)
    assert len(calls) == 2 + maxiters  # g(z0), the Jacobian at z0, one per iteration
    assert set(calls) == {torch.Size([2, 1])}  # always called on the whole batch


def test_termination_condition_on_its_own() -> None:
    tc = TerminationCondition(f_tol=1e-2, f_rtol=0.5, x_tol=1e-2, x_rtol=1)
    tc.start(torch.tensor([[0.01]], dtype=F64))
    small = torch.tensor([[0.004]], dtype=F64)
    assert tc.check(small, torch.ones(1, 1, dtype=F64), small) == 2  # |g| <= 0.5 * 0.01 and |dz| small
    assert tc.check(small + 0.002, torch.ones(1, 1, dtype=F64), small) == 0  # 0.006 > 0.5 * 0.01
    assert tc.iteration == 2
    fresh = TerminationCondition()  # without start: the first check's |g| is the reference
    assert fresh.check(small, torch.ones(1, 1, dtype=F64), small) == 0 and fresh.f0_norm.item() == 0.004


# --- line searches -------------------------------------------------------------------------------------------
#
# arctan(z) = 0: from |z| > 1.39 Newton's full step overshoots and |g| grows.

ATAN_Z0 = torch.tensor([[2.0, -3.0], [1.5, -1.45], [-2.5, 4.0]], dtype=F64)


def test_the_full_step_overshoots_on_arctan() -> None:
    _, logger = solve(torch.atan, ATAN_Z0, alpha=1.0, maxiters=3, method="newton", search_method="none")
    assert (logger.data["geval"][0].norm(dim=1) > torch.atan(ATAN_Z0).norm(dim=1)).all()


@pytest.mark.parametrize("search", ["naive", "armijo"])
@pytest.mark.parametrize("method", METHODS)
def test_line_searches_never_let_g_grow(method: str, search: str) -> None:
    z, logger = solve(torch.atan, ATAN_Z0, alpha=1.0, f_tol=1e-10, x_tol=1e-10, method=method,
                      search_method=search)
    norms = [torch.atan(ATAN_Z0).norm(dim=1)] + [g.norm(dim=1) for g in logger.data["geval"]]
    for before, after in itertools.pairwise(norms):
        assert (after <= before).all()
    assert (logger.data["alpha"][0] < 1).all()  # the first, overshooting, full step was cut
    if method != "chord":  # chord keeps the slope at z0, 1/17 for z0 = 4: hopeless, though never worse
        assert logger.converged
        torch.testing.assert_close(z, torch.zeros_like(z), rtol=0, atol=1e-10)


def test_step_sizes_are_per_sample() -> None:
    """Along Newton's direction from 2 the full step overshoots and 0.1 does not; from 0.5 the full step is
    fine. Each sample gets its own step size (torchdyn's search picks one for the whole batch)."""
    z0 = torch.tensor([[2.0], [0.5]], dtype=F64)
    direction = -torch.atan(z0) * (1 + z0**2)
    naive = NaiveSearch(torch.atan, torch.atan(z0), direction, z0)
    alpha, phi = naive.search()
    assert alpha.tolist() == pytest.approx([0.1, 1.0]) and naive.accepted.all()
    torch.testing.assert_close(phi, torch.atan(naive.z).square().sum(1))
    torch.testing.assert_close(naive.z, z0 + alpha[:, None] * direction)
    armijo = LineSearchArmijo(torch.atan, torch.atan(z0), direction, z0)
    alpha, phi = armijo.search()
    assert alpha[1] == 1.0 and 0.1 < alpha[0] < 0.5
    phi0 = torch.atan(z0).square().sum(1)
    assert (phi <= phi0 * (1 - 2e-4 * alpha)).all()  # Armijo's sufficient decrease, c1 = 1e-4


def test_a_search_that_finds_no_decrease_stays_put() -> None:
    z0 = torch.tensor([[1.0]], dtype=F64)
    uphill = NaiveSearch(torch.atan, torch.atan(z0), torch.ones_like(z0), z0)  # ascent direction
    alpha, _ = uphill.search()
    assert alpha.item() == 0.0 and not uphill.accepted.any() and torch.equal(uphill.z, z0)


# --- batch_jacobian ------------------------------------------------------------------------------------------


def test_batch_jacobian_with_per_sample_parameters() -> None:
    """torchdyn's batch_jacobian calls the function on single rows, which breaks per-sample parameters."""
    z = COUPLED_ROOT + 0.1
    J = batch_jacobian(coupled, z)
    x, y = z[:, 0], z[:, 1]
    expected = torch.stack([torch.stack([3 * x**2, torch.ones_like(x)], -1),
                            torch.stack([torch.ones_like(y), 3 * y**2], -1)], 1)
    torch.testing.assert_close(J, expected)


# --- errors ------------------------------------------------------------------------------------------------


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return z**3 - 2


@pytest.mark.parametrize(("z", "options", "message"), [
    (torch.ones(2, 2), {"method": "secant"},
     "unknown method 'secant'; valid methods: broyden, broyden_fast, newton, chord"),
    (torch.ones(2, 2), {"search_method": "wolfe"},
     "unknown search_method 'wolfe'; valid search_methods: naive, armijo, none"),
    (torch.ones(2), {}, r"shape \[batch, dim\] with batch, dim >= 1, got \[2\]"),
    (torch.ones(2, 2, 2), {}, r"got \[2, 2, 2\]"),
    (torch.ones(0, 2), {}, r"got \[0, 2\]"),
    (torch.ones(2, 2, dtype=torch.int64), {}, "floating-point tensor"),
    ([[1.0, 2.0]], {}, "got a list"),
    (torch.tensor([[1.0, 2.0], [float("nan"), 1.0]]), {}, r"finite z; samples \[1\] have NaN or Inf"),
    (torch.tensor([[1.0, float("inf")]]), {}, r"samples \[0\]"),
    (torch.ones(2, 2), {"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
    (torch.ones(2, 2), {"maxiters": 0}, "maxiters must be an integer >= 1, got 0"),
    (torch.ones(2, 2), {"maxiters": True}, "maxiters must be an integer >= 1, got True, a bool"),
    (torch.ones(2, 2), {"maxiters": 10.0}, "maxiters must be an integer"),
    (torch.ones(2, 2), {"f_tol": -1e-3}, "f_tol must be a finite number >= 0"),
    (torch.ones(2, 2), {"x_rtol": float("nan")}, "x_rtol must be a finite number >= 0"),
])
def test_bad_input_fails_before_g_is_called(z, options: dict, message: str) -> None:
    g = Counting()
    with pytest.raises(ValueError, match=message):
        root_find(g, z, **options)
    assert g.calls == 0


def test_bad_systems_fail_before_iterating() -> None:
    with pytest.raises(ValueError, match=r"at most as many equations as unknowns: g\(z\) has shape \[3, 4\] for z "
                                         r"of shape \[3, 2\], an overdetermined system"):
        root_find(lambda z: torch.cat([z, z], 1), torch.ones(3, 2))
    for wrong in (lambda z: z[:2], lambda z: z[:, 0], lambda z: z[:, :0]):  # batch, a 1-D output, no equation
        with pytest.raises(ValueError, match=r"g\(z\) of shape \[3, M\] with 1 <= M <= 2 for z of shape \[3, 2\]"):
            root_find(wrong, torch.ones(3, 2))
    with pytest.raises(ValueError, match="got a float"):
        root_find(lambda z: 1.0, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"g\(z\) is not finite at the initial z in samples \[0\]"):
        root_find(lambda z: torch.log(z - 1), torch.tensor([[0.5], [2.0]]))
    with pytest.raises(TypeError, match="callable g"):
        root_find("g", torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"x of shape \[batch, dim\], got shape \[3\]"):
        batch_jacobian(cubic, torch.ones(3))


def test_a_blow_up_during_the_iteration_raises() -> None:
    def g(z: Tensor) -> Tensor:  # arctan, undefined beyond |z| = 5: Newton's full steps from 3 get there
        return torch.where(z.abs() > 5, torch.full_like(z, float("nan")), torch.atan(z))

    with pytest.raises(NonFiniteError, match=r"iteration 1 with search_method='none', in samples \[0\]; try "
                                             r"search_method='armijo' or 'naive'"):
        root_find(g, torch.tensor([[3.0], [0.1]], dtype=F64), alpha=1.0, method="newton", search_method="none")
    z, logger = root_find(g, torch.tensor([[3.0], [0.1]], dtype=F64), alpha=1.0, method="newton")  # searched
    assert logger.converged and z.abs().max() < 1e-2


def test_a_blow_up_message_lists_a_few_samples_and_counts_the_rest() -> None:
    def g(z: Tensor) -> Tensor:  # every sample's full Newton step from 3 lands where g is NaN
        return torch.where(z.abs() > 5, torch.full_like(z, float("nan")), torch.atan(z))

    with pytest.raises(NonFiniteError) as raised:
        root_find(g, torch.full((40, 1), 3.0, dtype=F64), alpha=1.0, method="newton", search_method="none")
    message = str(raised.value)
    assert "in samples [0, 1, 2, 3, 4, ...] (40 of 40); " in message and "39" not in message
    assert message.startswith("root_find: g(z) became NaN or Inf at iteration 1 ")


def test_a_blow_up_message_suggests_only_what_is_not_in_use() -> None:
    """With a line search no iterate can become non-finite (see the next test); should one, the message names the
    search in use and offers neither it nor another search."""
    z = torch.tensor([[1.0], [float("inf")]])
    for search in ("armijo", "naive"):
        message = _blow_up_message(3, z, torch.ones(2, 1), search)
        assert message == (f"root_find: z became NaN or Inf at iteration 3 with search_method={search!r}, in "
                           "samples [1]; try a starting z nearer the root")
    assert "a smaller alpha or a starting z" in _blow_up_message(1, z, torch.ones(2, 1), "armijo")  # alpha: 1st step


def test_a_line_search_never_accepts_a_non_finite_point() -> None:
    """``exp(-|z|)`` is finite (0) at infinity: a trial at ``z = inf`` looks like a perfect decrease of ``|g|``."""
    def g(z: Tensor) -> Tensor:
        return torch.exp(-z.abs())

    z0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    direction = torch.tensor([[float("inf")], [1.0]], dtype=F64)
    for searcher in (NaiveSearch, LineSearchArmijo):
        search = searcher(g, g(z0), direction, z0)
        alpha, phi = search.search()
        assert search.accepted.tolist() == [False, True] and alpha[0] == 0 and torch.isfinite(search.z).all()
        torch.testing.assert_close(phi[0], g(z0[:1]).square().sum())


def test_torchdyns_float32_ackley_case_runs_to_maxiters_without_a_blow_up() -> None:
    """torchdyn's test as it stands (float32, 1000 samples, armijo): |g| underflows as z runs off (|g| ~ 1e-38 by
    iteration ~160) and the next quasi-Newton step is infinite. The line search refuses it, as torchdyn's does."""
    def ackley(z: Tensor) -> Tensor:
        return -200 * torch.exp(-0.02 * z.square().sum(-1, keepdim=True).sqrt())

    z0 = 0.01 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    for method in ("broyden", "broyden_fast"):
        z, logger = root_find(ackley, z0, alpha=0.1, search_method="armijo", f_tol=1e-3, f_rtol=1e-3, x_tol=1e-2,
                              x_rtol=1e-2, maxiters=500, method=method, verbose=False)
        assert torch.isfinite(z).all() and not logger.converged and logger.iterations == 500
        assert (ackley(z) <= 1e-2).all()  # torchdyn's assertion: true of any z, ackley < 0 everywhere


# --- the logger and torchdyn's import paths ----------------------------------------------------------------


def test_the_logger_records_every_iteration_only_when_verbose() -> None:
    z0 = 1.2 * CUBE_ROOT
    _, loud = root_find(cubic, z0, method="newton")
    assert loud.converged and set(loud.data) == {"geval", "z", "dz", "iteration", "alpha", "phi",
                                                 "termination_condition"}
    for key in ("geval", "z", "dz", "alpha", "phi"):
        assert len(loud.data[key]) == loud.iterations
    torch.testing.assert_close(loud.data["phi"][-1], loud.data["geval"][-1].square().sum(1))
    _, quiet = root_find(cubic, z0, method="newton", verbose=False)
    assert quiet.converged and quiet.iterations == loud.iterations
    assert all(value == [] for value in quiet.data.values()) and "termination_condition" not in quiet.data


def test_torchdyns_solvers_root_path_hands_out_torchdyns_names() -> None:
    """``from torchdyn.numerics.solvers.root import *`` (torchdyn's tests, 1.0.6 and master) with the word swapped:
    torchdyn's names (less its three unconstructible line-search placeholders), as nodecore.numerics.root's objects."""
    import nodecore.numerics.root as root

    names: dict[str, object] = {}
    exec("from nodecore.numerics.solvers.root import *", names)  # noqa: S102 (a star import inside a function)
    names.pop("__builtins__")
    torchdyns = {"Broyden", "BroydenBad", "BroydenFull", "Chord", "LineSearchArmijo", "LineSearcher", "NaiveSearch",
                 "Newton", "RETURN_CODES", "ROOT_SOLVER_DICT", "RootLogger", "SEARCH_METHODS", "TerminationCondition",
                 "batch_jacobian", "root_find", "einsum", "jacobian", "norm", "np", "torch"}
    assert set(names) == torchdyns
    for name in torchdyns - {"einsum", "jacobian", "norm", "np", "torch"}:
        assert names[name] is getattr(root, name), name
    assert names["torch"] is torch and names["np"].ndarray is not None


def test_the_solvers_module_is_unchanged_by_becoming_a_package() -> None:
    """Every import of ``nodecore.numerics.solvers`` in nodecore still works, with the classes defined there."""
    import nodecore.numerics as numerics
    from nodecore.numerics import solvers
    from nodecore.numerics.solvers import Attempt, RungeKutta, Workspace, real_dtype, time_tensor

    assert RungeKutta is numerics.RungeKutta and RungeKutta.__module__ == "nodecore.numerics.solvers"
    assert all(callable(item) for item in (Attempt, Workspace, real_dtype, time_tensor))
    for name in ("AdaptiveHeun", "BogackiShampine32", "DormandPrince45", "DormandPrince853", "Euler", "Midpoint",
                 "RungeKutta4", "RungeKutta38", "Tsitouras45"):
        assert getattr(solvers, name) is getattr(numerics, name)


def test_torchdyn_import_paths() -> None:
    from nodecore.numerics import hybrid, root, shooting, symplectic
    from nodecore.numerics import root_find as exported
    from nodecore.numerics.odeint import (
        odeint_hybrid,
        odeint_mshooting,
        odeint_symplectic,
    )
    from nodecore.numerics.utils import (
        EventCallback,
        RootLogger,
        StochasticEventCallback,
    )

    assert exported is root.root_find and RootLogger is root.RootLogger
    assert EventCallback is hybrid.EventCallback and StochasticEventCallback is hybrid.StochasticEventCallback
    assert odeint_hybrid is hybrid.odeint_hybrid and odeint_mshooting is shooting.odeint_mshooting
    assert odeint_symplectic is symplectic.odeint_symplectic


@pytest.mark.parametrize("method", METHODS)
def test_gradients_through_the_solve_are_the_implicit_derivative(method: str) -> None:
    """Backpropagating through the iterations gives dz*/da = 1 / (3 z*^2) for the root of z^3 - a.

    The unrolled derivative contracts by |1 - J_inv g_z| per iteration: like z for Newton and chord, but only
    linearly for Broyden (whose J_inv need not converge to the inverse Jacobian), so it lags z there."""
    a = A.clone().requires_grad_()
    z, logger = root_find(lambda z: z**3 - a, 1.1 * CUBE_ROOT, f_tol=1e-12, x_tol=1e-12, method=method)
    assert logger.converged
    (grad,) = torch.autograd.grad(z.sum(), a)
    rtol = 1e-4 if method.startswith("broyden") else 1e-8
    torch.testing.assert_close(grad, 1 / (3 * CUBE_ROOT**2), rtol=rtol, atol=0)


def test_root_find_under_no_grad() -> None:
    with torch.no_grad():
        z, logger = root_find(coupled, COUPLED_ROOT + 0.1, f_tol=1e-9, x_tol=1e-9, method="newton")
    assert logger.converged and not z.requires_grad
    torch.testing.assert_close(z, COUPLED_ROOT, rtol=0, atol=1e-9)
