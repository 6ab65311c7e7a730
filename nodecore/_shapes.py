"""Turning torch's raw shape errors (``mat1 and mat2 shapes cannot be multiplied``) into messages that say
which input had which shape and, where the module tells, how many features it takes. Internal."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from nodecore.errors import InputShapeError, SolverError

# Words in torch's messages for operands that do not fit (matmul, broadcasting, conv channels, view).
_SHAPE_WORDS = re.compile(r"shape|size|dimension|channel", re.IGNORECASE)


def _first_layer(module: object) -> tuple[str, nn.Module, int] | None:
    """``(name, layer, in_features)`` of the first leaf module when it declares ``in_features``, else None.

    Only the first leaf counts: a layer after another (``DepthCat``, a convolution) may see another width.
    """
    if not isinstance(module, nn.Module):
        return None
    for name, layer in module.named_modules():
        if next(layer.children(), None) is not None:
            continue
        features = getattr(layer, "in_features", None)
        if isinstance(features, int) and not isinstance(features, bool) and features > 0:
            return name, layer, features
        return None
    return None


def _explain(err: RuntimeError, what: str, inputs: Mapping[str, Tensor], module: object) -> InputShapeError | None:
    """The :class:`InputShapeError` for ``err``, or None when ``err`` is not about shapes."""
    if isinstance(err, (torch.OutOfMemoryError, SolverError)) or not _SHAPE_WORDS.search(str(err)):
        return None
    described = " and ".join(f"{label} of shape {tuple(value.shape)}" for label, value in inputs.items())
    hint = ""
    layer = _first_layer(module)
    sizes = {label: value.shape[-1] for label, value in inputs.items() if value.ndim >= 1}
    if layer is not None and layer[2] not in sizes.values():
        name, first, features = layer
        where = f"{name!r} ({type(first).__name__})" if name else f"({type(first).__name__})"
        have = " and ".join(f"{label} has {size}" for label, size in sizes.items())
        hint = f"; its first layer {where} takes {features} input features (last dimension), but {have}"
    return InputShapeError(f"{what} could not be evaluated on {described}{hint} (torch: {err})")


@contextmanager
def explained_shapes(what: str, inputs: Mapping[str, Tensor], module: object) -> Iterator[None]:
    """Re-raise torch's shape errors from the block as an :class:`~nodecore.errors.InputShapeError`.

    Only a ``RuntimeError`` whose message is about shapes or sizes is explained (not out-of-memory errors,
    not nodecore's solver errors); it is chained as ``__cause__``. Anything else passes through unchanged.

    Args:
        what: the failing thing, e.g. ``"the vector field"``.
        inputs: what it was called on, by description (``{"the state x": x}``).
        module: the failing module, asked for the ``in_features`` of its first layer.
    """
    try:
        yield
    except RuntimeError as err:
        explained = _explain(err, what, inputs, module)
        if explained is None:
            raise
        raise explained from err
