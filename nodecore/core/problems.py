"""torchdyn's ``torchdyn.core.problems`` import path: the problem classes, defined in their own modules."""

from nodecore.core import MultipleShootingProblem
from nodecore.models.sde import SDEProblem
from nodecore.problems import ODEProblem

__all__ = ["MultipleShootingProblem", "ODEProblem", "SDEProblem"]
