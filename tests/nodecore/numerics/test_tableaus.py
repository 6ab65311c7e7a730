"""Order conditions of every Butcher tableau, checked on the numbers the solvers step with.

A Runge–Kutta method has order ``p`` when, for every rooted tree ``τ`` with ``|τ| <= p`` nodes,
``Σ_i b_i Φ_i(τ) = 1 / γ(τ)`` (Butcher; Hairer, Nørsett & Wanner I, Sec. II.2), with ``Φ(•) = 1`` and
``Φ([τ_1, ..., τ_m]) = Π_k (A Φ(τ_k))`` (componentwise). The trees are generated here (1, 1, 2, 4, 9, 20,
48, 115 of orders 1..8: all 200 conditions of DOP853). The same conditions, with ``b`` replaced by
``b - b_error``, give the embedded method's order; with ``b`` replaced by the dense-output weights
``P_i(θ)`` and the right side by ``θ^|τ| / γ(τ)``, the interpolant's order (continuous Runge–Kutta methods,
HNW I, Sec. II.6).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from nodecore.numerics import SOLVERS, ButcherTableau
from nodecore.numerics import tableaus as tb

TABLEAUS = {name: entry.cls.tableau for name, entry in SOLVERS.items()}
ADAPTIVE = [name for name, t in TABLEAUS.items() if t.adaptive]
DENSE = [name for name, t in TABLEAUS.items() if t.dense is not None]
# The coefficients are stored as floats (17 significant digits at best, Tsit5's interpolant fewer):
# conditions hold to round-off of sums of terms up to ~500 in size.
TOL = 1e-11


# --- rooted trees --------------------------------------------------------------------------------------
# A tree is the sorted tuple of its root's subtrees (canonical form); the one-node tree is ().

def _grow(tree: tuple) -> set[tuple]:
    """Every tree with one more node than ``tree``: a new leaf under the root or anywhere below."""
    out = {tuple(sorted(tree + ((),)))}
    for i, child in enumerate(tree):
        for bigger in _grow(child):
            out.add(tuple(sorted(tree[:i] + (bigger,) + tree[i + 1:])))
    return out


@functools.cache
def trees(order: int) -> tuple[tuple, ...]:
    if order == 1:
        return ((),)
    found: set[tuple] = set()
    for tree in trees(order - 1):
        found |= _grow(tree)
    return tuple(sorted(found))


def size(tree: tuple) -> int:
    return 1 + sum(size(child) for child in tree)


def gamma(tree: tuple) -> int:
    return size(tree) * int(np.prod([gamma(child) for child in tree]))


def test_tree_counts():
    assert [len(trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]
    assert gamma(((), ())) == 3 and gamma((((),),)) == 6  # b c^2 = 1/3, b A c = 1/6


# --- a tableau as matrices ---------------------------------------------------------------------------

def full_a(t: ButcherTableau) -> np.ndarray:
    """The strictly lower ``[S, S]`` matrix over all stages, extra dense-output stages included."""
    rows = list(t.a) + list(t.extra_a)
    n = len(rows)
    a = np.zeros((n, n))
    for i, row in enumerate(rows):
        assert len(row) == i, f"row {i} has {len(row)} entries"
        a[i, :i] = row
    return a


def phi(a: np.ndarray, tree: tuple) -> np.ndarray:
    out = np.ones(a.shape[0])
    for child in tree:
        out = out * (a @ phi(a, child))
    return out


def residuals(a: np.ndarray, weights: np.ndarray, order: int, theta: float = 1.0) -> list[tuple[tuple, float]]:
    """``(tree, Σ w_i Φ_i - θ^|τ|/γ)`` for every tree up to ``order``."""
    out = []
    for n in range(1, order + 1):
        for tree in trees(n):
            out.append((tree, float(weights @ phi(a, tree)[: len(weights)] - theta**n / gamma(tree))))
    return out


def worst(res: list[tuple[tuple, float]]) -> float:
    return max(abs(r) for _, r in res)


def dense_weights(t: ButcherTableau, theta: float) -> np.ndarray:
    d = np.asarray(t.dense)
    return d @ np.array([theta ** (j + 1) for j in range(d.shape[1])])


# --- the tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TABLEAUS)
def test_structure(name):
    t = TABLEAUS[name]
    a = full_a(t)
    c = np.array(tuple(t.c) + tuple(t.extra_c))
    assert len(t.b) == t.stages == len(t.c)
    assert c[0] == 0.0
    np.testing.assert_allclose(a.sum(axis=1), c, rtol=0, atol=1e-14, err_msg="row sums of a must equal c")
    if t.fsal:
        # The last stage is evaluated at (t + h, y1): c = 1 and its row is b.
        assert t.c[-1] == 1.0 and t.b[-1] == 0.0
        np.testing.assert_allclose(t.a[-1], t.b[:-1], rtol=0, atol=0)
    if t.adaptive:
        assert len(t.b_error) == t.stages and t.error_order is not None and t.error_order < t.order
    else:
        assert t.b_error is None and t.error_order is None


@pytest.mark.parametrize("name", TABLEAUS)
def test_low_order_conditions_by_hand(name):
    """The classic four conditions written out (sum b = 1, b c = 1/2, b c^2 = 1/3, b A c = 1/6)."""
    t = TABLEAUS[name]
    b, c, a = np.array(t.b), np.array(t.c), full_a(t)[: t.stages, : t.stages]
    conditions = [(b.sum(), 1.0), (b @ c, 0.5), (b @ c**2, 1 / 3), (b @ a @ c, 1 / 6)]
    for k, (got, want) in enumerate(conditions[: {1: 1, 2: 2}.get(t.order, 4)]):
        assert abs(got - want) < TOL, (name, k, got, want)


@pytest.mark.parametrize("name", TABLEAUS)
def test_order_conditions(name):
    t = TABLEAUS[name]
    a = full_a(t)
    b = np.array(t.b)
    res = residuals(a, b, t.order)
    assert worst(res) < TOL, [(tree, r) for tree, r in res if abs(r) >= TOL]
    # ... and the declared order is the exact order: some condition of order p + 1 fails.
    assert worst(residuals(a, b, t.order + 1)[len(res):]) > 1e-6


@pytest.mark.parametrize("name", ADAPTIVE)
def test_embedded_order_conditions(name):
    """``b_hat = b - b_error`` is a method of order ``error_order``, and not of order ``error_order + 1``."""
    t = TABLEAUS[name]
    a = full_a(t)
    b_hat = np.array(t.b) - np.array(t.b_error)
    # The error weights sum to zero: the estimate vanishes for y' = const.
    assert abs(sum(t.b_error)) < 1e-14
    res = residuals(a, b_hat, t.error_order)
    assert worst(res) < TOL, [(tree, r) for tree, r in res if abs(r) >= TOL][:3]
    assert worst(residuals(a, b_hat, t.error_order + 1)[len(res):]) > 1e-8


def test_dop853_fifth_order_estimator():
    """DOP853's ``b_error`` (E5): ``b - E5`` has order exactly 5, as in Hairer's 8(5,3) pair."""
    t = TABLEAUS["dopri8"]
    a = full_a(t)
    b_hat = np.array(t.b) - np.array(t.b_error)
    res = residuals(a, b_hat, 5)
    assert worst(res) < TOL
    assert worst(residuals(a, b_hat, 6)[len(res):]) > 1e-8
    # The controller exponent is the 8th-order rule 1/8 of dop853.f.
    assert SOLVERS["dopri8"].build().error_exponent == 1 / 8


def test_dop853_third_order_estimator():
    """E3 (combined with E5 in DOP853's error norm) is ``b`` minus a 3rd-order method."""
    t = TABLEAUS["dopri8"]
    a = full_a(t)
    b_hat = np.array(t.b) - np.array(tb.DOP853_E3)
    assert worst(residuals(a, b_hat, 3)) < TOL
    assert worst(residuals(a, b_hat, 4)) > 1e-8


@pytest.mark.parametrize("name", DENSE)
def test_dense_output_endpoints(name):
    """``P_i(0) = 0`` and ``P_i(1) = b_i`` (0 for extra stages): the interpolant hits y0 and y1."""
    t = TABLEAUS[name]
    n_all = t.stages + len(t.extra_c)
    assert len(t.dense) == n_all
    assert len({len(row) for row in t.dense}) == 1
    np.testing.assert_array_equal(dense_weights(t, 0.0), np.zeros(n_all))
    b_padded = np.array(tuple(t.b) + (0.0,) * len(t.extra_c))
    np.testing.assert_allclose(dense_weights(t, 1.0), b_padded, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", DENSE)
def test_dense_output_endpoints_solver_object(name):
    """The solver's own weight evaluation (tensors) agrees with the tableau's numbers."""
    import torch

    solver = SOLVERS[name].build()
    like = torch.zeros(1, dtype=torch.float64)
    w = solver.dense_weights([0.0, 0.5, 1.0], like).numpy()
    t = TABLEAUS[name]
    np.testing.assert_array_equal(w[:, 0], 0.0)
    np.testing.assert_allclose(w[:, 1], dense_weights(t, 0.5), rtol=0, atol=1e-13)
    np.testing.assert_allclose(w[:, 2], np.array(tuple(t.b) + (0.0,) * len(t.extra_c)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("theta", [0.1, 0.37, 0.5, 0.8])
def test_dense_output_order_conditions(name, theta):
    """``Σ P_i(θ) Φ_i(τ) = θ^|τ| / γ(τ)`` for all trees up to ``dense_order`` (not beyond, at a generic θ)."""
    t = TABLEAUS[name]
    a = full_a(t)
    w = dense_weights(t, theta)
    res = residuals(a, w, t.dense_order, theta)
    assert worst(res) < 1e-10, [(tree, r) for tree, r in res if abs(r) >= 1e-10]
    assert worst(residuals(a, w, t.dense_order + 1, theta)[len(res):]) > 1e-8


def test_dense_output_weights_are_polynomials_of_declared_order():
    """Each interpolant has degree at least its order (a polynomial of degree q can't be order q + 1)."""
    for name in DENSE:
        t = TABLEAUS[name]
        assert len(t.dense[0]) >= t.dense_order, name


def test_inconsistent_tableau_rejected():
    with pytest.raises(ValueError, match="inconsistent"):
        ButcherTableau(c=(0.0, 1.0), a=((),), b=(0.5, 0.5), order=2)
    with pytest.raises(ValueError, match="b_error"):
        ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1, b_error=(0.0, 0.0))
    with pytest.raises(ValueError, match="dense"):
        ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1, dense=((1.0,), (0.0,)))


def test_registry_metadata_matches_tableaus():
    for name, entry in SOLVERS.items():
        assert entry.order == entry.cls.tableau.order, name
        assert entry.adaptive == entry.cls.tableau.adaptive, name
        assert entry.name == name
    assert SOLVERS["rk4_38"].method == "rk4" and SOLVERS["rk4"].cls.tableau is tb.RK4
