"""Tsitouras' 5(4) pair as a torchdiffeq solver, for ``backend='torchdiffeq'``.

The released torchdiffeq has no ``tsit5`` (torchdyn's default solver). This module builds one on torchdiffeq's
adaptive Runge–Kutta machinery from the tableau nodecore's own engine uses
(:data:`nodecore.numerics.tableaus.TSITOURAS45`), and registers it under a private key.
"""

from __future__ import annotations

import importlib

import torch
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau

from nodecore.numerics.tableaus import TSITOURAS45

TORCHDIFFEQ_KEY = "nodecore_tsit5"


def _t(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float64)


def dense_output_weights(theta: float) -> list[float]:
    """Weights ``b_i(θ)`` of Tsitouras' interpolant: ``y(t0 + θh) = y0 + h Σ b_i k_i``."""
    return [sum(c * theta ** (j + 1) for j, c in enumerate(row)) for row in TSITOURAS45.dense]


TSIT5_TABLEAU = _ButcherTableau(
    alpha=_t(TSITOURAS45.c[1:]),
    beta=[_t(row) for row in TSITOURAS45.a[1:]],
    c_sol=_t(TSITOURAS45.b),
    c_error=_t(TSITOURAS45.b_error),
)


class Tsit5Solver(RKAdaptiveStepsizeODESolver):
    """Tsit5 for torchdiffeq: 7 stages, first-same-as-last, order 5 with an embedded order-4 error estimate."""

    order = 5
    tableau = TSIT5_TABLEAU
    # torchdiffeq fits its quartic dense output through the midpoint value y(t0 + h/2).
    mid = _t(dense_output_weights(0.5))


# torchdiffeq._impl exports a function named odeint that shadows its module of the same name.
importlib.import_module("torchdiffeq._impl.odeint").SOLVERS.setdefault(TORCHDIFFEQ_KEY, Tsit5Solver)
