"""Butcher tableaus: each explicit Runge–Kutta method as numbers, with its error weights and dense output.

A tableau is data only; :class:`~nodecore.numerics.solvers.RungeKutta` steps with any of them. Dense output
is stored the same way for every method: the solution inside a step ``[t, t + h]`` is
``y(t + θh) = y0 + h Σ_i P_i(θ) k_i`` with ``P_i`` a polynomial without constant term, kept as the
coefficient matrix ``dense[i][j]`` of ``θ^(j+1)``. Methods whose interpolant needs more stages
(DOP853) list them as ``extra`` stages, evaluated only on steps that interpolate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from numpy.polynomial import Polynomial

from nodecore.numerics import _dop853


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Attributes:
        c: nodes of the ``s`` stages.
        a: row ``i`` holds ``a_ij`` for ``j < i`` (row 0 is empty).
        b: solution weights (length ``s``).
        order: global order of the solution.
        b_error: ``b - b_hat``, the weights of the embedded error estimate (None for fixed-step methods).
        error_order: order of the embedded solution ``b_hat``.
        fsal: the last stage is evaluated at ``(t + h, y1)``: it is the next step's first stage.
        dense: ``[s + len(extra_c)][p]`` coefficients of the dense-output polynomials (None: no dense output).
        dense_order: the interpolant's order of accuracy.
        extra_c, extra_a: nodes and rows (over all earlier stages) of the stages only dense output needs.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int | None = None
    extra_c: tuple[float, ...] = ()
    extra_a: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)) or len(self.b) != s:
            raise ValueError(f"inconsistent tableau: {s} nodes, rows {[len(r) for r in self.a]}, {len(self.b)} weights")
        if self.b_error is not None and len(self.b_error) != s:
            raise ValueError(f"b_error has {len(self.b_error)} weights for {s} stages")
        if self.dense is not None and len(self.dense) != s + len(self.extra_c):
            raise ValueError(f"dense output has {len(self.dense)} rows for {s + len(self.extra_c)} stages")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None


def _floats(values: Sequence[float | Fraction]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _rows(rows: Sequence[Sequence[float | Fraction]]) -> tuple[tuple[float, ...], ...]:
    return tuple(_floats(r) for r in rows)


def _minus(b: Sequence[float | Fraction], b_hat: Sequence[float | Fraction]) -> tuple[float, ...]:
    return tuple(float(Fraction(x) - Fraction(y)) for x, y in zip(b, b_hat))


def _coefficients(polys: Sequence[Polynomial]) -> tuple[tuple[float, ...], ...]:
    """Each ``P_i`` (no constant term) as the tuple of its coefficients of θ, θ², ..., all of one length."""
    degree = max(len(p.coef) for p in polys) - 1
    rows = []
    for p in polys:
        coef = list(p.coef) + [0.0] * (degree + 1 - len(p.coef))
        if abs(coef[0]) > 1e-14:
            raise ValueError(f"a dense-output weight has a constant term {coef[0]}")
        rows.append(tuple(float(x) for x in coef[1:]))
    return tuple(rows)


THETA = Polynomial([0.0, 1.0])
ONE = Polynomial([1.0])


def _unit(i: int, n: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(n)]


# The cubic Hermite basis on [0, 1]: y(θ) = h00 y0 + H01 y1 + h (H10 y0' + H11 y1'), with h00 = 1 - H01. With
# y1 = y0 + h * sum(b_i k_i) this is y0 + h * (H01 * sum(b_i k_i) + H10 k_0 + H11 y1'): stage weights.
H01 = -2 * THETA**3 + 3 * THETA**2
H10 = THETA**3 - 2 * THETA**2 + THETA
H11 = THETA**3 - THETA**2


def _hermite_dense(b: Sequence[float], fsal_index: int) -> tuple[tuple[float, ...], ...]:
    """Cubic Hermite interpolation between ``(y0, k_0)`` and ``(y1, k_fsal)``, as stage weights (order 3)."""
    n = len(b)
    return _coefficients([H01 * b[i] + H10 * _unit(0, n)[i] + H11 * _unit(fsal_index, n)[i] for i in range(n)])


def hermite_with_end_derivative(b: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    """Cubic Hermite interpolation of a step of any method with weights ``b``, as stage weights over its ``s``
    stages plus one more row for ``f(t + h, y1)``: the order-3 interpolant of methods without dense output.

    Cached per ``b``: an interpolated adjoint asks for it on every forward pass.
    """
    return _hermite_with_end_derivative(tuple(float(x) for x in b))


@functools.lru_cache(maxsize=64)
def _hermite_with_end_derivative(b: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    n = len(b)
    return _coefficients([H01 * b[i] + H10 * _unit(0, n)[i] for i in range(n)] + [H11])


def _nested_dense(rows: Sequence[Sequence[float]]) -> tuple[tuple[float, ...], ...]:
    """Hairer's nested form ``θ(F0 + (1-θ)(F1 + θ(F2 + (1-θ)(F3 + ...))))`` of rows ``F_k`` as stage weights."""
    factors = [THETA if k % 2 == 0 else ONE - THETA for k in range(len(rows))]
    n = len(rows[0])
    polys = [Polynomial([0.0]) for _ in range(n)]
    for i in range(n):
        acc = Polynomial([0.0])
        for k in range(len(rows) - 1, -1, -1):
            acc = (acc + rows[k][i]) * factors[k]
        polys[i] = acc
    return _coefficients(polys)


F = Fraction

EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1)

MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)

# The classic fourth-order method (torchdyn's RungeKutta4).
RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=_floats([F(1, 6), F(1, 3), F(1, 3), F(1, 6)]),
    order=4,
)

# Kutta's 3/8 rule (torchdiffeq's "rk4").
RK4_38 = ButcherTableau(
    c=_floats([0, F(1, 3), F(2, 3), 1]),
    a=_rows([[], [F(1, 3)], [F(-1, 3), 1], [1, -1, 1]]),
    b=_floats([F(1, 8), F(3, 8), F(3, 8), F(1, 8)]),
    order=4,
)

# Heun's method with Euler embedded: 2(1). Its continuous extension y0 + h((θ - θ²/2) k0 + θ²/2 k1) has order 2.
HEUN_EULER = ButcherTableau(
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(0.5, 0.5),
    order=2,
    b_error=(-0.5, 0.5),
    error_order=1,
    dense=_coefficients([THETA - 0.5 * THETA**2, 0.5 * THETA**2]),
    dense_order=2,
)

_BOSH3_B = [F(2, 9), F(1, 3), F(4, 9), F(0)]
BOGACKI_SHAMPINE32 = ButcherTableau(
    c=_floats([0, F(1, 2), F(3, 4), 1]),
    a=_rows([[], [F(1, 2)], [0, F(3, 4)], _BOSH3_B[:3]]),
    b=_floats(_BOSH3_B),
    order=3,
    b_error=_minus(_BOSH3_B, [F(7, 24), F(1, 4), F(1, 3), F(1, 8)]),
    error_order=2,
    fsal=True,
    dense=_hermite_dense(_floats(_BOSH3_B), 3),
    dense_order=3,
)

_DOPRI5_B = [F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), F(0)]
_DOPRI5_B_HAT = [F(5179, 57600), F(0), F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)]
# Shampine's continuous extension as given by Hairer (dopri5.f, "dense output of order 4").
_DOPRI5_D = [F(-12715105075, 11282082432), F(0), F(87487479700, 32700410799), F(-10690763975, 1880347072),
             F(701980252875, 199316789632), F(-1453857185, 822651844), F(69997945, 29380423)]


def _dopri_like_dense(b: Sequence[float], d: Sequence[float], fsal_index: int) -> tuple[tuple[float, ...], ...]:
    """Hairer's DOPRI5 interpolant ``θ(r2 + (1-θ)(r3 + θ(r4 + (1-θ) r5)))`` written over the stages."""
    n = len(b)
    e0, e_last = _unit(0, n), _unit(fsal_index, n)
    r2 = list(b)
    r3 = [e0[i] - r2[i] for i in range(n)]
    r4 = [r2[i] - e_last[i] - r3[i] for i in range(n)]
    return _nested_dense([r2, r3, r4, list(d)])


DORMAND_PRINCE45 = ButcherTableau(
    c=_floats([0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1]),
    a=_rows([
        [],
        [F(1, 5)],
        [F(3, 40), F(9, 40)],
        [F(44, 45), F(-56, 15), F(32, 9)],
        [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
        [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
        _DOPRI5_B[:6],
    ]),
    b=_floats(_DOPRI5_B),
    order=5,
    b_error=_minus(_DOPRI5_B, _DOPRI5_B_HAT),
    error_order=4,
    fsal=True,
    dense=_dopri_like_dense(_floats(_DOPRI5_B), _floats(_DOPRI5_D), 6),
    dense_order=4,
)

# Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying assumption",
# Comput. Math. Appl. 62 (2011) 770–775, with the interpolant of that paper.
_TSIT5_C = [0.0, 0.161, 0.327, 0.9, 0.9800255409045096857298102862870245954942137979563024768854764293221195950761080302604,
            1.0, 1.0]
_TSIT5_A = [
    [],
    [0.161],
    [-0.008480655492356988544426874250230774675121177393430391537369234245294192976164141156943,
     0.3354806554923569885444268742502307746751211773934303915373692342452941929761641411569],
    [2.897153057105493432130432594192938764924887287701866490314866693455023795137503079289,
     -6.359448489975074843148159912383825625952700647415626703305928850207288721235210244366,
     4.362295432869581411017727318190886861027813359713760212991062156752264926097707165077],
    [5.325864828439256604428877920840511317836476253097040101202360397727981648835607691791,
     -11.74888356406282787774717033978577296188744178259862899288666928009020615663593781589,
     7.495539342889836208304604784564358155658679161518186721010132816213648793440552049753,
     -0.09249506636175524925650207933207191611349983406029535244034750452930469056411389539635],
    [5.861455442946420028659251486982647890394337666164814434818157239052507339770711679748,
     -12.92096931784710929170611868178335939541780751955743459166312250439928519268343184452,
     8.159367898576158643180400794539253485181918321135053305748355423955009222648673734986,
     -0.07158497328140099722453054252582973869127213147363544882721139659546372402303777878835,
     -0.02826905039406838290900305721271224146717633626879770007617876201276764571291579142206],
]
_TSIT5_B = [
    0.09646076681806522951816731316512876333711995238157997181903319145764851595234062815396,
    0.01,
    0.4798896504144995747752495322905965199130404621990332488332634944254542060153074523509,
    1.379008574103741893192274821856872770756462643091360525934940067397245698027561293331,
    -3.290069515436080679901047585711363850115683290894936158531296799594813811049925401677,
    2.324710524099773982415355918398765796109060233222962411944060046314465391054716027841,
    0.0,
]
_TSIT5_B_HAT = [
    0.09468075576583945807478876255758922856117527357724631226139574065785592789071067303271,
    0.009183565540343253096776363936645313759813746240984095238905939532922955247253608687270,
    0.4877705284247615707855642599631228241516691959761363774365216240304071651579571959813,
    1.234297566930478985655109673884237654035539930748192848315425833500484878378061439761,
    -2.707712349983525454881109975059321670689605166938197378763992255714444407154902012702,
    1.866628418170587035753719399566211498666255505244122593996591602841258328965767580089,
    1 / 66,
]


def _tsit5_dense() -> tuple[tuple[float, ...], ...]:
    t = THETA
    return _coefficients([
        -1.0530884977290216 * t * (t - 1.3299890189751412) * (t**2 - 1.4364028541716351 * t + 0.7139816917074209),
        0.1017 * t**2 * (t**2 - 2.1966568338249754 * t + 1.2949852507374631),
        2.490627285651252793 * t**2 * (t**2 - 2.38535645472061657 * t + 1.57803468208092486),
        -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t**2,
        47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t**2,
        -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t**2,
        2.5 * (t - 1) * (t - 0.6) * t**2,
    ])


TSITOURAS45 = ButcherTableau(
    c=_floats(_TSIT5_C),
    a=_rows(_TSIT5_A + [_TSIT5_B[:6]]),
    b=_floats(_TSIT5_B),
    order=5,
    b_error=_minus(_TSIT5_B, _TSIT5_B_HAT),
    error_order=4,
    fsal=True,
    dense=_tsit5_dense(),
    dense_order=4,
)


def _dormand_prince853() -> ButcherTableau:
    """DOP853 over 13 stages (the 13th is FSAL) plus 3 dense-output stages; its error weights are E5 (see
    :class:`~nodecore.numerics.solvers.DormandPrince853` for the combined 5th/3rd-order estimate)."""
    n = 16
    b = list(_dop853.B) + [0.0] * (n - len(_dop853.B))
    e0, e12 = _unit(0, n), _unit(12, n)
    rows = [b, [e0[i] - b[i] for i in range(n)], [2 * b[i] - e0[i] - e12[i] for i in range(n)]]
    rows += [list(r) for r in _dop853.D]
    return ButcherTableau(
        c=_dop853.C[:13],
        a=_dop853.A[:12] + (tuple(_dop853.B),),
        b=tuple(b[:13]),
        order=8,
        b_error=tuple(_dop853.E5),
        error_order=5,
        fsal=True,
        dense=_nested_dense(rows),
        dense_order=7,
        extra_c=_dop853.C[13:],
        extra_a=_dop853.A[13:],
    )


DORMAND_PRINCE853 = _dormand_prince853()
# DOP853's 3rd-order error weights, combined with E5 in its error norm.
DOP853_E3: tuple[float, ...] = tuple(_dop853.E3)
