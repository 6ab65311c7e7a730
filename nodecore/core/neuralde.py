"""torchdyn's ``torchdyn.core.neuralde`` import path: ``NeuralODE``, ``NeuralSDE`` and ``MultipleShootingLayer``,
defined in their own modules, and the names torchdyn's module also hands out (the problems, ``odeint``)."""

from nodecore.core import MultipleShootingLayer, MultipleShootingProblem, NeuralODE, NeuralSDE, ODEProblem
from nodecore.core.utils import standardize_vf_call_signature
from nodecore.models.sde import SDEFunc, SDEProblem
from nodecore.numerics.odeint import odeint

__all__ = ["MultipleShootingLayer", "MultipleShootingProblem", "NeuralODE", "NeuralSDE", "ODEProblem", "SDEFunc",
           "SDEProblem", "odeint", "standardize_vf_call_signature"]
