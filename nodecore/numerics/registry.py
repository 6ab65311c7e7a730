"""The one solver registry: every solver name nodecore accepts, its class, order, and torchdiffeq twin."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from nodecore._checks import choice
from nodecore.numerics import solvers as _s


@dataclass(frozen=True)
class Solver:
    """A registered ODE solver.

    Attributes:
        name: the name users pass (``NeuralODE(f, solver=name)``).
        order: the global order of accuracy (error ~ h**order).
        adaptive: True when the solver controls its step size from an embedded error estimate.
        cls: nodecore's solver class.
        method: the torchdiffeq method key of ``backend='torchdiffeq'`` (the same method unless
            ``description`` says otherwise).
        description: one line for ``--help`` and reports.
    """

    name: str
    order: int
    adaptive: bool
    cls: type[_s.RungeKutta]
    method: str
    description: str

    def build(self) -> _s.RungeKutta:
        """A fresh solver object."""
        return self.cls()


def _solver(name: str, cls: type[_s.RungeKutta], method: str, description: str) -> Solver:
    return Solver(name, cls.tableau.order, cls.tableau.adaptive, cls, method, description)


SOLVERS: Mapping[str, Solver] = MappingProxyType({s.name: s for s in (
    _solver("euler", _s.Euler, "euler", "explicit Euler, fixed step"),
    _solver("midpoint", _s.Midpoint, "midpoint", "explicit midpoint, fixed step"),
    _solver("rk4", _s.RungeKutta4, "rk4", "classic 4th-order Runge–Kutta, fixed step (torchdiffeq backend: 3/8 rule)"),
    _solver("rk4_38", _s.RungeKutta38, "rk4", "Kutta's 3/8-rule 4th-order Runge–Kutta, fixed step"),
    _solver("adaptive_heun", _s.AdaptiveHeun, "adaptive_heun",
            "Heun–Euler 2(1), adaptive (torchdiffeq backend: reuses its predictor stage as the next first stage)"),
    _solver("bosh3", _s.BogackiShampine32, "bosh3", "Bogacki–Shampine 3(2), adaptive"),
    _solver("dopri5", _s.DormandPrince45, "dopri5", "Dormand–Prince 5(4), adaptive"),
    _solver("tsit5", _s.Tsitouras45, "nodecore_tsit5", "Tsitouras 5(4), adaptive (torchdyn's default)"),
    _solver("dopri8", _s.DormandPrince853, "dopri8",
            "Dormand–Prince 8(5,3) (DOP853), adaptive, high precision (torchdiffeq backend: its own dopri8)"),
)})
SOLVER_NAMES: tuple[str, ...] = tuple(SOLVERS)
# torchdyn's other spellings of the same solvers.
ALIASES: Mapping[str, str] = MappingProxyType({
    "RungeKutta4": "rk4", "rk-4": "rk4", "DormandPrince45": "dopri5", "DormandPrince5": "dopri5",
    "Tsitouras45": "tsit5", "Tsitouras5": "tsit5", "Euler": "euler", "Midpoint": "midpoint",
    "dop853": "dopri8", "heun": "adaptive_heun",
})


#: Solvers taken by name but left out of :data:`SOLVER_NAMES` (the pipeline's grid and ``--help``): torchdyn's
#: implicit Euler, which has no torchdiffeq twin (``backend='torchdiffeq'`` refuses it).
EXTRA_SOLVER_NAMES: tuple[str, ...] = ("ieuler", "implicit_euler")


def _extra_solver(name: str) -> Solver:
    from nodecore.numerics.implicit import ImplicitEuler  # implicit imports the solvers, as this module does

    return Solver(name, 1, False, ImplicitEuler, "",
                  "backward (implicit) Euler by Newton's method, fixed step; no torchdiffeq twin")


def get_solver(name: str) -> Solver:
    """Look a solver up by name (or one of :data:`ALIASES` or :data:`EXTRA_SOLVER_NAMES`).

    Raises:
        ValueError: the name is not registered; the message lists the valid names.
    """
    if isinstance(name, str) and name in ALIASES:
        name = ALIASES[name]
    if isinstance(name, str) and name in EXTRA_SOLVER_NAMES:
        return _extra_solver(name)
    return SOLVERS[choice("solver", name, SOLVER_NAMES + EXTRA_SOLVER_NAMES)]


def solver_object(solver: str | _s.RungeKutta) -> _s.RungeKutta:
    """A solver object from a name or an object (returned as is)."""
    if isinstance(solver, _s.RungeKutta):
        return solver
    if isinstance(solver, type) and issubclass(solver, _s.RungeKutta):
        return solver()
    return get_solver(solver).build()
