"""torchdyn's ``torchdyn.core.neuralde`` import path: ``NeuralODE``, ``NeuralSDE`` and ``MultipleShootingLayer``,
defined in their own modules."""

from nodecore.core import MultipleShootingLayer, NeuralODE, NeuralSDE

__all__ = ["MultipleShootingLayer", "NeuralODE", "NeuralSDE"]
