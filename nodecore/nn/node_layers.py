"""torchdyn's ``torchdyn.nn.node_layers`` import path: ``Augmenter``, ``DepthCat`` and ``DataControl``, defined in
:mod:`nodecore.fields`."""

from nodecore.fields import Augmenter, DataControl, DepthCat

__all__ = ["Augmenter", "DataControl", "DepthCat"]
