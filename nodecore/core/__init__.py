"""torchdyn's ``torchdyn.core`` names: ``from nodecore.core import NeuralODE`` works as ``from torchdyn.core import ...``.

The classes live in :mod:`nodecore.neuralode`, :mod:`nodecore.problems`, :mod:`nodecore.models.sde` and
:mod:`nodecore.core.defunc` (``DEFunc``, torchdyn's field wrapper); this package gathers them.
"""

from nodecore.core.defunc import DEFunc
from nodecore.models.sde import NeuralSDE, SDEFunc, SDEProblem
from nodecore.neuralode import NeuralODE
from nodecore.problems import MultipleShootingLayer, ODEProblem

NeuralDE = NeuralODE  # torchdyn's name before v0.2, still exported by torchdyn.core
MultipleShootingProblem = MultipleShootingLayer  # torchdyn's base class of it; one class here

__all__ = ["DEFunc", "MultipleShootingLayer", "MultipleShootingProblem", "NeuralDE", "NeuralODE", "NeuralSDE",
           "ODEProblem", "SDEFunc", "SDEProblem"]
