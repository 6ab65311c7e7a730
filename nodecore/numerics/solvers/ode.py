"""torchdyn's ``torchdyn.numerics.solvers.ode`` import path: the ODE and multiple-shooting solvers by name.

The solver classes live in :mod:`nodecore.numerics.solvers`, :mod:`nodecore.numerics.symplectic` and
:mod:`nodecore.numerics.shooting`; this module gathers them with torchdyn's lookup tables and helpers.

``SolverTemplate(order, min_factor, max_factor, safety)`` is torchdyn's base of a solver written by hand (see
:mod:`nodecore.numerics.solvers.templates`). The ``construct_*`` functions give a method's Butcher tableau in
torchdyn's layout, ``(c, a, b, b_err)``: ``c`` the nodes of stages 2..s, ``a`` their rows (row ``i`` has
``i + 1`` weights), ``b`` the solution weights and ``b_err`` the error weights (``b - b_hat``; ``[0]`` for a
fixed-step method), all of ``dtype``, for steps of your own that read them. Unlike torchdyn's, the nodes of
``construct_rk4`` leave out the first stage's 0 like the others (torchdyn's ``c[0]`` is 0 there, so its rk4
evaluates its second stage at ``t`` instead of ``t + dt/2``).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import torch
from torch import Tensor

from nodecore._checks import choice
from nodecore.numerics import tableaus
from nodecore.numerics.implicit import ImplicitEuler
from nodecore.numerics.registry import ALIASES, EXTRA_SOLVER_NAMES, SOLVERS
from nodecore.numerics.shooting import (
    MS_SOLVERS,
    MSBackward,
    MSForward,
    MSZero,
    MultipleShootingSolver,
    ParallelImplicitEuler,
)
from nodecore.numerics.solvers import DormandPrince45, Euler, Midpoint, RungeKutta, RungeKutta4, Tsitouras45
from nodecore.numerics.solvers.templates import DiffEqSolver, MultipleShootingDiffeqSolver
from nodecore.numerics.symplectic import SYMPLECTIC_SOLVERS, AsynchronousLeapfrog

__all__ = [
    "AsynchronousLeapfrog", "DiffEqSolver", "DormandPrince45", "Euler", "ImplicitEuler", "MSBackward", "MSForward",
    "MSZero", "MS_SOLVER_DICT", "Midpoint", "MultipleShootingDiffeqSolver", "ParallelImplicitEuler", "RungeKutta4",
    "SOLVER_DICT", "SolverTemplate",
    "Tsitouras45", "construct_dopri5", "construct_rk4", "construct_tsit5", "str_to_ms_solver", "str_to_solver",
]


class SolverTemplate(DiffEqSolver):
    """torchdyn's ``SolverTemplate(order, min_factor=0.2, max_factor=10, safety=0.9)``: a
    :class:`~nodecore.numerics.solvers.templates.DiffEqSolver` whose subclass sets ``stepping_class`` itself."""

    def __init__(self, order: int, min_factor: float = 0.2, max_factor: float = 10, safety: float = 0.9) -> None:
        super().__init__(order, "fixed", min_factor, max_factor, safety)


def _torchdyn_names() -> dict[str, type]:
    names: dict[str, type] = {name: entry.cls for name, entry in SOLVERS.items()}
    names.update({alias: SOLVERS[name].cls for alias, name in ALIASES.items()})
    names.update({name: ImplicitEuler for name in EXTRA_SOLVER_NAMES})
    names.update(SYMPLECTIC_SOLVERS)
    return names


#: Every solver name (nodecore's and torchdyn's spellings) and its class.
SOLVER_DICT: Mapping[str, type] = MappingProxyType(_torchdyn_names())
#: Every multiple-shooting solver name and its class.
MS_SOLVER_DICT: Mapping[str, type[MultipleShootingSolver]] = MappingProxyType(dict(MS_SOLVERS))


def str_to_solver(solver_name: str, dtype: torch.dtype = torch.float32) -> RungeKutta | AsynchronousLeapfrog:
    """A fresh solver object named ``solver_name`` (``dtype`` is accepted for torchdyn; coefficients follow the
    state's dtype).

    Raises:
        ValueError: an unknown name; the message lists the valid ones (torchdyn raises ``KeyError``).
    """
    name = choice("solver", solver_name, tuple(SOLVER_DICT))
    # the leapfrog's first parameter is channel_index, not dtype
    return SYMPLECTIC_SOLVERS[name]() if name in SYMPLECTIC_SOLVERS else SOLVER_DICT[name](dtype)


def str_to_ms_solver(solver_name: str, dtype: torch.dtype = torch.float32) -> MultipleShootingSolver:
    """A fresh multiple-shooting solver named ``solver_name``.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    return MS_SOLVER_DICT[choice("multiple-shooting solver", solver_name, tuple(MS_SOLVER_DICT))]()


def _torchdyn_layout(tableau: tableaus.ButcherTableau, dtype: torch.dtype
                     ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    def vec(values: tuple[float, ...]) -> Tensor:
        return torch.tensor(values, dtype=dtype)

    b_err = vec(tableau.b_error) if tableau.b_error is not None else torch.zeros(1, dtype=dtype)
    return vec(tableau.c[1:]), [vec(row) for row in tableau.a[1:]], vec(tableau.b), b_err


def construct_rk4(dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    """The classic RK4 tableau in torchdyn's layout (see the module docstring)."""
    return _torchdyn_layout(tableaus.RK4, dtype)


def construct_dopri5(dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    """The Dormand–Prince 5(4) tableau in torchdyn's layout (nodecore's embedded pair, Hairer's)."""
    return _torchdyn_layout(tableaus.DORMAND_PRINCE45, dtype)


def construct_tsit5(dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    """The Tsitouras 5(4) tableau in torchdyn's layout."""
    return _torchdyn_layout(tableaus.TSITOURAS45, dtype)
