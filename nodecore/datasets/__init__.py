"""Toy datasets: torchdyn's ``torchdyn.datasets`` names, laid out as torchdyn lays them out.

The generators live in :mod:`nodecore.datasets.static_datasets` (torchdyn's module path); this package
re-exports them, so ``from nodecore.datasets import ToyDataset`` and ``from
nodecore.datasets.static_datasets import ToyDataset`` give the same class. A star import also hands out
``math``, ``np`` and ``torch``, as torchdyn's does.
"""

from nodecore.datasets.static_datasets import *  # noqa: F403 (the package's public names are the module's)
from nodecore.datasets.static_datasets import __all__  # noqa: F401
