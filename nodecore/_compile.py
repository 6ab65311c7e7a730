"""``torch.compile`` support: whether Dynamo is tracing the code that runs now, and code kept out of its graphs."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

_F = TypeVar("_F", bound=Callable)

try:
    from torch.compiler import is_compiling as _is_compiling  # torch >= 2.3
except ImportError:  # pragma: no cover - torch 2.1, 2.2
    from torch._dynamo import is_compiling as _is_compiling


def compiling() -> bool:
    """True while ``torch.compile`` (Dynamo) traces the caller: a constant in the traced code.

    Code with host-side state takes its plain path then: caches of tensors kept by identity or version counter and
    in-place workspaces cannot be traced, and a Python counter read in traced code is guarded on, so the graph
    would be recompiled whenever it changed.
    """
    return _is_compiling()


def outside_graph(function: _F) -> _F:
    """``function`` run eagerly even when called from compiled code (``torch.compiler.disable``; Dynamo splits the
    graph around the call): for code Dynamo cannot trace, such as an ``autograd.Function`` whose backward solves."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    if disable is None:  # pragma: no cover - torch 2.1
        from torch import _dynamo

        disable = _dynamo.disable
    return disable(function)
