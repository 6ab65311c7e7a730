"""nodecore's ODE engine: Runge–Kutta tableaus, solver objects, step-size control, one stepping loop, ``odeint``,
the adjoint, hypersolvers and multiple shooting; ``sdeint``, torchdyn's SDE solve, on torchsde's methods.

The lowest layer of the library: plain torch, importing nothing else from nodecore but its errors and checks.
"""

from nodecore.numerics.control import IntegralController, PIController, initial_step
from nodecore.numerics.hybrid import EventCallback, StochasticEventCallback, odeint_hybrid
from nodecore.numerics.hyper import HyperEuler, HyperMidpoint, HyperRungeKutta4, HyperSolver
from nodecore.numerics.odeint import INTERPOLATORS, odeint
from nodecore.numerics.registry import ALIASES, SOLVER_NAMES, SOLVERS, Solver, get_solver, solver_object
from nodecore.numerics.root import root_find
from nodecore.numerics.sdeint import sdeint
from nodecore.numerics.shooting import MS_SOLVERS, MSBackward, MSZero, MultipleShootingSolver, odeint_mshooting
from nodecore.numerics.solvers import (
    AdaptiveHeun,
    BogackiShampine32,
    DormandPrince45,
    DormandPrince853,
    Euler,
    Midpoint,
    RungeKutta,
    RungeKutta4,
    RungeKutta38,
    Tsitouras45,
)
from nodecore.numerics.stats import StepCounts
from nodecore.numerics.symplectic import SYMPLECTIC_SOLVERS, AsynchronousLeapfrog, odeint_symplectic
from nodecore.numerics.systems import (
    CoupledFourierSystem,
    FourierSystem,
    Lorenz,
    LTISystem,
    MatMulBoundedSystem,
    MatMulSystem,
    ODEProblem2,
    ODEProblem3,
    ODEProblem4,
    SineSystem,
    StiffFourierSystem,
    VanDerPol,
)
from nodecore.numerics.tableaus import ButcherTableau

__all__ = [
    "ALIASES", "AdaptiveHeun", "BogackiShampine32", "ButcherTableau", "DormandPrince45", "DormandPrince853", "Euler",
    "HyperEuler", "HyperMidpoint", "HyperRungeKutta4", "HyperSolver", "INTERPOLATORS", "IntegralController",
    "MSBackward", "MSZero", "MS_SOLVERS", "Midpoint", "MultipleShootingSolver", "PIController", "RungeKutta",
    "RungeKutta38", "RungeKutta4", "SOLVERS", "SOLVER_NAMES", "Solver", "StepCounts", "Tsitouras45", "get_solver",
    "initial_step", "odeint", "odeint_mshooting", "solver_object",
    "AsynchronousLeapfrog", "EventCallback", "Lorenz", "SYMPLECTIC_SOLVERS", "StochasticEventCallback", "VanDerPol",
    "odeint_hybrid", "odeint_symplectic", "root_find", "sdeint",
    "CoupledFourierSystem", "FourierSystem", "LTISystem", "MatMulBoundedSystem", "MatMulSystem", "ODEProblem2",
    "ODEProblem3", "ODEProblem4", "SineSystem", "StiffFourierSystem",
]
