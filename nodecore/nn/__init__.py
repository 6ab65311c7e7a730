"""torchdyn's ``torchdyn.nn`` names: layers used inside vector fields and around Neural ODEs.

The classes live in :mod:`nodecore.fields` and :mod:`nodecore.galerkin`; this package only gathers them.
"""

from nodecore.fields import Augmenter, DataControl, DepthCat
from nodecore.galerkin import GalerkinLinear

__all__ = ["Augmenter", "DataControl", "DepthCat", "GalerkinLinear"]
