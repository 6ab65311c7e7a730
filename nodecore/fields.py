"""Vector fields: the wrapper that evaluates and counts them, and layers that make them depth-aware."""

from __future__ import annotations

import inspect
from typing import Callable, Union

import torch
from torch import Tensor, nn

from nodecore._checks import integer
from nodecore._compile import compiling
from nodecore.numerics.solvers import time_tensor

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


class DataControl(nn.Module):
    """Concatenates the solve's initial state ``x0`` to its input: a data-controlled field (torchdyn's).

    Used inside a vector field, e.g. ``nn.Sequential(DataControl(), nn.Linear(2 * D, 16), ...)`` for a
    ``D``-dimensional state; the :class:`~nodecore.neuralode.NeuralODE` that solves the field sets ``u = x0`` at
    the start of every solve, so each sample's dynamics depend on where it started. Gradients flow into
    ``x0`` through ``u`` with every sensitivity.

    Attributes:
        u: the control, ``[B, D]``; None until a NeuralODE (or the user) sets it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.u: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, D] -> [B, D + D_u]``."""
        if self.u is None:
            raise RuntimeError("DataControl has no control u: call the field through NeuralODE, or set .u")
        if self.u.shape[0] != x.shape[0]:
            raise ValueError(f"DataControl's control u has batch {self.u.shape[0]} but the state has {x.shape[0]}")
        return torch.cat([x, self.u.to(x)], 1)


class Augmenter(nn.Module):
    """Adds ``augment_dims`` state dimensions (zeros, or a learned map of ``x``) before an ODE.

    Augmented Neural ODEs (Dupont et al. 2019): a flow in ``R^D`` is a homeomorphism and cannot pull
    apart nested classes; solving in ``R^(D + augment_dims)`` from ``[x, 0]`` can. Compose it with
    :class:`~nodecore.classifiers.ODEClassifier` (``augmenter=Augmenter(1, k)``, a field on ``D + k``
    dimensions, a readout from ``D + k``), or call it on ``x`` before ``NeuralODE(f)(z, t_span)``.

    Same arguments, defaults and layouts as torchdyn's ``Augmenter``: the default ``order='first'`` puts the
    added dimensions before ``x``; ``order='last'`` puts them after, so that ``state[:, :D]`` (for
    ``augment_idx=1``) keeps the input's coordinates.

    Args:
        augment_idx: dimension along which to augment (1 for ``[B, D]`` inputs).
        augment_dims: how many dimensions to add.
        augment_func: optional module mapping ``x`` to the added dimensions (its output must have
            ``augment_dims`` entries along ``augment_idx``); zeros when None.
        order: ``'last'`` gives ``[x, extra]``, ``'first'`` gives ``[extra, x]``.

    Raises:
        ValueError: ``augment_dims < 1``, an unknown ``order`` (``'second'`` included: second-order dynamics
            are a property of the vector field, not of the augmentation).
    """

    ORDERS: tuple[str, ...] = ("first", "last")

    def __init__(
        self,
        augment_idx: int = 1,
        augment_dims: int = 5,
        augment_func: nn.Module | None = None,
        order: str = "first",
    ) -> None:
        super().__init__()
        augment_dims = integer("augment_dims", augment_dims, minimum=1)
        if order not in self.ORDERS:
            hint = ""
            if order == "second":
                hint = (
                    ". 'second' is not a layout: torchdyn's orders are 'first' (extra dimensions before x) and "
                    "'last' (after x); a second-order system x'' = g(x, x') is a first-order one in the state "
                    "[x, v]: use NeuralODE(f, order=2)"
                )
            raise ValueError(f"unknown order {order!r}; valid orders: 'first', 'last'{hint}")
        self.augment_idx = augment_idx
        self.augment_dims = augment_dims
        self.augment_func = augment_func
        self.order = order

    def extra_repr(self) -> str:
        return f"augment_idx={self.augment_idx}, augment_dims={self.augment_dims}, order={self.order!r}"

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, D] -> [B, D + augment_dims]`` (along ``augment_idx``)."""
        shape = list(x.shape)
        shape[self.augment_idx] = self.augment_dims
        if self.augment_func is not None:
            extra = self.augment_func(x)
            if list(extra.shape) != shape:
                raise ValueError(
                    f"augment_func returned shape {tuple(extra.shape)}, expected {tuple(shape)} "
                    f"(augment_dims={self.augment_dims} along dimension {self.augment_idx})"
                )
        else:
            extra = torch.zeros(shape, dtype=x.dtype, device=x.device)
        parts = [x, extra] if self.order == "last" else [extra, x]
        return torch.cat(parts, dim=self.augment_idx)


class DepthAware(nn.Module):
    """Base class for layers that read the depth ``t`` of the solve, such as
    :class:`~nodecore.galerkin.GalerkinLinear`.

    A :class:`VectorField` sets ``t`` on every ``DepthAware`` module inside the field before each
    evaluation, as it does for :class:`DepthCat`; a subclass reads it in ``forward`` with :meth:`depth`.

    Attributes:
        t: the depth of the current evaluation; None until a VectorField (or the user) sets it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.t: Time | None = None

    def depth(self, like: Tensor) -> Tensor:
        """The current depth as a tensor with ``like``'s dtype and device (0-dim for a number).

        Raises:
            RuntimeError: no depth was set, i.e. the layer was called outside a VectorField / NeuralODE.
        """
        if self.t is None:
            raise RuntimeError(
                f"{type(self).__name__} has no depth t: call the field through VectorField / NeuralODE, "
                "or pass t explicitly"
            )
        return torch.as_tensor(self.t, dtype=like.dtype, device=like.device)


class VectorField(nn.Module):
    """Calls a user's field as ``f(t, x)`` and counts evaluations.

    The wrapped module may take ``x`` (depth-invariant) or ``(t, x)`` (depth-variant); any
    :class:`DepthCat` or :class:`DepthAware` module inside it receives ``t`` before each call. ``t`` may be
    a Python number.

    Attributes:
        vf: the wrapped module.
        nfe: number of evaluations since construction or since the user last set it to 0; evaluations inside a
            ``torch.compile`` graph are not counted (``NeuralODE.stats`` counts every solve's).
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
        modules = list(modules)
        self._depth_layers = [m for m in modules if isinstance(m, (DepthCat, DepthAware))]
        self.control_layers = [m for m in modules if isinstance(m, DataControl)]
        # torchdyn's per-solve hooks: a module's before_odeint(x0) runs before each solve (a CNF draws its
        # Hutchinson noise there), and each module with a trace_estimator (a CNF) owns one leading state
        # column (its log-density change) that a DataControl's control leaves out.
        self.before_solve_hooks = [m.before_odeint for m in modules if callable(getattr(m, "before_odeint", None))]
        self.excess_dims = sum(hasattr(m, "trace_estimator") for m in modules)
        self._nfe = [0]

    @property
    def ignores_time(self) -> bool:
        """True when no part of the field can see the time (a field of ``x`` alone, or one whose class declares
        ``ignores_time = True``, as nodecore's autonomous test systems do), and no depth layer inside reads it: solvers
        may then skip computing stage times, and multiple shooting batches its intervals."""
        return (not self.takes_time or getattr(self.vf, "ignores_time", False) is True) and not self._depth_layers

    # A plain list behind a property: nn.Module's __setattr__ is measurable overhead at every evaluation.
    @property
    def nfe(self) -> int:
        return self._nfe[0]

    @nfe.setter
    def nfe(self, value: int) -> None:
        self._nfe[0] = int(value)

    def forward(self, t: Time, x: Tensor) -> Tensor:
        """Evaluate ``dx/dt = f(t, x)``; ``x [..., D] -> [..., D]``."""
        if not compiling():  # a counter read in a compiled graph is guarded on: the graph would recompile each call
            self._nfe[0] += 1
        for layer in self._depth_layers:
            layer.t = t
        if self.takes_time:
            if not isinstance(t, Tensor):
                t = time_tensor(t, x)
            return self.vf(t, x)
        return self.vf(x)
