"""``odeint``: torchdyn's functional API on nodecore's own engine."""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import Tensor

from nodecore._checks import choice, integer, positive
from nodecore.numerics.control import IntegralController, PIController
from nodecore.numerics.hybrid import odeint_hybrid  # noqa: F401  (torchdyn's import path)
from nodecore.numerics.integrate import integrate, integrate_by_own_step, no_args, state_like, writes_own_step
from nodecore.numerics.interpolators import FourthOrder, Interpolator, str_to_interp  # noqa: F401  (see below)
from nodecore.numerics.registry import solver_object
from nodecore.numerics.shooting import odeint_mshooting  # noqa: F401  (torchdyn's import path)
from nodecore.numerics.solvers import RungeKutta, Tsitouras45  # noqa: F401  (see below)
from nodecore.numerics.spans import TSpan, check_t_span, save_at_indices
from nodecore.numerics.stats import StepCounts
from nodecore.numerics.symplectic import SYMPLECTIC_SOLVERS, AsynchronousLeapfrog, odeint_symplectic

# Names torchdyn's odeint module also hands out (its imports), so `from torchdyn.numerics.odeint import X` ports:
# str_to_interp, Tsitouras45 (above) and these.
from nodecore.numerics.solvers.ode import str_to_ms_solver, str_to_solver  # noqa: F401
from nodecore.numerics.utils import EventState, adapt_step, hairer_norm, init_step  # noqa: F401

# How output times are produced: "step" (also None, the default, torchdyn's) steps onto every point; "dense"
# (and torchdyn's "4th") reads inner points off the solver's dense output.
INTERPOLATORS: tuple[str, ...] = ("dense", "4th", "step")


def interpolator_name(interpolator: str | Interpolator | None) -> str | None:
    """``interpolator`` checked: None, one of :data:`INTERPOLATORS`, or ``'4th'`` for a torchdyn
    :class:`~nodecore.numerics.interpolators.FourthOrder` instance.

    Raises:
        ValueError: an unknown value; the message lists the valid ones.
    """
    if isinstance(interpolator, FourthOrder):
        return "4th"
    if isinstance(interpolator, Interpolator):
        raise ValueError(f"interpolator {type(interpolator).__name__}(): nodecore's solvers read inner points off "
                         f"their own dense output; valid interpolators: None, {', '.join(INTERPOLATORS)} or a "
                         "FourthOrder instance (= '4th')")
    return None if interpolator is None else choice("interpolator", interpolator, INTERPOLATORS)


def interpolates(interpolator: str | Interpolator | None) -> bool:
    """Whether ``interpolator`` (see :func:`interpolator_name`) reads inner points off the dense output.

    Raises:
        ValueError: an unknown value; the message lists the valid ones.
    """
    return interpolator_name(interpolator) not in (None, "step")


DEFAULT_MAX_STEPS = 10_000
# What to do instead of a dict-valued state, for messages that refuse one.
MAPPING_STATE_HINT = "concatenate the entries into one tensor (torch.cat on the last dim) and split it inside the field"
State = Union[Tensor, Mapping[str, Tensor]]


def describe(value: object) -> str:
    """A short text naming ``value`` for messages: tensors by shape and dtype, mappings entry by entry."""
    if isinstance(value, Tensor):
        return f"<tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')}>"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key!r}: {describe(item)}" for key, item in value.items()) + "}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_step_inputs(x: object, args: object, solver: RungeKutta, solver_name: str) -> None:
    """Refuse what only a fixed-step solver class of the user's own can take: a non-empty ``args``, a dict state.

    torchdyn hands ``args`` to every ``solver.step`` call and stacks dict-valued states in its fixed-step loop,
    but its own solvers ignore ``args`` (silently) and step tensors only, and its adaptive loop takes tensors only.

    Raises:
        ValueError: a non-empty ``args`` with a solver whose ``step`` is nodecore's.
        TypeError: a dict state with such a solver or an adaptive one, an empty dict, or an entry that is not a
            floating-point or complex tensor.
    """
    own = writes_own_step(solver)
    if not own and not no_args(args):
        raise ValueError(
            f"args={describe(args)}: args reach only the step of a solver class of your own (e.g. a subclass of "
            f"Euler defining step(self, f, x, t, dt, k1=None, args=None)); solver {solver_name!r} steps with "
            "nodecore's own step, which never reads them (torchdyn ignores them there silently). Pass such a solver "
            "object, or capture the values in the field"
        )
    if not isinstance(x, Mapping):
        return
    if not own or solver.adaptive:
        why = "is adaptive" if own else "steps with nodecore's own step, which takes tensors only"
        raise TypeError(
            f"x is a dict (keys {list(x)}): a dict-valued state is stepped only by a fixed-step solver class of your "
            f"own whose step handles the dict (as in torchdyn, whose solvers and adaptive loop take tensors only); "
            f"solver {solver_name!r} {why}. Pass such a solver object, or {MAPPING_STATE_HINT}"
        )
    if not x:
        raise TypeError("x is an empty dict; a dict-valued state needs at least one tensor entry")
    for key, value in x.items():
        if not isinstance(value, Tensor) or not (value.is_floating_point() or value.is_complex()):
            got = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"x[{key!r}] must be a floating-point or complex tensor, got {got}")


def stack_states(states: list[State]) -> State:
    """``[T, ...]`` from ``T`` states: one stacked tensor, or for dict states a dict of tensors stacked per key.

    Raises:
        TypeError: a dict state whose later states (as a solver's own step returned them) lack its keys or add some.
    """
    first = states[0]
    if isinstance(first, Tensor):
        return torch.stack(states)
    keys = first.keys()
    for state in states[1:]:
        if not isinstance(state, Mapping) or state.keys() != keys:
            got = f"a dict with keys {list(state)}" if isinstance(state, Mapping) else type(state).__name__
            raise TypeError(f"the solver's step returned {got} for a dict state with keys {list(keys)}; it must "
                            "return a dict with the same keys")
    return {key: torch.stack([state[key] for state in states]) for key in keys}


def select_states(trajectory: State, keep: Tensor) -> State:
    """The points ``keep`` (indices into the first dim) of a stacked trajectory, per key for a dict."""
    if isinstance(trajectory, Tensor):
        return trajectory[keep]
    return {key: value[keep] for key, value in trajectory.items()}


def odeint(
    f: Callable[..., Tensor],
    x: State,
    t_span: TSpan,
    solver: str | RungeKutta = "tsit5",
    atol: float = 1e-3,
    rtol: float = 1e-3,
    t_stops: None = None,
    verbose: bool = False,
    interpolator: str | Interpolator | None = None,
    return_all_eval: bool = False,
    save_at: TSpan = (),
    args: object = None,
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

    Output points: by default (``interpolator=None``, as in torchdyn, or ``'step'``) adaptive solvers step onto
    every point of ``t_span``, so each is a step end. With ``'dense'`` (or torchdyn's ``'4th'``) they step freely
    and read the inner points off their dense output: far fewer steps when ``t_span`` is dense, at the
    interpolant's accuracy (order 4 for dopri5/tsit5, 3 for bosh3, 7 for dopri8, within the tolerance on smooth
    problems). Fixed-step solvers always step onto every point.

    A solver class of your own whose ``step`` overrides the solvers' (torchdyn's custom solvers) is called as
    torchdyn calls it, ``solver.step(f, x, t, dt, k1=None, args=args)`` at constant steps onto every point of
    ``t_span``: that step may read ``args`` and pass what it likes to ``f`` (``f(t, x, cond)``), and, for a
    fixed-step solver, the state may be a dict of tensors, returned stacked per key.

    Args:
        f: the field, ``f(t, x)`` with ``t`` a 0-dim tensor (or as a solver's own step calls it).
        x: initial state, any shape, floating point or complex; or a dict of such tensors (a solver's own fixed
            step only).
        t_span: ``[T]`` strictly monotonic real times (decreasing: a backward solve).
        solver: a registered name (:data:`~nodecore.numerics.registry.SOLVER_NAMES`) or a solver object; the
            asynchronous leapfrog (``'alf'``, an :class:`AsynchronousLeapfrog`) goes to
            :func:`~nodecore.numerics.symplectic.odeint_symplectic` (its state is ``[x, v]``), as in torchdyn.
        atol, rtol: tolerances of adaptive solvers.
        t_stops, verbose: torchdyn options; ``t_stops`` is not supported.
        args: handed to every call of a solver's own ``step`` (``{}`` when None, as in torchdyn); refused when
            non-empty with a solver whose ``step`` is nodecore's, which would never read it.
        interpolator: None (= ``'step'``), ``'step'``, ``'dense'`` or ``'4th'`` (= ``'dense'``; also a torchdyn
            ``FourthOrder()`` instance).
        return_all_eval: also return the state at every accepted step (then ``t_eval`` lists those times).
        save_at: points of ``t_span`` to return (all when empty).
        seminorm: ``(True, n)`` measures the error on the first ``n`` entries of the flat state only.
        controller: step-size control (default :class:`IntegralController`); its ``min_step``/``max_step``
            bound the steps.
        step_size: constant steps (adaptive solvers then skip error control).
        first_step: first adaptive step (Hairer's estimate when None).
        max_steps: raise :class:`~nodecore.errors.TooManyStepsError` beyond this many step attempts.
        return_stats: also return the :class:`~nodecore.numerics.stats.StepCounts`.

    Returns:
        ``(t_eval [S], solution [S, *x.shape])``; for a dict state ``solution`` is a dict of ``[S, *x[key].shape]``.

    Raises:
        ValueError: a bad ``t_span``, solver, tolerance or option, naming the value and the valid ones; a non-empty
            ``args`` with a solver whose ``step`` is nodecore's.
        TypeError: ``x`` is not a floating-point or complex tensor, or a dict with a solver that cannot step it.
        NotImplementedError: ``t_stops``.
        TooManyStepsError, StepSizeUnderflowError: the solve could not finish.
    """
    if t_stops is not None:
        raise NotImplementedError("t_stops is not supported; put the stop times into t_span instead")
    interpolate = interpolates(interpolator)
    if isinstance(solver, AsynchronousLeapfrog) or (isinstance(solver, str) and solver in SYMPLECTIC_SOLVERS):
        if not no_args(args):
            raise ValueError(f"args={describe(args)}: the asynchronous leapfrog ({solver!r}) never reads args; they "
                             "reach only the step of a Runge-Kutta solver class of your own")
        if isinstance(x, Mapping):
            raise TypeError(f"x is a dict (keys {list(x)}): the asynchronous leapfrog steps a tensor [x, v]; "
                            f"{MAPPING_STATE_HINT}")
        unused = {"interpolator": interpolator, "seminorm": seminorm if seminorm[0] else None, "controller": controller,
                  "step_size": step_size, "first_step": first_step}
        given = [name for name, value in unused.items() if value is not None]
        if given:
            raise ValueError(f"the asynchronous leapfrog ({solver!r}) does not take {', '.join(given)}; "
                             "it takes atol, rtol, return_all_eval, save_at, max_steps and return_stats")
        return odeint_symplectic(f, x, t_span, solver, atol, rtol, verbose, return_all_eval, save_at,
                                 max_steps=max_steps, return_stats=return_stats)
    solver_name = solver if isinstance(solver, str) else type(solver).__name__
    solver = solver_object(solver)
    check_step_inputs(x, args, solver, solver_name)
    if not isinstance(x, (Tensor, Mapping)) or isinstance(x, Tensor) and not (x.is_floating_point() or x.is_complex()):
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point or complex tensor, got {got}")
    t_span = check_t_span(t_span, state_like(x))
    keep = save_at_indices(save_at, t_span)
    counts = StepCounts()
    error_size = int(seminorm[1]) if seminorm[0] and seminorm[1] is not None else None
    all_steps: list | None = [] if return_all_eval else None
    times = t_span.tolist()
    atol, rtol = positive("atol", atol), positive("rtol", rtol)
    max_steps = integer("max_steps", max_steps, minimum=1)
    step_size = None if step_size is None else positive("step_size", step_size)
    if writes_own_step(solver):
        states = integrate_by_own_step(f, x, times, solver, args=args, counts=counts, max_steps=max_steps,
                                       step_size=step_size, all_steps=all_steps, atol=atol, rtol=rtol)
    else:
        states = integrate(
            f, x, times, solver, atol=atol, rtol=rtol, controller=controller or IntegralController(), counts=counts,
            max_steps=max_steps, interpolate=interpolate, step_size=step_size, first_step=first_step,
            error_size=error_size, all_steps=all_steps,
        )
    if return_all_eval:
        t_eval = torch.tensor([times[0]] + [t for t, _ in all_steps], dtype=t_span.dtype, device=t_span.device)
        solution = stack_states([x] + [s for _, s in all_steps])
    else:
        t_eval, solution = t_span, stack_states(states)
        if keep is not None:
            t_eval, solution = t_eval[keep], select_states(solution, keep)
    return (t_eval, solution, counts) if return_stats else (t_eval, solution)
