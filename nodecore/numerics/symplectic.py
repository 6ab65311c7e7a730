"""The asynchronous leapfrog (ALF) and ``odeint_symplectic``: torchdyn's reversible solver on nodecore's engine.

ALF (Zhuang et al., "MALI: a memory efficient and reverse accurate integrator for Neural ODEs", ICLR 2021)
solves a first-order system ``dx/dt = f(t, x)`` on an augmented state ``[x, v]``, ``v`` an estimate of
``f`` carried along (start it at ``v0 = f(t0, x0)``). One step of size ``h`` from ``(t, x, v)``::

    x_half = x + h/2 v
    v_new  = 2 f(t + h/2, x_half) - v
    x_new  = x_half + h/2 v_new

It costs one field evaluation, is second order in ``x``, and is exactly invertible: a step of ``-h`` from
``(t + h, x_new, v_new)`` gives back ``(x, v)``. On linear oscillations its growth factors have modulus one
for ``|ωh| < 1``, so an oscillator's energy stays within ``O(h²)`` of its start for all time, where an explicit
Runge–Kutta method of the same order drifts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nodecore._checks import choice, integer, positive
from nodecore.errors import StepSizeUnderflowError, TooManyStepsError
from nodecore.numerics.control import IntegralController, initial_step
from nodecore.numerics.solvers import time_tensor
from nodecore.numerics.spans import TSpan, check_t_span, save_at_indices
from nodecore.numerics.stats import StepCounts

Field = Callable[[Tensor, Tensor], Tensor]
STEPPING_CLASSES: tuple[str, ...] = ("fixed", "adaptive")
DEFAULT_MAX_STEPS = 10_000
_EPS = 2.0**-52


class AsynchronousLeapfrog(nn.Module):
    """The asynchronous leapfrog: a reversible, second-order, one-evaluation step on ``[x, v]``.

    Same constructor as torchdyn's. The state is split in two equal halves along ``channel_index``: the
    system's state ``x`` and the velocity estimate ``v``.

    Args:
        channel_index: the dimension that holds ``[x, v]`` (``-1``: ``[..., 2n]``; ``1`` for ``[B, 2C, H, W]``).
        stepping_class: ``'fixed'`` (one step per interval of ``t_span``) or ``'adaptive'`` (step-size control
            from a step-doubling estimate of the error in ``x``).
        dtype: accepted for torchdyn compatibility; the computation follows the state's dtype.

    Attributes:
        order: 2, the global order in ``x``.
        const: the factor of torchdyn's update ``v_new = 2 const (f - v) + v`` (1: ALF).
        x_shape: the size of ``x`` along ``channel_index``, set by :func:`odeint_symplectic` (torchdyn's).

    Raises:
        ValueError: an unknown ``stepping_class`` (the message lists the valid ones) or a non-integer index.
    """

    order: int = 2

    def __init__(self, channel_index: int = -1, stepping_class: str = "fixed", dtype: torch.dtype = torch.float32
                 ) -> None:
        super().__init__()
        self.channel_index = integer("channel_index", channel_index)
        self.stepping_class = choice("stepping_class", stepping_class, STEPPING_CLASSES, plural="stepping classes")
        self.dtype = dtype
        self.const = 1.0
        self.x_shape: int | None = None

    @property
    def adaptive(self) -> bool:
        return self.stepping_class == "adaptive"

    def split(self, xv: Tensor) -> tuple[Tensor, Tensor]:
        """``[x, v]`` -> ``(x, v)``, halves along ``channel_index``.

        Raises:
            ValueError: the state has no such dimension, or an odd size along it.
        """
        if not -xv.ndim <= self.channel_index < xv.ndim:
            raise ValueError(f"channel_index={self.channel_index} is out of range for a state of shape "
                             f"{tuple(xv.shape)}")
        size = xv.shape[self.channel_index]
        if size % 2:
            raise ValueError(
                f"the asynchronous leapfrog needs a state [x, v] of even size along channel_index="
                f"{self.channel_index}, got shape {tuple(xv.shape)}; append v0 = f(t0, x0) to x0"
            )
        x, v = xv.split(size // 2, dim=self.channel_index)
        return x, v

    def _leap(self, f: Field, x: Tensor, v: Tensor, t: Tensor, h: float) -> tuple[Tensor, Tensor]:
        x_half = x + 0.5 * h * v
        f_half = f(t + 0.5 * h, x_half)
        v_new = (2.0 * self.const) * (f_half - v) + v
        return x_half + 0.5 * h * v_new, v_new

    def step(self, f: Field, xv: Tensor, t: Tensor | float, dt: Tensor | float, k1: Tensor | None = None,
             args: object = None) -> tuple[None, Tensor, Tensor | None]:
        """One step of size ``dt`` from ``(t, [x, v])``; torchdyn's ``(None, xv_new, xv_err)``.

        Fixed stepping: one leap (one evaluation of ``f``), ``xv_err`` None. Adaptive stepping: two leaps of
        ``dt/2`` (three evaluations with the single leap the estimate needs), and ``xv_err`` their
        Richardson error estimate ``(two_halves - one_leap) / 3`` in ``x``, zero in ``v``. ``k1`` and ``args``
        are accepted for torchdyn compatibility and not used.
        """
        t = torch.as_tensor(t, dtype=xv.dtype, device=xv.device) if isinstance(t, Tensor) else time_tensor(t, xv)
        h = float(dt)
        x, v = self.split(xv)
        if not self.adaptive:
            x1, v1 = self._leap(f, x, v, t, h)
            return None, torch.cat([x1, v1], self.channel_index), None
        x_coarse, _ = self._leap(f, x, v, t, h)
        x_mid, v_mid = self._leap(f, x, v, t, 0.5 * h)
        x1, v1 = self._leap(f, x_mid, v_mid, t + 0.5 * h, 0.5 * h)
        err = (x1 - x_coarse) / 3.0
        return None, torch.cat([x1, v1], self.channel_index), torch.cat([err, torch.zeros_like(v1)],
                                                                        self.channel_index)

    def extra_repr(self) -> str:
        return f"channel_index={self.channel_index}, stepping_class={self.stepping_class!r}"


#: The symplectic solvers :func:`odeint_symplectic` takes by name (torchdyn's spellings).
SYMPLECTIC_SOLVERS: dict[str, type[AsynchronousLeapfrog]] = {
    "alf": AsynchronousLeapfrog, "AsynchronousLeapfrog": AsynchronousLeapfrog,
}


def _field_order(f: Field) -> int:
    order = getattr(f, "order", 1)
    if order != 1:
        raise ValueError(
            f"odeint_symplectic's asynchronous leapfrog takes a first-order field dx/dt = f(t, x), got one with "
            f"order={order!r}; write a second-order system q'' = a(q) as x = [q, p] with f = [p, a(q)]"
        )
    return 1


def odeint_symplectic(
    f: Field,
    x: Tensor,
    t_span: TSpan,
    solver: str | AsynchronousLeapfrog,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    verbose: bool = False,
    return_all_eval: bool = False,
    save_at: TSpan = (),
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    return_stats: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, StepCounts]:
    """Solve ``dx/dt = f(t, x)`` with a symplectic (reversible) solver on the augmented state ``[x, v]``.

    torchdyn's signature; ``max_steps`` and ``return_stats`` are nodecore's. Differentiable by autograd.

    Args:
        f: the first-order field on ``x`` (half of the state); an ``order`` attribute, if any, must be 1.
        x: the augmented state ``[*, 2n, *]``: ``x0`` and ``v0`` (usually ``f(t0, x0)``) concatenated along the
            solver's ``channel_index``.
        t_span: ``[T]`` strictly monotonic times (decreasing: a backward solve with negative steps).
        solver: ``'alf'`` / ``'AsynchronousLeapfrog'`` or an :class:`AsynchronousLeapfrog`.
        atol, rtol: tolerances of adaptive stepping (ignored by fixed stepping), measured on ``x`` only.
        verbose: accepted for torchdyn compatibility.
        return_all_eval: adaptive stepping: return every accepted step (``t_eval`` lists their times).
        save_at: points of ``t_span`` to return (all when empty).
        max_steps: raise :class:`~nodecore.errors.TooManyStepsError` beyond this many step attempts.
        return_stats: also return the :class:`~nodecore.numerics.stats.StepCounts`.

    Returns:
        ``(t_eval, solution)``, ``solution [len(t_eval), *x.shape]``.

    Raises:
        ValueError: a bad solver name, field order, state shape, ``t_span``, tolerance or ``save_at``.
        TypeError: ``x`` is not a floating-point tensor, or ``solver`` neither a name nor a solver.
        TooManyStepsError, StepSizeUnderflowError: an adaptive solve could not finish.
    """
    if isinstance(solver, str):
        solver = SYMPLECTIC_SOLVERS[choice("symplectic solver", solver, tuple(SYMPLECTIC_SOLVERS))]()
    elif not isinstance(solver, AsynchronousLeapfrog):
        raise TypeError(f"solver must be one of {', '.join(SYMPLECTIC_SOLVERS)} or an AsynchronousLeapfrog, "
                         f"got {type(solver).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    _field_order(f)
    atol, rtol = positive("atol", atol), positive("rtol", rtol)
    max_steps = integer("max_steps", max_steps, minimum=1)
    x_half, _ = solver.split(x)
    solver.x_shape = x_half.shape[solver.channel_index]
    t_span = check_t_span(t_span, x)
    keep = save_at_indices(save_at, t_span)
    times = t_span.tolist()
    counts = StepCounts()
    if solver.adaptive:
        t_eval, states = _adaptive(f, x, times, solver, atol, rtol, counts, max_steps, return_all_eval)
    else:
        t_eval, states = _fixed(f, x, times, solver, counts, max_steps)
    solution = torch.stack(states)
    if solver.adaptive and return_all_eval:
        t_out = torch.tensor(t_eval, dtype=t_span.dtype, device=t_span.device)
    elif keep is not None:
        t_out, solution = t_span[keep], solution[keep]
    else:
        t_out = t_span
    return (t_out, solution, counts) if return_stats else (t_out, solution)


def _counted(f: Field, counts: StepCounts) -> Field:
    def g(t: Tensor, x: Tensor) -> Tensor:
        counts.nfe += 1
        return f(t, x)
    return g


def _fixed(f: Field, xv: Tensor, times: list[float], solver: AsynchronousLeapfrog, counts: StepCounts,
           max_steps: int) -> tuple[list[float], list[Tensor]]:
    g, states = _counted(f, counts), [xv]
    for t0, t1 in itertools.pairwise(times):
        counts.attempts += 1
        if counts.attempts > max_steps:
            raise TooManyStepsError(f"odeint_symplectic exceeded max_steps={max_steps} at t={t0:.6g}; "
                                    "raise max_steps")
        states.append(solver.step(g, states[-1], t0, t1 - t0)[1])
    return times, states


def _adaptive(f: Field, xv: Tensor, times: list[float], solver: AsynchronousLeapfrog, atol: float, rtol: float,
              counts: StepCounts, max_steps: int, return_all_eval: bool) -> tuple[list[float], list[Tensor]]:
    """Step-size control on the step-doubling estimate (exponent 1/3: local error O(h³)), landing on every time."""
    g, controller = _counted(f, counts), IntegralController()
    direction = 1.0 if times[-1] > times[0] else -1.0
    x0, _ = solver.split(xv)
    t = times[0]
    with torch.no_grad():
        k0 = g(time_tensor(t, xv), x0)
    h = initial_step(g, t, x0, k0, solver.order, atol, rtol, direction)
    out_t, out, y, j = [t], [xv], xv, 1
    exponent = 1.0 / (solver.order + 1)
    while j < len(times):
        remaining = times[j] - t
        landing = direction * (h - remaining) >= -4 * _EPS * max(abs(t), abs(times[j]))
        h_try = remaining if landing else h
        counts.attempts += 1
        if counts.attempts > max_steps:
            raise TooManyStepsError(
                f"odeint_symplectic exceeded max_steps={max_steps} at t={t:.6g} (step size {abs(h_try):.3g}); "
                "loosen atol/rtol, use stepping_class='fixed', or raise max_steps")
        _, y_new, err = solver.step(g, y, t, h_try)
        with torch.no_grad():
            x_old, x_new = solver.split(y)[0], solver.split(y_new)[0]
            e = solver.split(err)[0]
            scale = torch.maximum(x_old.abs(), x_new.abs()).mul_(rtol).add_(atol)
            ratio = float(torch.linalg.vector_norm(e / scale)) / math.sqrt(max(e.numel(), 1))
        accepted = controller.accepts(h_try, ratio)
        if accepted:
            t, y = (times[j] if landing else t + h_try), y_new
            if landing:
                j += 1
            if return_all_eval or landing:
                out_t.append(t)
                out.append(y)
        else:
            counts.rejected += 1
        h = controller.next_step(h_try, ratio, 1.0, exponent, accepted)
        if not abs(h) > 1e-14 * max(abs(t), 1.0):
            raise StepSizeUnderflowError(
                f"odeint_symplectic: the adaptive step size underflowed to {abs(h):.3g} at t={t:.6g}; check the "
                "field and inputs, or loosen atol/rtol")
    return out_t, out

