"""``odeint``: torchdyn's functional API on nodecore's own engine."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from nodecore._checks import choice, integer, positive
from nodecore.numerics.control import IntegralController, PIController
from nodecore.numerics.hybrid import odeint_hybrid  # noqa: F401  (torchdyn's import path)
from nodecore.numerics.integrate import integrate
from nodecore.numerics.registry import solver_object
from nodecore.numerics.shooting import odeint_mshooting  # noqa: F401  (torchdyn's import path)
from nodecore.numerics.solvers import RungeKutta
from nodecore.numerics.spans import TSpan, check_t_span, save_at_indices
from nodecore.numerics.stats import StepCounts
from nodecore.numerics.symplectic import SYMPLECTIC_SOLVERS, AsynchronousLeapfrog, odeint_symplectic

# How output times are produced: "dense" (the default, also None, and torchdyn's "4th") reads inner points
# off the solver's dense output; "step" steps onto every point (what torchdyn does with interpolator=None).
INTERPOLATORS: tuple[str, ...] = ("dense", "4th", "step")


def interpolates(interpolator: str | None) -> bool:
    """Whether ``interpolator`` (None or one of :data:`INTERPOLATORS`) reads inner points off the dense output.

    Raises:
        ValueError: an unknown value; the message lists the valid ones.
    """
    return interpolator is None or choice("interpolator", interpolator, INTERPOLATORS) != "step"


DEFAULT_MAX_STEPS = 10_000
# torchdyn stacks dict-valued states, but only a user's own solver step can carry one (its solvers compute
# ``x + dt * k``, which a dict does not support): nodecore steps tensors only, and says so.
MAPPING_STATE_HINT = ("; dict-valued states are not supported: concatenate the entries into one tensor (torch.cat "
                      "on the last dim) and split it inside the field")


def odeint(
    f: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t_span: TSpan,
    solver: str | RungeKutta = "tsit5",
    atol: float = 1e-3,
    rtol: float = 1e-3,
    t_stops: None = None,
    verbose: bool = False,
    interpolator: str | None = None,
    return_all_eval: bool = False,
    save_at: TSpan = (),
    args: Mapping[str, object] | None = None,
    seminorm: tuple[bool, int | None] = (False, None),
    *,
    controller: PIController | None = None,
    step_size: float | None = None,
    first_step: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    return_stats: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, StepCounts]:
    """Solve ``dx/dt = f(t, x)`` from ``x`` at ``t_span[0]`` and return ``(t_eval, solution)``.

    The arguments up to ``seminorm`` are torchdyn's, in its order; the rest are nodecore's. Differentiable by
    autograd (backpropagation through the steps); for the adjoint use ``NeuralODE(..., sensitivity='adjoint')``.

    Output points: by default (``interpolator=None``, ``'dense'`` or torchdyn's ``'4th'``) adaptive solvers
    step freely and read the inner points of ``t_span`` off their dense output: far fewer steps when
    ``t_span`` is dense, at the interpolant's accuracy (order 4 for dopri5/tsit5, 3 for bosh3, 7 for dopri8,
    within the tolerance on smooth problems). ``interpolator='step'`` steps onto every point instead, so each
    is a step end: what torchdyn does with ``interpolator=None``, costlier for a dense ``t_span``. Fixed-step
    solvers always step onto every point.

    Args:
        f: the field, ``f(t, x)`` with ``t`` a 0-dim tensor.
        x: initial state, any shape, floating point or complex.
        t_span: ``[T]`` strictly monotonic real times (decreasing: a backward solve).
        solver: a registered name (:data:`~nodecore.numerics.registry.SOLVER_NAMES`) or a solver object; the
            asynchronous leapfrog (``'alf'``, an :class:`AsynchronousLeapfrog`) goes to
            :func:`~nodecore.numerics.symplectic.odeint_symplectic` (its state is ``[x, v]``), as in torchdyn.
        atol, rtol: tolerances of adaptive solvers.
        t_stops, verbose, args: torchdyn options; ``t_stops`` and non-empty ``args`` are not supported.
        interpolator: None (= ``'dense'``), ``'dense'``, ``'4th'`` or ``'step'``.
        return_all_eval: also return the state at every accepted step (then ``t_eval`` lists those times).
        save_at: points of ``t_span`` to return (all when empty).
        seminorm: ``(True, n)`` measures the error on the first ``n`` entries of the flat state only.
        controller: step-size control (default :class:`IntegralController`); its ``min_step``/``max_step``
            bound the steps.
        step_size: constant steps (adaptive solvers then skip error control).
        first_step: first adaptive step (Hairer's estimate when None).
        max_steps: raise :class:`~nodecore.errors.TooManyStepsError` beyond this many step attempts.
        return_stats: also return the :class:`~nodecore.numerics.stats.StepCounts`.

    Raises:
        ValueError: a bad ``t_span``, solver, tolerance or option, naming the value and the valid ones.
        NotImplementedError: ``t_stops`` or ``args``.
        TooManyStepsError, StepSizeUnderflowError: the solve could not finish.
    """
    if t_stops is not None:
        raise NotImplementedError("t_stops is not supported; put the stop times into t_span instead")
    if args:
        raise NotImplementedError(f"args={dict(args)!r}: capture extra arguments in the field instead")
    interpolate = interpolates(interpolator)
    if isinstance(solver, AsynchronousLeapfrog) or (isinstance(solver, str) and solver in SYMPLECTIC_SOLVERS):
        unused = {"interpolator": interpolator, "seminorm": seminorm if seminorm[0] else None, "controller": controller,
                  "step_size": step_size, "first_step": first_step}
        given = [name for name, value in unused.items() if value is not None]
        if given:
            raise ValueError(f"the asynchronous leapfrog ({solver!r}) does not take {', '.join(given)}; "
                             "it takes atol, rtol, return_all_eval, save_at, max_steps and return_stats")
        return odeint_symplectic(f, x, t_span, solver, atol, rtol, verbose, return_all_eval, save_at,
                                 max_steps=max_steps, return_stats=return_stats)
    solver = solver_object(solver)
    if not isinstance(x, Tensor) or not (x.is_floating_point() or x.is_complex()):
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        hint = MAPPING_STATE_HINT if isinstance(x, Mapping) else ""
        raise TypeError(f"x must be a floating-point or complex tensor, got {got}{hint}")
    t_span = check_t_span(t_span, x)
    keep = save_at_indices(save_at, t_span)
    counts = StepCounts()
    error_size = int(seminorm[1]) if seminorm[0] and seminorm[1] is not None else None
    all_steps: list | None = [] if return_all_eval else None
    times = t_span.tolist()
    states = integrate(
        f, x, times, solver,
        atol=positive("atol", atol), rtol=positive("rtol", rtol),
        controller=controller or IntegralController(), counts=counts,
        max_steps=integer("max_steps", max_steps, minimum=1), interpolate=interpolate,
        step_size=None if step_size is None else positive("step_size", step_size),
        first_step=first_step, error_size=error_size, all_steps=all_steps,
    )
    if return_all_eval:
        t_eval = torch.tensor([times[0]] + [t for t, _ in all_steps], dtype=t_span.dtype, device=t_span.device)
        solution = torch.stack([x] + [s for _, s in all_steps])
    else:
        t_eval, solution = t_span, torch.stack(states)
        if keep is not None:
            t_eval, solution = t_eval[keep], solution[keep]
    return (t_eval, solution, counts) if return_stats else (t_eval, solution)
