"""torchdyn's import path ``torchdyn.numerics.solvers.root``: the names of :mod:`nodecore.numerics.root`.

torchdyn's tests write ``from torchdyn.numerics.solvers.root import *`` (1.0.6 and master); the same line with
``nodecore`` hands out the same names, as the same objects. The root finder itself lives in
:mod:`nodecore.numerics.root`: this module only re-exports it.

Left out: torchdyn's ``LineSearchGriewank``, ``LineSearchWolfe1`` and ``LineSearchWolfe2``, placeholders that
cannot be constructed there (their ``__init__`` calls the base class's without its arguments) and that no
``search_method`` names.
"""

import numpy as np
import torch
from torch import einsum, norm
from torch.autograd.functional import jacobian

from nodecore.numerics.root import (
    RETURN_CODES,
    ROOT_SOLVER_DICT,
    SEARCH_METHODS,
    Broyden,
    BroydenBad,
    BroydenFull,
    Chord,
    LineSearchArmijo,
    LineSearcher,
    NaiveSearch,
    Newton,
    RootLogger,
    TerminationCondition,
    batch_jacobian,
    root_find,
)

__all__ = [
    "Broyden", "BroydenBad", "BroydenFull", "Chord", "LineSearchArmijo", "LineSearcher", "NaiveSearch", "Newton",
    "RETURN_CODES", "ROOT_SOLVER_DICT", "RootLogger", "SEARCH_METHODS", "TerminationCondition", "batch_jacobian",
    "root_find",
]
# torchdyn's star import also hands out what its module imported (torchdyn's tests use `torch` from it).
__all__ += ["einsum", "jacobian", "norm", "np", "torch"]
