"""torchdyn's ``torchdyn.core.utils`` import path: :func:`standardize_vf_call_signature`."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from nodecore._checks import integer
from nodecore.core.defunc import DEFunc, DEFuncBase  # noqa: F401  (DEFuncBase: torchdyn's module hands it out)
from nodecore.fields import VectorField, _takes_time

__all__ = ["standardize_vf_call_signature"]


def standardize_vf_call_signature(vector_field: nn.Module | Callable[..., Tensor], order: int = 1,
                                  defunc_wrap: bool = False) -> nn.Module:
    """A field callable as ``f(t, x)``, whatever the user wrote: torchdyn's helper by its name.

    An ``nn.Module`` whose ``forward`` takes ``(t, x)`` comes back as it is; a module or function taking ``x``
    alone, or any plain function, comes back wrapped in a :class:`~nodecore.fields.VectorField` (which calls it
    with or without ``t`` and counts evaluations). With ``defunc_wrap`` the result is a
    :class:`~nodecore.core.defunc.DEFunc` of ``order`` around it instead.

    Unlike torchdyn's, the time argument is recognised by position, not by the name ``t`` (a field ``f(s, x)``
    is time-dependent too), and nothing is printed.

    Raises:
        TypeError: ``vector_field`` is not callable. ValueError: ``order`` is not an integer >= 1.
    """
    if not callable(vector_field):
        raise TypeError(f"vector_field must be an nn.Module or callable, got {type(vector_field).__name__}")
    order = integer("order", order, minimum=1)
    if defunc_wrap:
        return DEFunc(vector_field, order)
    if isinstance(vector_field, nn.Module) and _takes_time(vector_field):
        return vector_field
    return VectorField(vector_field)
