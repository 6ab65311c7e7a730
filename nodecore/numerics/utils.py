"""torchdyn's ``torchdyn.numerics.utils`` import path, for the names nodecore has.

``EventCallback`` and ``StochasticEventCallback`` live in :mod:`nodecore.numerics.hybrid`, ``RootLogger`` in
:mod:`nodecore.numerics.root`; this module re-exports them, so ``from torchdyn.numerics.utils import ...``
ports by the word swap. The step-size helpers torchdyn's own loop uses (``hairer_norm``, ``init_step``,
``adapt_step``, ``make_norm``) and its small wrappers (``WrapFunc``, ``EventState``) are here too, with
torchdyn's signatures and results; nodecore's loop uses :mod:`nodecore.numerics.control` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nodecore.numerics.control import _rms, initial_step
from nodecore.numerics.hybrid import EventCallback, StochasticEventCallback
from nodecore.numerics.root import RootLogger

__all__ = ["EventCallback", "EventState", "RootLogger", "StochasticEventCallback", "WrapFunc", "adapt_step",
           "hairer_norm", "init_step", "make_norm"]


def hairer_norm(tensor: Tensor) -> Tensor:
    """The root mean square of ``tensor``'s entries (Hairer's error norm)."""
    return _rms(tensor)


def init_step(f: Callable[[Tensor, Tensor], Tensor], f0: Tensor, x0: Tensor, t0: Tensor, order: int, atol: float,
              rtol: float) -> Tensor:
    """Hairer's starting step size for a forward solve from ``(t0, x0)`` with slope ``f0``, as a tensor like ``t0``.

    One more evaluation of ``f``; the norms run over all of ``x0`` at once, as torchdyn's do.
    """
    t0 = torch.as_tensor(t0)
    step = initial_step(f, float(t0), x0, f0, order, atol, rtol, 1.0, error_size=x0.numel())
    return torch.tensor(step, dtype=t0.dtype if t0.is_floating_point() else x0.dtype, device=t0.device)


@torch.no_grad()
def adapt_step(dt: Tensor, error_ratio: Tensor, safety: Tensor | float, min_factor: Tensor | float,
               max_factor: Tensor | float, order: int) -> Tensor:
    """The next step size after a step of size ``dt`` with error ratio ``error_ratio`` (error / tolerance).

    ``dt · safety · error_ratio^(-1/order)``, the factor clipped to ``[min_factor, max_factor]``; an accepted step
    (``error_ratio < 1``) never shrinks, and an error of 0 grows the step by ``max_factor``.
    """
    max_factor = torch.as_tensor(max_factor, dtype=dt.dtype, device=dt.device)
    if error_ratio == 0:
        return dt * max_factor
    low = torch.ones_like(dt) if error_ratio < 1 else torch.as_tensor(min_factor, dtype=dt.dtype, device=dt.device)
    factor = torch.as_tensor(safety, dtype=dt.dtype, device=dt.device) / error_ratio ** (1.0 / order)
    return dt * torch.minimum(max_factor, torch.maximum(factor, low))


def make_norm(state: Tensor) -> Callable[[Tensor], Tensor]:
    """A seminorm over an adjoint's augmented state ``[t, x, adjoint of x, parameters' adjoint...]`` (flat):
    the larger of the RMS norms of the ``x`` part and of its adjoint, ignoring time and parameters."""
    size = state.numel()

    def norm(augmented: Tensor) -> Tensor:
        return torch.maximum(hairer_norm(augmented[1:1 + size]), hairer_norm(augmented[1 + size:1 + 2 * size]))

    return norm


class WrapFunc(nn.Module):
    """``f(x)`` as a field ``f(t, x)`` that ignores ``t``."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.f = f

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.f(x)


class EventState:
    """Which events of a hybrid system have fired: ``a != b`` counts the entries where two states differ."""

    def __init__(self, evid: Sequence[object]) -> None:
        self.evid = evid

    def __ne__(self, other: object) -> int:  # type: ignore[override]
        if not isinstance(other, EventState):
            return NotImplemented
        return sum(bool(a != b) for a, b in zip(self.evid, other.evid))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventState):
            return NotImplemented
        return not self != other
