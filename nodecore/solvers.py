"""The one solver registry: every solver name nodecore accepts, its order and whether it adapts its step.

Solvers run on torchdiffeq; ``tsit5`` is supplied by :mod:`nodecore.tsit5` and registered with
torchdiffeq under a private key so that ``odeint`` and ``odeint_adjoint`` both find it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from nodecore._checks import choice
from nodecore.tsit5 import Tsit5Solver

_TSIT5_KEY = "nodecore_tsit5"
# torchdiffeq._impl exports a function named odeint that shadows its module of the same name.
importlib.import_module("torchdiffeq._impl.odeint").SOLVERS.setdefault(_TSIT5_KEY, Tsit5Solver)


@dataclass(frozen=True)
class Solver:
    """A registered ODE solver.

    Attributes:
        name: the name users pass (``NeuralODE(f, solver=name)``).
        order: the global order of accuracy (error ~ h**order).
        adaptive: True when the solver controls its step size from an embedded error estimate.
        method: the torchdiffeq method key that runs it.
        description: one line for ``--help`` and reports.
    """

    name: str
    order: int
    adaptive: bool
    method: str
    description: str


def _registry(*solvers: Solver) -> Mapping[str, Solver]:
    return MappingProxyType({solver.name: solver for solver in solvers})


SOLVERS: Mapping[str, Solver] = _registry(
    Solver("euler", 1, False, "euler", "explicit Euler, fixed step"),
    Solver("midpoint", 2, False, "midpoint", "explicit midpoint, fixed step"),
    Solver("rk4", 4, False, "rk4", "classic 4th-order Runge–Kutta (3/8 rule), fixed step"),
    Solver("adaptive_heun", 2, True, "adaptive_heun", "Heun–Euler 2(1), adaptive"),
    Solver("bosh3", 3, True, "bosh3", "Bogacki–Shampine 3(2), adaptive"),
    Solver("dopri5", 5, True, "dopri5", "Dormand–Prince 5(4), adaptive"),
    Solver("tsit5", 5, True, _TSIT5_KEY, "Tsitouras 5(4), adaptive (torchdyn's default)"),
    Solver("dopri8", 8, True, "dopri8", "Dormand–Prince 8(5,3), adaptive, high precision"),
)
SOLVER_NAMES: tuple[str, ...] = tuple(SOLVERS)


def get_solver(name: str) -> Solver:
    """Look a solver up by name.

    Raises:
        ValueError: the name is not registered; the message lists the valid names.
    """
    return SOLVERS[choice("solver", name, SOLVER_NAMES)]
