"""Vector fields: the wrapper that evaluates and counts them, and layers that make them depth-aware."""

from __future__ import annotations

import inspect
from typing import Callable, Union

import torch
from torch import Tensor, nn

Time = Union[Tensor, float, int]


def _takes_time(module: Callable) -> bool:
    """True when ``module`` is called as ``f(t, x)``, False when as ``f(x)``."""
    target = module.forward if isinstance(module, nn.Module) else module
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return False
    return len(positional) >= 2


class DepthCat(nn.Module):
    """Concatenates the depth ``t`` to its input as one more feature, making a field depth-variant.

    Used inside a vector field, e.g. ``nn.Sequential(DepthCat(1), nn.Linear(3, 16), ...)`` for a
    2-dimensional state. The :class:`VectorField` that calls the field sets ``t`` before each evaluation.

    Args:
        idx_cat: the dimension along which ``t`` is concatenated (1 for ``[B, D]`` inputs).
    """

    def __init__(self, idx_cat: int = 1) -> None:
        super().__init__()
        self.idx_cat = idx_cat
        self.t: Time | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, D] -> [B, D + 1]`` (along ``idx_cat``)."""
        if self.t is None:
            raise RuntimeError("DepthCat has no depth t: call the field through VectorField / NeuralODE")
        shape = list(x.shape)
        shape[self.idx_cat] = 1
        t = torch.as_tensor(self.t, dtype=x.dtype, device=x.device)
        return torch.cat([x, t.expand(shape)], dim=self.idx_cat)


class Augmenter(nn.Module):
    """Appends ``augment_dims`` extra state dimensions (zeros, or a learned map of ``x``) before an ODE.

    Args:
        augment_idx: dimension along which to augment (1 for ``[B, D]`` inputs).
        augment_dims: how many dimensions to add.
        augment_func: optional module mapping ``x`` to the added dimensions; zeros when None.
        order: ``'first'`` appends after ``x``; ``'second'`` is the torchdyn name for the same layout.
    """

    def __init__(
        self,
        augment_idx: int = 1,
        augment_dims: int = 5,
        augment_func: nn.Module | None = None,
        order: str = "first",
    ) -> None:
        super().__init__()
        if augment_dims < 1:
            raise ValueError(f"augment_dims must be >= 1, got {augment_dims}")
        if order not in ("first", "second"):
            raise ValueError(f"unknown order {order!r}; valid orders: 'first', 'second'")
        self.augment_idx = augment_idx
        self.augment_dims = augment_dims
        self.augment_func = augment_func
        self.order = order

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, D] -> [B, D + augment_dims]``."""
        if self.augment_func is not None:
            extra = self.augment_func(x)
        else:
            shape = list(x.shape)
            shape[self.augment_idx] = self.augment_dims
            extra = torch.zeros(shape, dtype=x.dtype, device=x.device)
        return torch.cat([x, extra], dim=self.augment_idx)


class VectorField(nn.Module):
    """Calls a user's field as ``f(t, x)`` and counts evaluations.

    The wrapped module may take ``x`` (depth-invariant) or ``(t, x)`` (depth-variant); any
    :class:`DepthCat` inside it receives ``t`` before each call. ``t`` may be a Python number.

    Attributes:
        vf: the wrapped module.
        nfe: number of evaluations since construction or since the user last set it to 0.
    """

    def __init__(self, vf: nn.Module | Callable[..., Tensor]) -> None:
        super().__init__()
        if isinstance(vf, VectorField):
            vf = vf.vf
        if not callable(vf):
            raise TypeError(f"vector field must be an nn.Module or callable, got {type(vf).__name__}")
        self.vf = vf
        self.takes_time = _takes_time(vf)
        modules = vf.modules() if isinstance(vf, nn.Module) else ()
        self._depth_cats = [m for m in modules if isinstance(m, DepthCat)]
        self.nfe = 0

    def forward(self, t: Time, x: Tensor) -> Tensor:
        """Evaluate ``dx/dt = f(t, x)``; ``x [..., D] -> [..., D]``."""
        self.nfe += 1
        for layer in self._depth_cats:
            layer.t = t
        if self.takes_time:
            if not isinstance(t, Tensor):
                t = torch.tensor(t, dtype=x.dtype, device=x.device)
            return self.vf(t, x)
        return self.vf(x)
