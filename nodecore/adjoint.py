"""The adjoint method on top of plain ``torchdiffeq.odeint`` (``NeuralODE(..., backend='torchdiffeq')``).

nodecore's own engine has its own, :mod:`nodecore.numerics.adjoint`; this one keeps the torchdiffeq backend's
memory O(1) in the number of solver steps.

Compared with ``torchdiffeq.odeint_adjoint`` it makes two choices that save backward work at the same
tolerances:

* Output depths whose incoming gradient is zero (the usual case: a loss on ``trajectory[-1]`` only) do
  not split the backward solve, so the adaptive solver is not restarted, with a fresh initial-step
  search, at every point of ``t_span``.
* With ``seminorm`` the step-size control looks at the state and its adjoint only, not at the
  parameter-gradient integrals (Kidger, Chen & Lyons, "Hey, that's not an ODE", 2021).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from nodecore.errors import translate_solver_assertion


class AdjointFunc(Protocol):
    """What the adjoint needs from the field it differentiates (``NeuralODE``'s solve function)."""

    def __call__(self, t: Tensor, x: Tensor) -> Tensor: ...

    def callback_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None: ...


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt()


class _AugmentedDynamics:
    """d/dt of the flat state ``[x, a, g]`` where ``a = dL/dx`` and ``g`` accumulates ``dL/dparams``."""

    def __init__(self, func: AdjointFunc, params: tuple[Tensor, ...], state_shape: torch.Size, *, seminorm: bool):
        self.func = func
        self.params = params
        self.state_shape = state_shape
        self.n = state_shape.numel()
        self.seminorm = seminorm
        self.callback_step = func.callback_step_adjoint
        reject = getattr(func, "callback_reject_step_adjoint", None)
        if reject is not None:
            self.callback_reject_step = reject

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        x = z[: self.n].view(self.state_shape)
        a = z[self.n : 2 * self.n].view(self.state_shape)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            dx = self.func(t, x)
            grads = torch.autograd.grad(dx, (x, *self.params), -a, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, (x, *self.params))]
        return torch.cat([dx.detach().reshape(-1), *(g.reshape(-1) for g in grads)])

    def norm(self, z: Tensor) -> Tensor:
        """Step-size-control norm: max RMS over state, adjoint and (unless seminorm) parameter gradients."""
        n = self.n
        norms = [_rms(z[:n]), _rms(z[n : 2 * n])]
        if not self.seminorm and z.numel() > 2 * n:
            norms.append(_rms(z[2 * n :]))
        return torch.stack(norms).max()


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, solve: Callable[[Tensor, Tensor], Tensor], backward: dict, x0: Tensor, t_span: Tensor,
                *params: Tensor) -> Tensor:
        with torch.no_grad():
            trajectory = solve(x0, t_span)
        ctx.backward_options = backward
        ctx.save_for_backward(t_span, trajectory, *params)
        return trajectory

    @staticmethod
    def backward(ctx: Any, grad_trajectory: Tensor) -> tuple[Tensor | None, ...]:
        t_span, trajectory, *params = ctx.saved_tensors
        opts = ctx.backward_options
        dynamics = _AugmentedDynamics(opts["func"], tuple(params), trajectory.shape[1:], seminorm=opts["seminorm"])
        n = dynamics.n
        options = dict(opts["options"], norm=dynamics.norm) if opts["adaptive"] else dict(opts["options"])

        adjoint = grad_trajectory[-1].reshape(-1)
        param_grads = torch.zeros(sum(p.numel() for p in params), dtype=trajectory.dtype, device=trajectory.device)
        end = len(t_span) - 1
        # Integrate backwards between the depths where the loss injects gradient; skip the rest.
        for start in range(end - 1, -1, -1):
            incoming = grad_trajectory[start]
            if start > 0 and not incoming.any():
                continue
            z = torch.cat([trajectory[end].reshape(-1), adjoint, param_grads])
            try:
                # The whole sub-grid, not just its ends: fixed-step solvers step on it as the forward did,
                # adaptive ones only interpolate at the inner points.
                z = odeint(
                    dynamics, z, t_span[start : end + 1].flip(0),
                    rtol=opts["rtol"], atol=opts["atol"], method=opts["method"], options=options,
                )[-1]
            except AssertionError as err:  # torchdiffeq signals solve failures with assertions
                raise translate_solver_assertion(err) from err
            adjoint = z[n : 2 * n] + incoming.reshape(-1)
            param_grads = z[2 * n :]
            end = start

        grad_x0 = adjoint.view(trajectory.shape[1:])
        grads_params, offset = [], 0
        for p in params:
            grads_params.append(param_grads[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return (None, None, grad_x0, None, *grads_params)


def odeint_adjoint_flat(
    func: AdjointFunc,
    x0: Tensor,
    t_span: Tensor,
    *,
    solve: Callable[[Tensor, Tensor], Tensor],
    params: tuple[Tensor, ...],
    method: str,
    adaptive: bool,
    options: dict,
    rtol: float,
    atol: float,
    seminorm: bool,
) -> Tensor:
    """Solve with ``solve(x0, t_span)`` and differentiate by the adjoint method.

    Args:
        func: the solved field ``func(t, x)``, offering ``callback_step_adjoint`` (and optionally
            ``callback_reject_step_adjoint``) to count backward steps.
        x0: initial state ``[*S]``.
        t_span: ``[T]`` depths; gradients with respect to them are not computed.
        solve: the forward solve, returning ``[T, *S]``.
        params: the parameters to return gradients for.
        method, adaptive, options, rtol, atol: the torchdiffeq backward solver, its kind, options, tolerances.
        seminorm: leave parameter-gradient channels out of the backward error control.

    Returns:
        ``trajectory [T, *S]`` whose backward pass runs the adjoint solve.
    """
    params = tuple(p for p in params if p.requires_grad)
    backward = dict(func=func, method=method, adaptive=adaptive, options=options, rtol=rtol, atol=atol,
                    seminorm=seminorm)
    return _AdjointSolve.apply(solve, backward, x0, t_span, *params)
