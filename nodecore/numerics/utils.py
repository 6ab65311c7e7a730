"""torchdyn's ``torchdyn.numerics.utils`` import path, for the names nodecore has.

``EventCallback`` and ``StochasticEventCallback`` live in :mod:`nodecore.numerics.hybrid`, ``RootLogger`` in
:mod:`nodecore.numerics.root`; this module only re-exports them, so ``from torchdyn.numerics.utils import ...``
ports by the word swap.
"""

from nodecore.numerics.hybrid import EventCallback, StochasticEventCallback
from nodecore.numerics.root import RootLogger

__all__ = ["EventCallback", "RootLogger", "StochasticEventCallback"]
