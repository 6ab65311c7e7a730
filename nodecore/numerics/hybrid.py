"""Hybrid (event-driven) systems: flow by an ODE solver, jump when a callback's event fires (torchdyn's API).

A hybrid system flows by ``dx/dt = f(t, x)`` until some callback's ``check_event(t, x)`` is true, then its
``jump_map(t, x)`` replaces the state, and the flow resumes; ``t_span`` bounds the time and ``j_span`` the
number of jumps (the hybrid time domain of Goebel, Sanfelice & Teel, as in the HyEQ toolbox).

How an event is found: after every accepted step the callbacks are checked at its end. If one fires, the
event time is bracketed by bisection inside the step, re-stepping from the step's start, until the bracket
is at most ``event_tol`` wide; the jump happens at the bracket's left end, the last time found before the
event, with the state there. Events are level-triggered: a state that is still in a callback's event set
after a jump jumps again at once (each jump counts towards ``j_span``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Exponential

from nodecore._checks import choice, integer, positive
from nodecore.errors import StepSizeUnderflowError, TooManyStepsError
from nodecore.numerics.control import IntegralController, PIController, initial_step
from nodecore.numerics.integrate import own_error_ratio
from nodecore.numerics.registry import solver_object
from nodecore.numerics.solvers import RungeKutta, time_tensor
from nodecore.numerics.spans import TSpan, check_t_span
from nodecore.numerics.stats import StepCounts

Field = Callable[[Tensor, Tensor], Tensor]
PRIORITIES: tuple[str, ...] = ("jump", "flow")
DEFAULT_MAX_STEPS = 10_000
_EPS = 2.0**-52


class Callback(Protocol):
    """What :func:`odeint_hybrid` needs of a callback."""

    def check_event(self, t: Tensor, x: Tensor) -> bool | Tensor: ...

    def jump_map(self, t: Tensor, x: Tensor) -> Tensor: ...


class EventCallback(nn.Module):
    """Base class of a hybrid system's events: subclass it and define :meth:`check_event` and :meth:`jump_map`.

    An ``nn.Module`` (as torchdyn's), so that a jump map may hold learnable parameters.
    """

    def __init__(self) -> None:
        super().__init__()

    def __attrs_post_init__(self) -> None:
        """Lets a subclass decorated with ``attr.s`` (as torchdyn's callbacks are) initialise the module."""
        nn.Module.__init__(self)

    def check_event(self, t: Tensor, x: Tensor) -> bool | Tensor:
        """Whether the state ``x`` at time ``t`` (0-dim) is in the event set: a bool or a 1-element tensor."""
        raise NotImplementedError(f"{type(self).__name__} must define check_event(t, x)")

    def jump_map(self, t: Tensor, x: Tensor) -> Tensor:
        """The state right after the event, shaped like ``x``."""
        raise NotImplementedError(f"{type(self).__name__} must define jump_map(t, x)")


class StochasticEventCallback(EventCallback):
    """Base class of events that fire at random times: :meth:`initialize` draws one ``Exp(1)`` threshold per sample.

    The usual construction (e.g. a point process): augment the state with an integrated intensity and let
    :meth:`check_event` fire when it exceeds the threshold ``s``; the jump map draws a new one.

    Attributes:
        expdist: the ``Exponential(1)`` distribution thresholds are drawn from.
        s: ``[B]`` thresholds, in ``x0``'s dtype and device (after :meth:`initialize`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.expdist = Exponential(1.0)
        self.s: Tensor | None = None

    def __attrs_post_init__(self) -> None:
        StochasticEventCallback.__init__(self)

    def initialize(self, x0: Tensor) -> None:
        """Draw the thresholds ``s [B]`` for the batch ``x0 [B, ...]``."""
        self.s = self.expdist.sample(x0.shape[:1]).to(dtype=x0.dtype, device=x0.device)


class _Stepper:
    """One step of the solver from ``(t, y)`` of size ``h``: ``(y1, f(t + h, y1) or None, error ratio or None)``."""

    def __init__(self, f: Field, solver: RungeKutta, atol: float, rtol: float, error_size: int | None,
                 counts: StepCounts) -> None:
        self.f, self.solver, self.atol, self.rtol = f, solver, atol, rtol
        self.error_size, self.counts = error_size, counts
        # A hypersolver or a step of your own goes through its step; an adaptive one of your own (stepping_class
        # 'adaptive') is error-controlled from the x_err its step returns.
        self.overridden = type(solver).step is not RungeKutta.step
        self.adaptive = solver.adaptive

    def counted(self, t: Tensor, x: Tensor) -> Tensor:
        self.counts.nfe += 1
        return self.f(t, x)

    def __call__(self, y: Tensor, t: float, h: float, k0: Tensor | None) -> tuple[Tensor, Tensor | None, float | None]:
        if self.overridden:
            result = self.solver.step(self.counted, y, time_tensor(t, y), h, *(() if k0 is None else (k0,)))
            if not self.adaptive:
                return result[1], None, None
            return result[1], result[0], own_error_ratio(self.solver, result, y, self.atol, self.rtol, self.error_size)
        attempt = self.solver.attempt(self.f, y, t, h, k0, self.counts, need_error=self.adaptive, atol=self.atol,
                                      rtol=self.rtol, error_size=self.error_size)
        return attempt.y1, attempt.last, attempt.error_ratio if self.adaptive else None


def _check_callbacks(callbacks: Sequence[Callback]) -> list[Callback]:
    if isinstance(callbacks, (EventCallback, str)) or not isinstance(callbacks, (list, tuple, nn.ModuleList)):
        raise TypeError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}; "
                         "wrap a single one as [callback]")
    for i, cb in enumerate(callbacks):
        missing = [name for name in ("check_event", "jump_map") if not callable(getattr(cb, name, None))]
        if missing:
            raise ValueError(f"callbacks[{i}] ({type(cb).__name__}) has no {' or '.join(missing)}(t, x); "
                             "subclass EventCallback and define both")
    return list(callbacks)


def _fired(callbacks: list[Callback], t: float, y: Tensor) -> list[int]:
    """The indices of the callbacks whose event set holds ``y`` at ``t``."""
    tt = time_tensor(t, y)
    found = []
    for i, cb in enumerate(callbacks):
        flag = cb.check_event(tt, y)
        if isinstance(flag, Tensor):
            if flag.numel() != 1:
                raise ValueError(
                    f"callbacks[{i}].check_event must return a bool or a 1-element tensor, got shape "
                    f"{tuple(flag.shape)}; reduce a batch with .any() (or .all())")
            flag = bool(flag)
        if flag:
            found.append(i)
    return found


def _jump(callbacks: list[Callback], i: int, t: float, y: Tensor) -> Tensor:
    new = callbacks[i].jump_map(time_tensor(t, y), y)
    if not isinstance(new, Tensor) or new.shape != y.shape:
        got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
        raise ValueError(f"callbacks[{i}].jump_map must return a tensor shaped like the state {tuple(y.shape)}, "
                         f"got {got}")
    return new


def _locate(step: _Stepper, callbacks: list[Callback], y: Tensor, t: float, h: float, k0: Tensor | None,
            fired: list[int], event_tol: float) -> tuple[float, Tensor, list[int]]:
    """Bisect the step ``[t, t + h]`` (events at its end) down to ``event_tol``.

    Returns ``(tau, y_tau, fired)``: the bracket's left end ``tau`` (an offset from ``t``), the state there
    (without a graph) and the callbacks that fire at the bracket's right end.
    """
    lo, hi, y_lo = 0.0, h, y
    with torch.no_grad():
        while hi - lo > event_tol:
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:  # the bracket is down to the floats' resolution
                break
            y_mid = step(y, t, mid, k0)[0]
            at_mid = _fired(callbacks, t + mid, y_mid)
            if at_mid:
                hi, fired = mid, at_mid
            else:
                lo, y_lo = mid, y_mid
    return lo, y_lo, fired


def odeint_hybrid(
    f: Field,
    x: Tensor,
    t_span: TSpan,
    j_span: int,
    solver: str | RungeKutta,
    callbacks: Sequence[Callback],
    atol: float = 1e-3,
    rtol: float = 1e-3,
    event_tol: float = 1e-4,
    priority: str = "jump",
    seminorm: tuple[bool, int | None] = (False, None),
    return_all_eval: bool = False,
    *,
    controller: PIController | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    return_stats: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, StepCounts]:
    """Solve a hybrid system: flow by ``dx/dt = f(t, x)``, jump by the first callback whose event fires.

    torchdyn's signature (``return_all_eval`` and the keyword-only options are nodecore's). Adaptive solvers
    step onto every point of ``t_span`` under error control (an adaptive solver of your own from the ``x_err`` its
    step returns); fixed-step solvers take one step per interval (cut at events). Differentiable by autograd
    through the flow and the jump maps, with each event's time held fixed (its dependence on the parameters is not
    differentiated).

    Args:
        f: the flow field, ``f(t, x)`` with ``t`` a 0-dim tensor.
        x: the initial state, any shape.
        t_span: ``[T]`` strictly increasing times.
        j_span: the most jumps; the solve stops at the jump that reaches it (0: no jumps, no flow).
        solver: a registered solver name or object.
        callbacks: objects with ``check_event(t, x) -> bool`` (a bool or 1-element tensor; reduce a batch with
            ``.any()``) and ``jump_map(t, x) -> x_new``; subclasses of :class:`EventCallback`. When several fire
            at once the first in the list jumps.
        atol, rtol: tolerances of adaptive solvers.
        event_tol: the width in time to which each event is localised.
        priority: ``'jump'``: a state in an event set at ``t_span[0]`` jumps before it flows; ``'flow'``: it
            flows first.
        seminorm: ``(True, n)`` measures the error on the first ``n`` entries of the flat state only.
        return_all_eval: also return the state at every accepted step.
        controller: step-size control (default :class:`~nodecore.numerics.control.IntegralController`).
        max_steps: raise :class:`~nodecore.errors.TooManyStepsError` beyond this many step attempts.
        return_stats: also return the :class:`~nodecore.numerics.stats.StepCounts`.

    Returns:
        ``(t_eval, solution)`` in time order: every point of ``t_span`` reached and, for each jump, two rows at
        its time, the state before and after (at a jump at ``t_span[0]`` the first row is the one before).
        ``t_eval [N]``, ``solution [N, *x.shape]``; the rows end at the last jump when ``j_span`` stops the solve.

    Raises:
        ValueError: a bad ``t_span`` (or a decreasing one), ``j_span``, ``event_tol``, priority, solver,
            tolerance or callback, naming the value and the valid ones.
        TypeError: ``x`` is not a floating-point tensor, or ``callbacks`` not a list.
        TooManyStepsError, StepSizeUnderflowError: the solve could not finish.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    j_span = integer("j_span", j_span, minimum=0)
    callbacks = _check_callbacks(callbacks)
    atol, rtol, event_tol = positive("atol", atol), positive("rtol", rtol), positive("event_tol", event_tol)
    priority = choice("priority", priority, PRIORITIES, plural="priorities")
    max_steps = integer("max_steps", max_steps, minimum=1)
    solver = solver_object(solver)
    t_span = check_t_span(t_span, x)
    times = t_span.tolist()
    if times[-1] < times[0]:
        raise ValueError(f"odeint_hybrid integrates forward in time: t_span must be increasing, got {times}")
    error_size = int(seminorm[1]) if seminorm[0] and seminorm[1] is not None else None
    controller = controller or IntegralController()
    counts = StepCounts()
    step = _Stepper(f, solver, atol, rtol, error_size, counts)

    t, y, jumps = times[0], x, 0
    out_t, out = [t], [x]
    if priority == "jump" and j_span > 0:
        fired = _fired(callbacks, t, y)
        if fired:
            y, jumps = _jump(callbacks, fired[0], t, y), 1
            out_t.append(t)
            out.append(y)
    k0, h = None, math.inf
    if step.adaptive and jumps < j_span:
        k0 = f(time_tensor(t, x), y)
        h = initial_step(f, t, y, k0, solver.order, atol, rtol, 1.0, error_size)
        counts.nfe += 2
        h = min(max(h, controller.min_step), controller.max_step)
    exponent, previous_ratio = solver.error_exponent, 1.0
    j = 1
    while j < len(times) and jumps < j_span:
        remaining = times[j] - t
        landing = not step.adaptive or h - remaining >= -4 * _EPS * max(abs(t), abs(times[j]))
        h_try = remaining if landing else h
        counts.attempts += 1
        if counts.attempts > max_steps:
            raise TooManyStepsError(
                f"odeint_hybrid exceeded max_steps={max_steps} at t={t:.6g} (step size {h_try:.3g}, {jumps} jumps): "
                "events may accumulate (Zeno behaviour; lower j_span) or the tolerances are too tight")
        y1, last, ratio = step(y, t, h_try, k0)
        if step.adaptive:
            accepted = controller.accepts(h_try, ratio)
            h = controller.next_step(h_try, ratio, previous_ratio, exponent, accepted)
            if not h > 16 * _EPS * max(abs(t), 1e-3 * (times[-1] - times[0])):
                raise StepSizeUnderflowError(
                    f"odeint_hybrid: the adaptive step size underflowed to {h:.3g} at t={t:.6g}; check the field "
                    "and inputs, loosen atol/rtol, or use a fixed-step solver")
            if not accepted:
                counts.rejected += 1
                continue
            previous_ratio = ratio
        t1 = times[j] if landing else t + h_try
        fired = _fired(callbacks, t1, y1)
        if fired:
            tau, y_pre, fired = _locate(step, callbacks, y, t, h_try, k0, fired, event_tol)
            if tau == 0.0:
                y_pre = y
            elif torch.is_grad_enabled():
                y_pre = step(y, t, tau, k0)[0]  # the same step again, now with a graph
            t = t + tau
            y = _jump(callbacks, fired[0], t, y_pre)
            out_t += [t, t]
            out += [y_pre, y]
            jumps, k0 = jumps + 1, None
            continue
        t, y, k0 = t1, y1, last
        if landing:
            j += 1
        if landing or return_all_eval:
            out_t.append(t)
            out.append(y)
    t_eval = torch.tensor(out_t, dtype=t_span.dtype, device=t_span.device)
    solution = torch.stack(out)
    return (t_eval, solution, counts) if return_stats else (t_eval, solution)
