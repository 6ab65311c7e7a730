"""torchdyn's ``torchdyn.core.defunc`` import path: ``DEFunc`` (the vector-field wrapper) and ``SDEFunc``.

``from torchdyn.core import DEFunc`` is part of torchdyn's public surface (1.0.6 and master); nodecore's solvers
wrap fields themselves (:class:`~nodecore.fields.VectorField`), so code that builds a ``DEFunc`` by hand gets
this one, which a :class:`~nodecore.neuralode.NeuralODE`, :func:`~nodecore.numerics.odeint` or an
``ODEProblem`` accepts like any field ``f(t, x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from nodecore._checks import integer
from nodecore._compile import compiling
from nodecore.fields import Time, VectorField
from nodecore.models.sde import SDEFunc
from nodecore.numerics.solvers import time_tensor

__all__ = ["DEFunc", "DEFuncBase", "SDEFunc"]


class DEFunc(nn.Module):
    """torchdyn's ``DEFunc(vector_field, order=1)``: ``f(t, x, args)`` for a field of any order.

    Handles what torchdyn's does: the depth ``t`` is handed to :class:`~nodecore.fields.DepthCat` and
    :class:`~nodecore.fields.DepthAware` layers inside; for ``order > 1`` the state is ``order`` blocks
    ``[x, x', ..., x^(order-1)]`` of width ``D / order`` and the result is ``[x', ..., x^(order-1), f(t, x)]``
    (``f`` returns the highest derivative, ``D / order`` wide); an ``integral_loss`` attribute ``l(t, x)`` with
    ``sensitivity == 'autograd'`` is propagated in the first state column (``x[:, 0]``; the field sees
    ``x[:, 1:]``), as torchdyn's ``NeuralODE`` sets them.

    Unlike torchdyn's, the field may take ``x`` alone or ``(t, x)`` (torchdyn's calls ``vector_field(t, x,
    args=args)``, which a plain ``nn.Sequential`` cannot take), and an integral loss combines with ``order > 1``
    (torchdyn's calls a method it lacks, ``horder_forward``, and raises ``AttributeError``).

    Args:
        vector_field: an ``nn.Module`` or callable taking ``x``, ``(t, x)`` or ``(t, x, args)``.
        order: the order of the ODE, 1 or more.

    Attributes:
        vf: the wrapped field (torchdyn's name); ``nfe``: evaluations, settable (``model.nfe = 0``).
        order, integral_loss, sensitivity: as torchdyn's (the last two None until set).
    """

    def __init__(self, vector_field: nn.Module | Callable[..., Tensor], order: int = 1) -> None:
        super().__init__()
        if not callable(vector_field):
            raise TypeError(f"vector_field must be an nn.Module or callable, got {type(vector_field).__name__}")
        self.vf = vector_field
        # Not a registered submodule: vf's parameters are DEFunc's own once (state_dict keys vf.*, as torchdyn's).
        object.__setattr__(self, "_field", _Field(vector_field))
        self.order = integer("order", order, minimum=1)
        self.integral_loss: Callable[[Tensor, Tensor], Tensor] | None = None
        self.sensitivity: str | None = None

    @property
    def nfe(self) -> int:
        return self._field.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self._field.nfe = value

    def forward(self, t: Time, x: Tensor, args: Mapping[str, object] | None = None) -> Tensor:
        """``dx/dt`` ``[B, D] -> [B, D]`` (with the integral loss's column first when one is propagated)."""
        if self.integral_loss is not None and self.sensitivity == "autograd":
            state = x[:, 1:]
            dlds = self.integral_loss(t, state)
            if dlds.ndim == 1:
                dlds = dlds[:, None]
            derivative = self._derivative(t, state, args)
            return torch.cat([dlds.to(derivative), derivative], 1)
        return self._derivative(t, x, args)

    def _derivative(self, t: Time, x: Tensor, args: Mapping[str, object] | None) -> Tensor:
        if self.order == 1:
            return self._field(t, x, args)
        if x.ndim < 2 or x.shape[1] % self.order:
            raise ValueError(f"an order-{self.order} field needs a state [B, D] with D a multiple of {self.order} "
                             f"(the blocks x, x', ...), got shape {tuple(x.shape)}")
        width = x.shape[1] // self.order
        highest = self._field(t, x, args)
        if highest.shape[1] != width:
            raise ValueError(f"an order-{self.order} field must return the highest derivative, [B, {width}] for a "
                             f"state [B, {x.shape[1]}], got shape {tuple(highest.shape)}")
        return torch.cat([x[:, width:], highest], 1)

    def extra_repr(self) -> str:
        return f"order={self.order}"


class _Field(VectorField):
    """:class:`VectorField` that also hands on torchdyn's ``args`` to a field declaring a parameter of that name."""

    def __init__(self, vf: nn.Module | Callable[..., Tensor]) -> None:
        super().__init__(vf)
        from nodecore.neuralode import _declares_args

        self.passes_args = self.takes_time and _declares_args(self.vf)

    def forward(self, t: Time, x: Tensor, args: Mapping[str, object] | None = None) -> Tensor:  # type: ignore[override]
        if not self.passes_args:
            return super().forward(t, x)
        if not compiling():
            self._nfe[0] += 1
        for layer in self._depth_layers:
            layer.t = t
        if not isinstance(t, Tensor):
            t = time_tensor(t, x)
        return self.vf(t, x, args={} if args is None else args)


class DEFuncBase(nn.Module):
    """torchdyn's ``DEFuncBase(vector_field, has_time_arg=True)``: calls ``vector_field(t, x)`` (with torchdyn's
    ``args`` when it declares them) or, with ``has_time_arg=False``, ``vector_field(x)``; counts evaluations.

    Attributes:
        vf, has_time_arg: as given; nfe: evaluations (settable).
    """

    def __init__(self, vector_field: nn.Module | Callable[..., Tensor], has_time_arg: bool = True) -> None:
        super().__init__()
        if not callable(vector_field):
            raise TypeError(f"vector_field must be an nn.Module or callable, got {type(vector_field).__name__}")
        self.vf, self.has_time_arg, self.nfe = vector_field, bool(has_time_arg), 0
        object.__setattr__(self, "_field", _Field(vector_field) if self.has_time_arg else None)

    def forward(self, t: Time, x: Tensor, args: Mapping[str, object] | None = None) -> Tensor:
        self.nfe += 1
        if not self.has_time_arg:
            return self.vf(x)
        return self._field(t, x, args)

