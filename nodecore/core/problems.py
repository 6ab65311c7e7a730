"""torchdyn's ``torchdyn.core.problems`` import path: the problem classes, defined in their own modules."""

from nodecore.models.sde import SDEProblem
from nodecore.problems import MultipleShootingLayer, ODEProblem

MultipleShootingProblem = MultipleShootingLayer  # torchdyn's base of MultipleShootingLayer; one class here

__all__ = ["MultipleShootingProblem", "ODEProblem", "SDEProblem"]
