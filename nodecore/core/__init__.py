"""torchdyn's ``torchdyn.core`` names: ``from nodecore.core import NeuralODE`` works as ``from torchdyn.core import ...``.

The classes live in :mod:`nodecore.neuralode`, :mod:`nodecore.problems` and :mod:`nodecore.models.sde`; this
package only gathers them.
"""

from nodecore.models.sde import NeuralSDE, SDEProblem
from nodecore.neuralode import NeuralODE
from nodecore.problems import MultipleShootingLayer, ODEProblem

NeuralDE = NeuralODE  # torchdyn's name before v0.2, still exported by torchdyn.core

__all__ = ["MultipleShootingLayer", "NeuralDE", "NeuralODE", "NeuralSDE", "ODEProblem", "SDEProblem"]
