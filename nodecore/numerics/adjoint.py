"""The adjoint method on nodecore's engine: gradients with memory flat in the number of solver steps.

The forward solve runs without a graph; the backward pass integrates the state, its adjoint ``a = dL/dx``
and the parameter-gradient integrals backwards in time (backsolve), with the same stepping loop.

* Output times whose incoming gradient is zero (a loss on ``trajectory[-1]`` only) do not split the
  backward solve, so the adaptive solver is not restarted at every point of ``t_span``.
* With ``seminorm`` the error control looks at the state and its adjoint only, not at the parameter-gradient
  channels (Kidger, Chen & Lyons, "Hey, that's not an ODE", 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from nodecore.numerics.control import PIController
from nodecore.numerics.integrate import integrate
from nodecore.numerics.solvers import RungeKutta
from nodecore.numerics.stats import StepCounts

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class BackwardSolve:
    """How the adjoint's backward solve runs: its solver, tolerances, control and counters."""

    solver: RungeKutta
    atol: float
    rtol: float
    controller: PIController
    counts: StepCounts
    max_steps: int
    step_size: float | None = None
    seminorm: bool = True


class _AugmentedDynamics:
    """d/dt of the flat state ``[x, a, g]``: ``dx = f``, ``da = -a ∂f/∂x``, ``dg = -a ∂f/∂θ``."""

    def __init__(self, func: Field, params: tuple[Tensor, ...], state_shape: torch.Size) -> None:
        self.func = func
        self.params = params
        self.state_shape = state_shape
        self.n = state_shape.numel()

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        n = self.n
        x = z[:n].view(self.state_shape)
        a = z[n : 2 * n].view(self.state_shape)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            dx = self.func(t, x)
            grads = torch.autograd.grad(dx, (x, *self.params), -a, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, (x, *self.params))]
        return torch.cat([dx.detach().reshape(-1), *(g.reshape(-1) for g in grads)])


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, solve: Callable[[Tensor], Tensor], func: Field, backward: BackwardSolve,
                times: list[float], x0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            trajectory = solve(x0)
        ctx.func, ctx.backward_solve, ctx.times = func, backward, times
        ctx.save_for_backward(trajectory, *params)
        return trajectory

    @staticmethod
    def backward(ctx: Any, grad_trajectory: Tensor) -> tuple[Tensor | None, ...]:
        trajectory, *params = ctx.saved_tensors
        opts: BackwardSolve = ctx.backward_solve
        times: list[float] = ctx.times
        dynamics = _AugmentedDynamics(ctx.func, tuple(params), trajectory.shape[1:])
        n = dynamics.n
        adjoint = grad_trajectory[-1].reshape(-1)
        param_grads = torch.zeros(sum(p.numel() for p in params), dtype=trajectory.dtype, device=trajectory.device)
        end = len(times) - 1
        with torch.no_grad():
            for start in range(end - 1, -1, -1):
                incoming = grad_trajectory[start]
                if start > 0 and not incoming.any():
                    continue
                z = torch.cat([trajectory[end].reshape(-1), adjoint, param_grads])
                # The whole sub-grid backwards: fixed-step solvers step on it as the forward did.
                z = integrate(
                    dynamics, z, times[start : end + 1][::-1], opts.solver,
                    atol=opts.atol, rtol=opts.rtol, controller=opts.controller, counts=opts.counts,
                    max_steps=opts.max_steps, step_size=opts.step_size,
                    error_size=2 * n if opts.seminorm else None, label="backward (adjoint)",
                )[-1]
                adjoint = z[n : 2 * n] + incoming.reshape(-1)
                param_grads = z[2 * n :]
                end = start
        grads, offset = [], 0
        for p in params:
            grads.append(param_grads[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return (None, None, None, None, adjoint.view(trajectory.shape[1:]), *grads)


def odeint_adjoint(
    func: Field,
    x0: Tensor,
    times: list[float],
    *,
    solve: Callable[[Tensor], Tensor],
    params: tuple[Tensor, ...],
    backward: BackwardSolve,
) -> Tensor:
    """Run ``solve(x0) -> trajectory [T, *S]`` and differentiate it by the adjoint method.

    Args:
        func: the field ``func(t, x)`` the forward solve integrates.
        x0: initial state ``[*S]``.
        times: the ``T`` output times, as floats (gradients with respect to them are not computed).
        solve: the forward solve.
        params: the tensors to return gradients for (those not requiring grad are skipped).
        backward: the backward solve's settings.
    """
    params = tuple(p for p in params if p.requires_grad)
    return _AdjointSolve.apply(solve, func, backward, times, x0, *params)
