"""torchdyn's ``torchdyn.numerics.solvers.hyper`` import path: the hypersolvers and their base solvers.

Defined in :mod:`nodecore.numerics.hyper` and :mod:`nodecore.numerics.solvers`; re-exported here.
"""

from nodecore.numerics.hyper import HyperEuler, HyperMidpoint, HyperRungeKutta4
from nodecore.numerics.solvers import Euler, Midpoint, RungeKutta4

__all__ = ["Euler", "HyperEuler", "HyperMidpoint", "HyperRungeKutta4", "Midpoint", "RungeKutta4"]
