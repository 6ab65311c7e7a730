"""Continuous normalizing flows: a vector field that carries the change of log-density alongside the state.

The state of a CNF solve is ``[B, 1 + D]``: column 0 accumulates the log-density change, columns ``1:`` are the
sample ``x``. The field is ``d[Δ, x]/dt = [-tr(∂f/∂x), f(x)]`` (the instantaneous change of variables), so a
solve from ``[0, x0]`` over ``[t0, t1]`` ends at ``[Δ, x1]`` with ``log p1(x1) = log p0(x0) + Δ``. Run backwards
from data to the base distribution (``t_span = [1, 0]``), it gives ``log p_data(x) = log p_base(z) - Δ``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CNF", "REQUIRES_NOISE", "autograd_trace", "hutch_trace"]

TraceEstimator = Callable[..., Tensor]


def _check_pair(name: str, x_out: Tensor, x_in: Tensor) -> None:
    """Both tensors ``[B, D]`` of one shape, ``x_in`` requiring grad."""
    for label, value in (("x_out", x_out), ("x_in", x_in)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(value).__name__}")
    if x_in.ndim != 2 or x_out.shape != x_in.shape:
        raise ValueError(
            f"{name} takes x_out and x_in of one shape [B, D], got x_out {tuple(x_out.shape)} and x_in "
            f"{tuple(x_in.shape)}"
        )
    if not x_in.requires_grad:
        raise ValueError(f"{name}: x_in must require grad (x_out must be computed from it under autograd)")


def _vjp(x_out: Tensor, x_in: Tensor, weights: Tensor | None, *, create_graph: bool) -> Tensor:
    """``weights^T ∂x_out/∂x_in`` row by row, ``[B, D]`` (``x_out`` a scalar when ``weights`` is None); zeros
    where ``x_out`` does not depend on ``x_in``."""
    if not x_out.requires_grad:
        return torch.zeros_like(x_in)
    (row,) = torch.autograd.grad(x_out, x_in, weights, create_graph=create_graph, retain_graph=True,
                                 allow_unused=True)
    return torch.zeros_like(x_in) if row is None else row


def autograd_trace(x_out: Tensor, x_in: Tensor, *, create_graph: bool = True, **kwargs: Any) -> Tensor:
    """The exact trace of each sample's Jacobian ``∂x_out/∂x_in``, by ``D`` backward passes.

    Args:
        x_out: ``[B, D]``, computed from ``x_in`` (each row from its own row of ``x_in``).
        x_in: ``[B, D]``, requiring grad.
        create_graph: keep the graph of the trace, so that it can be differentiated (training).
        kwargs: ignored (a CNF passes ``noise=...`` to every estimator).

    Returns:
        ``[B]``: ``sum_i ∂x_out[:, i]/∂x_in[:, i]``.

    Raises:
        ValueError: shapes other than one ``[B, D]`` for both, or an ``x_in`` that does not require grad.
    """
    _check_pair("autograd_trace", x_out, x_in)
    trace = x_in.new_zeros(x_in.shape[0])
    for i in range(x_in.shape[1]):
        trace = trace + _vjp(x_out[:, i].sum(), x_in, None, create_graph=create_graph)[:, i]
    return trace


def hutch_trace(x_out: Tensor, x_in: Tensor, noise: Tensor | None = None, *, create_graph: bool = True,
                **kwargs: Any) -> Tensor:
    """Hutchinson's estimate ``v^T (∂x_out/∂x_in) v`` of each sample's Jacobian trace, by one backward pass.

    Unbiased when the noise has zero mean and identity covariance (Gaussian or Rademacher); its variance is
    lower for Rademacher noise.

    Args:
        x_out: ``[B, D]``, computed from ``x_in``.
        x_in: ``[B, D]``, requiring grad.
        noise: ``v``, ``[B, D]``: one noise vector per sample.
        create_graph: keep the graph of the estimate, so that it can be differentiated (training).
        kwargs: ignored.

    Returns:
        ``[B]``.

    Raises:
        ValueError: no noise, or ``x_out``, ``x_in`` and ``noise`` not all of one shape ``[B, D]``.
    """
    _check_pair("hutch_trace", x_out, x_in)
    if noise is None:
        raise ValueError(
            "hutch_trace needs noise [B, D]: build the CNF with a noise_dist (e.g. torch.distributions.Normal(0, 1) "
            "over D dimensions), which draws it for each solve"
        )
    if not isinstance(noise, Tensor) or noise.shape != x_in.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"hutch_trace: noise must have the state's shape {tuple(x_in.shape)}, got {got}")
    return (_vjp(x_out, x_in, noise, create_graph=create_graph) * noise).sum(1)


def _check_state(x: object) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"a CNF's state must be [B, 1 + D] with D >= 1 (column 0 the log-density change), got {got}")


# Trace estimators a CNF refuses to build without a noise_dist (torchdyn's list; append your own).
REQUIRES_NOISE: list[TraceEstimator] = [hutch_trace]
_BUILT_IN: tuple[TraceEstimator, ...] = (autograd_trace, hutch_trace)


class CNF(nn.Module):
    """A continuous normalizing flow's vector field, for a :class:`~nodecore.neuralode.NeuralODE`.

    ``CNF(net)`` maps the state ``[Δ, x]`` ``[B, 1 + D]`` to ``[-tr(∂net/∂x), net(x)]``: start a solve at
    ``torch.cat([torch.zeros(B, 1), x], 1)``; the final column 0 is the log-density change (see the module
    docstring for its sign). The trace is computed with grad enabled even when the caller's is not; outside
    grad mode the output is detached.

    Args:
        net: the flow's field on ``x``, ``[B, D] -> [B, D]`` (it sees neither ``t`` nor column 0).
        trace_estimator: ``autograd_trace`` (exact, the default), ``hutch_trace`` (stochastic, one backward
            pass), or a callable ``(x_out, x_in, noise=None) -> [B]``.
        noise_dist: where the estimator's noise is drawn: an object whose ``sample((B,))`` returns ``[B, D]``
            (e.g. ``torch.distributions.MultivariateNormal(torch.zeros(D), torch.eye(D))``). Required for the
            estimators in :data:`REQUIRES_NOISE`.
        order: 1 (torchdyn's signature has it; higher orders are not implemented, as in torchdyn).

    Attributes:
        noise: the current noise ``[B, D]``, or None. :meth:`before_odeint` draws it once per solve, so the
            forward and backward passes of one solve see the same noise; if it is missing, or drawn for another
            batch size, :meth:`forward` draws it. Assign to it to fix the noise yourself (with no noise_dist).

    Raises:
        TypeError: ``net`` or ``trace_estimator`` not callable, a ``noise_dist`` without ``sample``.
        ValueError: an estimator that needs noise without a ``noise_dist``; ``order`` other than 1.
    """

    def __init__(self, net: nn.Module | Callable[[Tensor], Tensor], trace_estimator: TraceEstimator | None = None,
                 noise_dist: Any = None, order: int = 1) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be an nn.Module or callable [B, D] -> [B, D], got {type(net).__name__}")
        if isinstance(order, bool) or order != 1:
            raise ValueError(
                f"CNF supports order 1 only, got order={order!r} (torchdyn's higher orders are not implemented "
                "there either); for a second-order flow, put the velocity in the state and write its first-order field"
            )
        self.order = 1
        if trace_estimator is None:
            trace_estimator = autograd_trace
        if not callable(trace_estimator):
            raise TypeError(
                f"trace_estimator must be autograd_trace, hutch_trace or a callable (x_out, x_in, noise=None) -> "
                f"[B], got {trace_estimator!r} (a {type(trace_estimator).__name__})"
            )
        if noise_dist is not None and not callable(getattr(noise_dist, "sample", None)):
            raise TypeError(
                f"noise_dist must have a sample(shape) method, such as a torch.distributions.Distribution, got "
                f"{type(noise_dist).__name__}"
            )
        if trace_estimator in REQUIRES_NOISE and noise_dist is None:
            name = getattr(trace_estimator, "__name__", repr(trace_estimator))
            raise ValueError(
                f"the trace estimator {name} needs noise: pass noise_dist, e.g. "
                "torch.distributions.MultivariateNormal(torch.zeros(D), torch.eye(D))"
            )
        self.net = net
        self.trace_estimator = trace_estimator
        self.noise_dist = noise_dist
        self.noise: Tensor | None = None

    def extra_repr(self) -> str:
        name = getattr(self.trace_estimator, "__name__", type(self.trace_estimator).__name__)
        return f"trace_estimator={name}, noise_dist={type(self.noise_dist).__name__ if self.noise_dist else None}"

    def before_odeint(self, x: Tensor) -> None:
        """Draw the noise for a solve from ``x`` ``[B, 1 + D]``: ``noise_dist.sample((B,))``, as ``[B, D]``.

        Does nothing without a ``noise_dist``.

        Raises:
            ValueError: a state that is not ``[B, 1 + D]``, or samples that are not ``[B, D]``.
        """
        _check_state(x)
        if self.noise_dist is None:
            return
        noise = self.noise_dist.sample((x.shape[0],))
        expected = (x.shape[0], x.shape[1] - 1)
        if not isinstance(noise, Tensor) or tuple(noise.shape) != expected:
            got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(
                f"noise_dist.sample(({x.shape[0]},)) must return [B, D] = {expected} for the state "
                f"{tuple(x.shape)} (column 0 is the log-density), got {got}"
            )
        self.noise = noise.to(dtype=x.dtype, device=x.device)

    def forward(self, x: Tensor) -> Tensor:
        """``[Δ, x]`` ``[B, 1 + D]`` -> ``[-tr(∂net/∂x), net(x)]`` ``[B, 1 + D]``.

        Raises:
            ValueError: a state that is not ``[B, 1 + D]`` with ``D >= 1``; a net output not shaped like ``x``;
                an estimator result that is not ``[B]``.
        """
        _check_state(x)
        tracked = torch.is_grad_enabled()
        with torch.enable_grad():
            z = x[:, 1:]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.net(z)
            if not isinstance(dz, Tensor) or dz.shape != z.shape:
                got = tuple(dz.shape) if isinstance(dz, Tensor) else type(dz).__name__
                raise ValueError(f"the CNF's net must map x {tuple(z.shape)} to a tensor of the same shape, got {got}")
            if self.noise_dist is not None and (self.noise is None or self.noise.shape[0] != x.shape[0]):
                self.before_odeint(x)
            if self.trace_estimator in _BUILT_IN:
                trace = self.trace_estimator(dz, z, noise=self.noise, create_graph=tracked)
            else:
                trace = self.trace_estimator(dz, z, noise=self.noise)
            if not isinstance(trace, Tensor) or trace.shape != (x.shape[0],):
                got = tuple(trace.shape) if isinstance(trace, Tensor) else type(trace).__name__
                raise ValueError(
                    f"the trace estimator must return one trace per sample, shape [{x.shape[0]}], got {got}"
                )
            # Column 0 enters the graph with weight 0, so its gradient is zero rather than missing.
            out = torch.cat([x[:, :1] * 0 - trace.unsqueeze(1), dz], 1)
        return out if tracked else out.detach()
