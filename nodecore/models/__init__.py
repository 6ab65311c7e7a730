"""torchdyn's ``torchdyn.models`` names: ``from nodecore.models import CNF, HNN, NeuralODE`` works as in torchdyn.

The flows, energy fields and SDEs live in :mod:`nodecore.models.cnf`, :mod:`nodecore.models.energy`,
:mod:`nodecore.models.sde` and :mod:`nodecore.models.latent_sde` (torchdyn's ``LatentNeuralSDE``); the Neural ODE
classes torchdyn re-exports here in :mod:`nodecore.neuralode` and :mod:`nodecore.problems`; nodecore's own models
(DEQs, the ODE classifier, physics systems) in their modules. This package only gathers them. torchdyn's
``models.hybrid`` (``HybridNeuralDE``) is :mod:`nodecore.models.hybrid`, imported by that path as in torchdyn.
"""

from nodecore.classifiers import ODEClassifier
from nodecore.deq import DEQ, DEQCell, DEQClassifier
from nodecore.models.cnf import CNF, REQUIRES_NOISE, autograd_trace, hutch_trace
from nodecore.models.energy import GNF, HNN, LNN, ConservativeLinearSNF
from nodecore.models.latent_sde import LatentNeuralSDE, LatentSDEFunc
from nodecore.models.sde import NeuralSDE, SDEFunc, SDEProblem
from nodecore.neuralode import NeuralODE
from nodecore.problems import MultipleShootingLayer, ODEProblem
from nodecore.systems import DampedPendulum, HybridField, LotkaVolterra
from nodecore.numerics.odeint import odeint  # noqa: F401  (torchdyn's models package hands it out too)

MultipleShootingProblem = MultipleShootingLayer  # torchdyn's name of the base class; one class here

# Handed out by a star import, as torchdyn's models package hands them out (see __all__ below).
from functools import partial  # noqa: E402, F401

import torch  # noqa: E402
import torchsde  # noqa: E402, F401
from torch import Tensor, nn  # noqa: E402, F401
from torch.autograd import grad  # noqa: E402, F401
from torch.autograd.functional import hessian, jacobian  # noqa: E402, F401

__all__ = [
    "CNF",
    "DEQ",
    "GNF",
    "HNN",
    "LNN",
    "REQUIRES_NOISE",
    "ConservativeLinearSNF",
    "DEQCell",
    "DEQClassifier",
    "DampedPendulum",
    "HybridField",
    "LatentNeuralSDE",
    "LatentSDEFunc",
    "LotkaVolterra",
    "MultipleShootingLayer",
    "MultipleShootingProblem",
    "NeuralODE",
    "NeuralSDE",
    "SDEFunc",
    "SDEProblem",
    "ODEClassifier",
    "ODEProblem",
    "autograd_trace",
    "hutch_trace",
]
# `from torchdyn.models import *` also hands out what it imported, and torchdyn's tutorials use those names
# without importing them: the same here for a star import (all but `pl`, pytorch_lightning, an optional extra here).
__all__ += ["Tensor", "grad", "hessian", "jacobian", "nn", "odeint", "partial", "torch", "torchsde"]


def __getattr__(name: str) -> object:
    """torchdyn's ``models`` also hands out ``standardize_vf_call_signature``; loaded on first use (nodecore.core
    imports this package, so an eager import would be circular)."""
    if name == "standardize_vf_call_signature":
        from nodecore.core.utils import standardize_vf_call_signature

        return standardize_vf_call_signature
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

