"""torchdyn's ``torchdyn.core`` names: ``from nodecore.core import NeuralODE`` works as ``from torchdyn.core import ...``.

The classes live in :mod:`nodecore.neuralode` and :mod:`nodecore.problems`; this package only gathers them.
"""

from nodecore.neuralode import NeuralODE
from nodecore.problems import MultipleShootingLayer, ODEProblem

__all__ = ["MultipleShootingLayer", "NeuralODE", "ODEProblem"]
