"""The solver registry's public home (``nodecore.solvers.SOLVER_NAMES``); it lives in :mod:`nodecore.numerics`.

Importing this module also registers nodecore's ``tsit5`` with torchdiffeq for ``backend='torchdiffeq'``.
"""

from __future__ import annotations

import nodecore.tsit5  # noqa: F401  (registers tsit5 with torchdiffeq)
from nodecore.numerics.registry import ALIASES, SOLVER_NAMES, SOLVERS, Solver, get_solver, solver_object

__all__ = ["ALIASES", "SOLVER_NAMES", "SOLVERS", "Solver", "get_solver", "solver_object"]
