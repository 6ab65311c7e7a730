"""Checks of the times a solve runs over (``t_span``) and of the points it returns (``save_at``)."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from nodecore.numerics.solvers import real_dtype

TSpan = Union[Tensor, Sequence[float]]


def check_t_span(t_span: TSpan | None, x: Tensor) -> Tensor:
    """``t_span`` as a 1-D real floating tensor on ``x``'s device (``[0, 1]`` when None), checked.

    Times are real even for a complex ``x``: a ``t_span`` given as a list, or as an integer tensor, gets the real
    dtype of ``x``'s precision (``complex64 -> float32``).

    Raises:
        ValueError: on another device than ``x``, complex, not 1-D with at least 2 times, not finite, or not
        strictly monotonic; the message shows the value.
    """
    dtype = real_dtype(x.dtype)
    if t_span is None:
        return torch.tensor([0.0, 1.0], dtype=dtype, device=x.device)
    if not isinstance(t_span, Tensor):
        t_span = torch.as_tensor(t_span, dtype=dtype, device=x.device)
    if t_span.device != x.device:
        raise ValueError(
            f"t_span is on {t_span.device} but x is on {x.device}; move it with t_span.to(x.device)"
        )
    if t_span.ndim != 1 or t_span.numel() < 2:
        raise ValueError(f"t_span must be 1-D with at least 2 depths, got shape {tuple(t_span.shape)}")
    if t_span.is_complex():
        raise ValueError(f"t_span must be real, got dtype {t_span.dtype}; times are real even for a complex state")
    if not t_span.is_floating_point():
        t_span = t_span.to(dtype)
    if not torch.isfinite(t_span).all():
        raise ValueError(f"t_span must be finite, got {t_span.tolist()}")
    steps = t_span.diff()
    if not ((steps > 0).all() or (steps < 0).all()):
        raise ValueError(
            "t_span must be strictly increasing, or strictly decreasing for a backward solve, "
            f"got {t_span.tolist()}"
        )
    return t_span


def save_at_indices(save_at: TSpan, t_span: Tensor) -> Tensor | None:
    """The index in ``t_span`` of each point of ``save_at`` (matched with ``torch.isclose``) as a ``[S]`` tensor;
    None when ``save_at`` is empty (torchdyn's default ``()``: every point of ``t_span``).

    Raises:
        ValueError: ``save_at`` is not 1-D, or one of its points is not in ``t_span`` exactly once.
    """
    points = torch.as_tensor(save_at, dtype=t_span.dtype, device=t_span.device)
    if points.numel() == 0:
        return None
    if points.ndim != 1:
        raise ValueError(f"save_at must be 1-D, got shape {tuple(points.shape)}")
    matches = torch.isclose(points[:, None], t_span.detach()[None, :])
    if not bool((matches.sum(dim=1) == 1).all()):
        raise ValueError(
            f"every point of save_at must be a point of t_span (once): save_at={points.tolist()}, "
            f"t_span={t_span.tolist()}; add the points to t_span"
        )
    return matches.to(torch.uint8).argmax(dim=1)
