"""torchdyn's ``torchdyn.nn`` names: layers used inside vector fields and around Neural ODEs.

The classes live in :mod:`nodecore.fields` and :mod:`nodecore.galerkin`; this package only gathers them.
"""

from nodecore.fields import Augmenter, DataControl, DepthCat
from nodecore.galerkin import GalerkinLinear
from nodecore.nn.galerkin import (
    Chebychev,
    Fourier,
    GalConv2d,
    GalLayer,
    GalLinear,
    GaussianRBF,
    MultiquadRBF,
    Polynomial,
    VanillaRBF,
)

__all__ = [
    "Augmenter", "Chebychev", "DataControl", "DepthCat", "Fourier", "GalConv2d", "GalLayer", "GalLinear",
    "GalerkinLinear", "GaussianRBF", "MultiquadRBF", "Polynomial", "VanillaRBF",
]
