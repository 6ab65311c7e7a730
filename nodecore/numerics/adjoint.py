"""The adjoint method on nodecore's engine: gradients with memory flat in the number of solver steps.

The forward solve runs without a graph; the backward pass integrates the state, its adjoint ``a = dL/dx``
and the parameter-gradient integrals backwards in time (backsolve), with the same stepping loop.

* Output times whose incoming gradient is zero (a loss on ``trajectory[-1]`` only) do not split the
  backward solve, so the adaptive solver is not restarted at every point of ``t_span`` -- unless the forward
  stepped onto every point (``restart_at_every_time``, torchdyn's ``interpolator=None``): then the backward
  solve restarts at each one too, more evaluations for torchdyn's accuracy on a dense ``t_span``.
* With ``seminorm`` the error control looks at the state and its adjoint only, not at the parameter-gradient
  channels (Kidger, Chen & Lyons, "Hey, that's not an ODE", 2021).
* ``interpolated`` (torchdyn's ``interpolated_adjoint``): the forward solve keeps its dense output and the
  backward pass reads ``x(t)`` off it instead of integrating ``x`` backwards: no backward error in ``x`` and
  a smaller backward system, for memory that grows with the forward steps (their stages are kept). Solvers
  without dense output (the fixed-step ones) keep a cubic Hermite interpolant of each step instead (3rd order;
  torchdyn fits a cubic spline through the saved points).
* ``integral_loss(t, x)``: a running cost ``∫ l(t, x) dt`` whose gradient the backward pass adds
  (``da/dt = -a ∂f/∂x - ∂l/∂x``), without integrating the cost forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from nodecore._compile import compiling, outside_graph
from nodecore.numerics.control import PIController
from nodecore.numerics.integrate import integrate
from nodecore.numerics.solvers import RungeKutta, real_dtype
from nodecore.numerics.stats import StepCounts
from nodecore.numerics.tableaus import hermite_with_end_derivative

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
    interpolated: bool = False
    integral_loss: Callable[[Tensor, Tensor], Tensor] | None = None
    forward_solver: RungeKutta | None = None  # the forward's solver: whose interpolant the interpolated adjoint reads
    # Restart the backward solve at every output time, as torchdyn and torchdiffeq do, even where no
    # gradient comes in (the forward stepped onto every point: interpolator='step').
    restart_at_every_time: bool = False

    def __post_init__(self) -> None:
        if self.interpolated and self.forward_solver is None:
            raise ValueError("the interpolated adjoint needs forward_solver: the solver whose steps it interpolates")


class DenseTrajectory:
    """The forward solve's dense output as tensors, evaluated at a 0-dim time without a host sync.

    Args:
        steps: ``(t, h, y0, stages)`` of every accepted forward step, in order.
        solver: the solver whose interpolant they belong to: its dense output, or for a solver without one the
            cubic Hermite interpolant (``stages`` then ends with ``f(t + h, y1)``).
    """

    def __init__(self, steps: list[tuple[float, float, Tensor, Tensor]], solver: RungeKutta) -> None:
        like = steps[0][2]
        self.shape = like.shape
        self.direction = 1.0 if steps[0][1] > 0 else -1.0
        # Times as direction * t, increasing, for searchsorted; real even for a complex state.
        times = real_dtype(like.dtype)
        self.starts = torch.tensor([self.direction * t for t, *_ in steps], dtype=times, device=like.device)
        self.sizes = torch.tensor([h for _, h, *_ in steps], dtype=times, device=like.device)
        self.y0 = torch.stack([y.reshape(-1) for _, _, y, _ in steps])  # [M, N]
        self.stages = torch.stack([k for *_, k in steps])  # [M, S, N]
        self.dense = (solver.coefficients(like).dense if solver.has_dense_output  # [S, p]
                      else torch.tensor(hermite_with_end_derivative(solver.tableau.b), dtype=like.dtype,
                                        device=like.device))
        self.exponents = torch.arange(1, self.dense.shape[1] + 1, dtype=times, device=like.device)
        self.is_complex = like.is_complex()

    def __call__(self, t: Tensor) -> Tensor:
        """``x(t)``, shaped like the state."""
        i = (torch.searchsorted(self.starts, self.direction * t.reshape(1), right=True) - 1).clamp_(0, len(self.starts) - 1)
        h = self.sizes[i]
        theta = (t.reshape(1) - self.direction * self.starts[i]) / h
        powers = theta.pow(self.exponents)
        if self.is_complex:
            powers = powers.to(self.dense.dtype)
        weights = self.dense @ powers  # [S]
        return (self.y0[i[0]] + h * (weights @ self.stages[i[0]])).view(self.shape)


class _AugmentedDynamics:
    """d/dt of the flat backward state: ``[x, a, g]`` (backsolve) or ``[a, g]`` with ``x`` read off the forward
    dense output; ``dx = f``, ``da = -a ∂f/∂x - ∂l/∂x``, ``dg = -a ∂f/∂θ - ∂l/∂θ`` (``l`` the integral loss)."""

    def __init__(self, func: Field, params: tuple[Tensor, ...], state_shape: torch.Size, *,
                 integral_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
                 dense: DenseTrajectory | None = None) -> None:
        self.func = func
        self.params = params
        self.state_shape = state_shape
        self.n = state_shape.numel()
        self.integral_loss = integral_loss
        self.dense = dense

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        n = self.n
        if self.dense is None:
            x, a = z[:n].view(self.state_shape), z[n : 2 * n].view(self.state_shape)
        else:
            x, a = self.dense(t), z[:n].view(self.state_shape)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            dx = self.func(t, x)
            outputs, weights = [dx], [-a]
            if self.integral_loss is not None:
                loss = self.integral_loss(t, x)
                outputs.append(loss)
                weights.append(-torch.ones_like(loss))
            grads = torch.autograd.grad(outputs, (x, *self.params), weights, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, (x, *self.params))]
        parts = [g.reshape(-1) for g in grads]
        return torch.cat(parts if self.dense is not None else [dx.detach().reshape(-1), *parts])


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, solve: Callable[[Tensor, list | None], Tensor], func: Field, backward: BackwardSolve,
                times: list[float], x0: Tensor, *params: Tensor) -> Tensor:
        steps: list | None = [] if backward.interpolated else None
        with torch.no_grad():
            trajectory = solve(x0, steps)
        ctx.func, ctx.backward_solve, ctx.times = func, backward, times
        ctx.dense = DenseTrajectory(steps, backward.forward_solver) if steps else None
        ctx.save_for_backward(trajectory, *params)
        return trajectory

    @staticmethod
    def backward(ctx: Any, grad_trajectory: Tensor) -> tuple[Tensor | None, ...]:
        trajectory, *params = ctx.saved_tensors
        opts: BackwardSolve = ctx.backward_solve
        times: list[float] = ctx.times
        dynamics = _AugmentedDynamics(ctx.func, tuple(params), trajectory.shape[1:],
                                      integral_loss=opts.integral_loss, dense=ctx.dense)
        n = dynamics.n
        offset = 0 if ctx.dense is not None else n  # where the adjoint starts in the backward state
        adjoint = grad_trajectory[-1].reshape(-1)
        param_grads = torch.zeros(sum(p.numel() for p in params), dtype=trajectory.dtype, device=trajectory.device)
        end = len(times) - 1
        # Fixed steps retrace the forward's grid (the whole sub-grid); adaptive steps need only its ends.
        constant = not opts.solver.adaptive or opts.step_size is not None
        with torch.no_grad():
            for start in range(end - 1, -1, -1):
                incoming = grad_trajectory[start]
                if start > 0 and not opts.restart_at_every_time and not incoming.any():
                    continue
                parts = [adjoint, param_grads] if ctx.dense is not None else [trajectory[end].reshape(-1), adjoint,
                                                                              param_grads]
                z = torch.cat(parts)
                span = times[start : end + 1][::-1] if constant else [times[end], times[start]]
                z = integrate(
                    dynamics, z, span, opts.solver,
                    atol=opts.atol, rtol=opts.rtol, controller=opts.controller, counts=opts.counts,
                    max_steps=opts.max_steps, step_size=opts.step_size,
                    error_size=offset + n if opts.seminorm else None, label="backward (adjoint)",
                )[-1]
                adjoint = z[offset : offset + n] + incoming.reshape(-1)
                param_grads = z[offset + n :]
                end = start
        # A real parameter acting on a complex state gets the real part (torch's convention for real leaves).
        grads = [g.view_as(p) if p.is_complex() or not g.is_complex() else g.real.reshape(p.shape)
                 for g, p in zip(param_grads.split([p.numel() for p in params]), params)]
        return (None, None, None, None, adjoint.view(trajectory.shape[1:]), *grads)


def odeint_adjoint(
    func: Field,
    x0: Tensor,
    times: list[float],
    *,
    solve: Callable[[Tensor, list | None], Tensor],
    params: tuple[Tensor, ...],
    backward: BackwardSolve,
) -> Tensor:
    """Run ``solve(x0, dense_steps) -> trajectory [T, *S]`` and differentiate it by the adjoint method.

    Args:
        func: the field ``func(t, x)`` the forward solve integrates.
        x0: initial state ``[*S]``.
        times: the ``T`` output times, as floats (gradients with respect to them are not computed).
        solve: the forward solve; with ``backward.interpolated`` it must append its accepted steps to
            ``dense_steps`` (``integrate(..., dense_steps=...)``).
        params: the tensors to return gradients for (those not requiring grad are skipped).
        backward: the backward solve's settings.
    """
    params = tuple(p for p in params if p.requires_grad)
    if compiling():  # Dynamo would trace the backward solve into the graph, which it cannot; it runs as in eager
        return _adjoint_outside_graph(solve, func, backward, times, x0, *params)
    return _AdjointSolve.apply(solve, func, backward, times, x0, *params)


@outside_graph
def _adjoint_outside_graph(*args: Any) -> Tensor:
    return _AdjointSolve.apply(*args)
