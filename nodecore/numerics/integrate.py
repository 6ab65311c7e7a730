"""The stepping loop, written once for every Runge–Kutta solver.

Times and step sizes live on the host as Python floats; the only host–device synchronisation per step is
reading the error ratio that accept/reject needs (none at all for constant steps). Output at the requested
times comes either from stepping onto each of them or from the solver's dense output.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Mapping

import torch
from torch import Tensor

from nodecore._compile import compiling
from nodecore.errors import NonFiniteError, StepSizeUnderflowError, TooManyStepsError
from nodecore.numerics.control import PIController, _rms, initial_step
from nodecore.numerics.solvers import Attempt, RungeKutta, Workspace, real_dtype, time_tensor
from nodecore.numerics.stats import StepCounts

Field = Callable[[Tensor, Tensor], Tensor]
_EPS = 2.0**-52


def integrate(
    f: Field,
    x: Tensor,
    times: list[float],
    solver: RungeKutta,
    *,
    atol: float,
    rtol: float,
    controller: PIController,
    counts: StepCounts,
    max_steps: int,
    interpolate: bool = False,
    step_size: float | None = None,
    first_step: float | None = None,
    error_size: int | None = None,
    all_steps: list[tuple[float, Tensor]] | None = None,
    label: str = "",
    dense_steps: list[tuple[float, float, Tensor, Tensor]] | None = None,
) -> list[Tensor]:
    """Solve ``dx/dt = f(t, x)`` from ``x`` at ``times[0]`` and return the state at every point of ``times``.

    ``x`` may be real or complex; the field's ``t`` is always real, of ``x``'s precision.

    Args:
        f: the field; one with a true ``ignores_time`` attribute promises never to read ``t`` (solves then skip
            computing the stage times, and ``t`` holds NaN or stale values).
        times: strictly monotonic output times (decreasing for a backward solve), as floats.
        counts: incremented in place (evaluations, attempts, rejections).
        interpolate: adaptive solvers with dense output step freely and interpolate at inner ``times``
            (fewer steps when ``times`` is dense); otherwise every point of ``times`` is stepped onto.
        step_size: constant steps no longer than this, without error control. With ``interpolate`` and a
            solver with dense output they run from ``times[0]`` to ``times[-1]`` and inner times are
            interpolated; otherwise each interval between times is split into equal steps.
        first_step: the first adaptive step; Hairer's estimate when None.
        error_size: error control looks at the first ``error_size`` entries of the flat state only.
        all_steps: when given, ``(t, state)`` of every accepted step is appended to it.
        label: names the solve in error messages (``'forward'``: "the forward solve exceeded ...").
        dense_steps: when given, ``(t, h, y0, stages)`` of every accepted step is appended to it, ``stages`` with
            any extra dense-output stages: the whole interpolant. Solvers without dense output (constant steps)
            record their stages plus ``f(t + h, y1)``, the cubic Hermite interpolant
            (:func:`~nodecore.numerics.tableaus.hermite_with_end_derivative`).

    Returns:
        the states at ``times``, ``[x, x(times[1]), ...]``.

    Raises:
        TooManyStepsError, StepSizeUnderflowError: the solve could not finish; the message says where.
    """
    name = f"the {label} solve" if label else "the solve"
    stage_times = not getattr(f, "ignores_time", False)
    overridden = type(solver).step is not RungeKutta.step
    # A step of your own builds its tensors (and a torchdyn-style solver has no tableau to size a workspace by);
    # torch.compile traces the plain ops (the workspace's in-place buffers and identity caches are host-side).
    ws = None if torch.is_grad_enabled() or overridden or compiling() else solver.workspace(x)
    if ws is not None:
        ws.stage_times = stage_times
    try:
        if not solver.adaptive or step_size is not None or overridden:
            return _constant_steps(f, x, times, solver, step_size, counts, max_steps, all_steps, name, ws, dense_steps,
                                   interpolate, stage_times=stage_times, tolerances=(atol, rtol, error_size))
        return _adaptive_steps(f, x, times, solver, atol=atol, rtol=rtol, controller=controller, counts=counts,
                               max_steps=max_steps, interpolate=interpolate and solver.has_dense_output,
                               first_step=first_step, error_size=error_size, all_steps=all_steps, name=name, ws=ws,
                               dense_steps=dense_steps, stage_times=stage_times)
    finally:
        if ws is not None:
            ws.busy = False


def _count_attempt(counts: StepCounts, max_steps: int, t: float, h: float, name: str) -> None:
    counts.attempts += 1
    if counts.attempts > max_steps:
        raise TooManyStepsError(
            f"{name} exceeded max_steps={max_steps} at t={t:.6g} (step size {abs(h):.3g}): the dynamics may be "
            "stiff or the tolerances too tight; loosen atol/rtol, use a fixed-step solver, or raise max_steps"
        )


def _kept(state: Tensor, ws: Workspace | None) -> Tensor:
    """A state to return: workspace storage is reused, so it is copied out."""
    return state if ws is None else state.clone()


def _stepped_by_override(solver: RungeKutta, f: Field, counts: StepCounts, args: object = None
                         ) -> Callable[..., tuple]:
    """For a solver whose class overrides ``step`` (a hypersolver, a torchdyn-style custom solver): a function
    ``(y, t, h, k1=None) -> step's tuple`` that goes through that ``step``, counting evaluations (``[1]`` of the
    tuple is the new state).

    The step's ``f`` passes on whatever the step gives after ``(t, x)`` (torchdyn's ``f(t, x, args)``). A step
    written outside nodecore (:func:`writes_own_step`) is called as torchdyn calls it, ``step(..., args=args)``,
    with ``args={}`` when None; one without an ``args`` parameter is called without it (``args`` then empty).

    Raises:
        TypeError: a non-empty ``args`` for a step that takes no ``args`` parameter.
        ValueError: a non-empty ``args`` for a step of nodecore's, which never reads them.
    """
    if not writes_own_step(solver):  # nodecore's own steps (hypersolvers): tensors, f(t, x), no args
        if not no_args(args):
            raise ValueError(f"{type(solver).__name__}'s step is nodecore's own and never reads args")
        counted = _counted(f, counts)

        def step(y: Tensor, t: float, h: float, k1: Tensor | None = None) -> tuple:
            return solver.step(counted, y, time_tensor(t, y), h, k1)

        return step

    def passed_on(t: Tensor, x: object, *extra: object, **named: object) -> object:
        counts.nfe += 1
        return f(t, x, *extra, **named)

    if _takes_args(solver.step):
        handed = {} if args is None else args

        def own_step(y: object, t: float, h: float, k1: object = None) -> tuple:
            return solver.step(passed_on, y, time_tensor(t, state_like(y)), h, *_given(k1), args=handed)

        return own_step
    if not no_args(args):
        raise TypeError(
            f"{type(solver).__name__}.step has no args parameter, so the args given cannot reach it; add one, "
            "as in torchdyn's step(self, f, x, t, dt, k1=None, args=None)"
        )

    def own_step(y: object, t: float, h: float, k1: object = None) -> tuple:
        return solver.step(passed_on, y, time_tensor(t, state_like(y)), h, *_given(k1))

    return own_step


def _given(k1: object) -> tuple:
    """``k1`` as the step's fifth argument only when there is one: a step of your own may not take it."""
    return () if k1 is None else (k1,)


def writes_own_step(solver: RungeKutta) -> bool:
    """Whether ``solver``'s ``step`` is written outside nodecore (a torchdyn-style custom solver).

    Only such a step can read torchdyn's ``args`` or carry a dict-valued state: nodecore's solvers, hypersolvers
    included, read neither.
    """
    owner = next(cls for cls in type(solver).__mro__ if "step" in vars(cls))
    return owner.__module__.split(".")[0] != "nodecore"


def no_args(args: object) -> bool:
    """Whether torchdyn's ``args`` is empty: None, or an empty mapping, tuple or list (torchdyn's default ``{}``)."""
    return args is None or (isinstance(args, (Mapping, tuple, list)) and len(args) == 0)


def state_like(x: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The tensor that sets a state's dtype and device: the state itself, or a dict state's first entry."""
    return x if isinstance(x, Tensor) else next(iter(x.values()))


def integrate_by_own_step(
    f: Callable[..., object],
    x: Tensor | Mapping[str, Tensor],
    times: list[float],
    solver: RungeKutta,
    *,
    args: object,
    counts: StepCounts,
    max_steps: int,
    step_size: float | None = None,
    all_steps: list | None = None,
    label: str = "",
    atol: float | None = None,
    rtol: float | None = None,
) -> list:
    """Solve through a user-written ``solver.step`` (:func:`writes_own_step`), handing it ``args`` at every call.

    As torchdyn's fixed-step loop: constant steps onto every point of ``times`` (each interval split into equal
    steps no longer than ``step_size`` when given), ``step(f, x, t, dt, args=args)`` with ``t`` a 0-dim tensor.
    An adaptive solver (``stepping_class == 'adaptive'``) with ``atol``, ``rtol`` and no ``step_size`` is
    error-controlled by torchdyn's loop instead (:func:`_adaptive_own_steps`).
    The state is opaque to the loop, so it may be a dict of tensors (torchdyn's dict-valued states), and ``f``
    receives whatever the step passes after ``(t, x)``.

    Args:
        args: what every step receives as ``args``; torchdyn's ``{}`` when None. A step whose signature has no
            ``args`` parameter is called without it, if ``args`` is empty.

    Returns:
        the states at ``times``, ``[x, x(times[1]), ...]``, as the step returned them.

    Raises:
        TypeError: a non-empty ``args`` for a step that takes no ``args`` parameter.
        TooManyStepsError: more than ``max_steps`` steps.
    """
    name = f"the {label} solve" if label else "the solve"
    tolerances = None if atol is None or rtol is None else (atol, rtol, None)
    return _constant_steps(f, x, times, solver, step_size, counts, max_steps, all_steps, name, None, args=args,
                           tolerances=tolerances)


def _takes_args(step: Callable) -> bool:
    """Whether ``step`` can be called with an ``args=`` keyword."""
    try:
        params = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind == p.VAR_KEYWORD or (p.name == "args" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in params)


def _record_dense(dense_steps: list | None, solver: RungeKutta, f: Field, y: Tensor, t: float, h: float,
                  attempt: Attempt, counts: StepCounts, ws: Workspace | None, t_new: float | None = None
                  ) -> Tensor | None:
    """Append an accepted step's whole interpolant ``(t, h, y0, stages)`` to ``dense_steps`` (when asked).

    A solver without dense output (a constant-step solve) gets the cubic Hermite interpolant: its stages plus
    ``f(t_new, y1)``, which is returned so that the next step reuses it as its first stage (no extra evaluation
    but at the last step).
    """
    if dense_steps is None:
        return None
    if not solver.has_dense_output:
        if t_new is None:
            return None
        end = f(time_tensor(t_new, y), attempt.y1)
        counts.nfe += 1
        dense_steps.append((t, h, _kept(y, ws), torch.cat([attempt.stages, end.reshape(1, -1)])))
        return end
    stages = solver.dense_stages(f, y, t, h, attempt.stages, counts)
    dense_steps.append((t, h, _kept(y, ws), stages if stages is not attempt.stages else _kept(stages, ws)))
    return None


def _constant_steps(f: Field, x: Tensor, times: list[float], solver: RungeKutta, step_size: float | None,
                    counts: StepCounts, max_steps: int, all_steps: list | None, name: str,
                    ws: Workspace | None, dense_steps: list | None = None, interpolate: bool = False,
                    args: object = None, stage_times: bool = True,
                    tolerances: tuple[float, float, int | None] | None = None) -> list[Tensor]:
    out, y, k0 = [x], x, None
    overridden = type(solver).step is not RungeKutta.step
    if overridden:
        ws = None  # the override builds its own tensors
        # torchdyn's hook of a solver of your own, once per solve. It gets t_span on the state's device in the
        # state's real precision (torchdyn hands on the user's t_span as given; the engine keeps only its values).
        sync = getattr(solver, "sync_device_dtype", None)
        if callable(sync):
            like = state_like(x)
            sync(x, torch.tensor(times, dtype=real_dtype(like.dtype), device=like.device))
        by_override = _stepped_by_override(solver, f, counts, args)
        if solver.adaptive and step_size is None and tolerances is not None and isinstance(x, Tensor):
            first_slope = _counted(f, counts) if no_args(args) else None
            return _adaptive_own_steps(by_override, x, times, solver, atol=tolerances[0], rtol=tolerances[1],
                                       error_size=tolerances[2], counts=counts, max_steps=max_steps,
                                       all_steps=all_steps, name=name, first_slope=first_slope)
    # With a step size and a dense output, one grid spans the whole solve and inner times are interpolated;
    # otherwise each interval between output times is split into equal steps no longer than step_size.
    dense = interpolate and step_size is not None and solver.has_dense_output and not overridden
    intervals = [(times[0], times[-1])] if dense else list(zip(times[:-1], times[1:]))
    direction = 1.0 if times[-1] > times[0] else -1.0
    j = 1
    for t_start, t_end in intervals:
        span = t_end - t_start
        n = 1 if step_size is None else max(1, math.ceil(abs(span) / step_size - 1e-9))
        h = span / n
        t = t_start
        for i in range(n):
            _count_attempt(counts, max_steps, t, h, name)
            t_new = t_end if i == n - 1 else t_start + (i + 1) * h
            if overridden:
                t, y = t_new, by_override(y, t, h)[1]
            else:
                attempt = solver.attempt(f, y, t, h, k0, counts, need_error=False, workspace=ws,
                                         stage_times=stage_times)
                end = _record_dense(dense_steps, solver, f, y, t, h, attempt, counts, ws, t_new)
                if dense:
                    j = _emit_interpolated(f, solver, out, times, j, t, h, t_new, y, attempt, counts, direction, ws)
                t, y, k0 = t_new, attempt.y1, attempt.last if end is None else end
            if ws is not None:
                ws.swap()
            if all_steps is not None:
                all_steps.append((t, _kept(y, ws)))
        if not dense:
            out.append(_kept(y, ws))
    return out


def _adaptive_steps(
    f: Field,
    x: Tensor,
    times: list[float],
    solver: RungeKutta,
    *,
    atol: float,
    rtol: float,
    controller: PIController,
    counts: StepCounts,
    max_steps: int,
    interpolate: bool,
    first_step: float | None,
    error_size: int | None,
    all_steps: list | None,
    name: str,
    ws: Workspace | None,
    dense_steps: list | None = None,
    stage_times: bool = True,
) -> list[Tensor]:
    direction = 1.0 if times[-1] > times[0] else -1.0
    t, y = times[0], x
    k0 = f(_time_for(ws, t, x), y)
    counts.nfe += 1
    if first_step is None:
        h = initial_step(f, t, y, k0, solver.order, atol, rtol, direction, error_size, workspace=ws)
        counts.nfe += 1
        if not math.isfinite(h):
            raise NonFiniteError(
                f"{name} cannot start: the field returned NaN or Inf at t={t:.6g} (or soon after); check the field, "
                "its parameters and the inputs"
            )
    else:
        h = direction * abs(first_step)
    h = math.copysign(min(max(abs(h), controller.min_step), controller.max_step), direction)
    out, j, n_times = [x], 1, len(times)
    exponent, previous_ratio = solver.error_exponent, 1.0
    span_floor = abs(times[-1] - times[0]) * 1e-3  # of the step-size underflow test
    while j < n_times:
        target = times[-1] if interpolate else times[j]
        remaining = target - t
        landing = direction * (h - remaining) >= -4 * _EPS * max(abs(t), abs(target))
        h_try = remaining if landing else h
        _count_attempt(counts, max_steps, t, h_try, name)
        attempt = solver.attempt(f, y, t, h_try, k0, counts, atol=atol, rtol=rtol, error_size=error_size,
                                 workspace=ws, stage_times=stage_times)
        ratio = attempt.error_ratio  # the one host sync per step
        accepted = controller.accepts(h_try, ratio)
        if accepted:
            t_new = target if landing else t + h_try
            if interpolate:
                if direction * (times[j] - t_new) <= 0:  # an output time inside or at the end of this step
                    j = _emit_interpolated(f, solver, out, times, j, t, h_try, t_new, y, attempt, counts, direction,
                                           ws)
            elif landing:
                out.append(_kept(attempt.y1, ws))
                j += 1
            if dense_steps is not None:
                _record_dense(dense_steps, solver, f, y, t, h_try, attempt, counts, ws)
            t, y, k0 = t_new, attempt.y1, attempt.last
            previous_ratio = ratio
            if ws is not None:
                ws.swap()
            if all_steps is not None:
                all_steps.append((t, _kept(y, ws)))
        else:
            counts.rejected += 1
        h = _after_landing(controller.next_step(h_try, ratio, previous_ratio, exponent, accepted), h, h_try, accepted)
        if not abs(h) > 16 * _EPS * max(abs(t), span_floor):  # NaN too
            cause = "the field returned NaN or Inf" if not math.isfinite(ratio) else "the dynamics are too stiff"
            raise StepSizeUnderflowError(
                f"{name}: the adaptive step size underflowed to {abs(h):.3g} at t={t:.6g} ({cause}); check the field and "
                "inputs, loosen atol/rtol, or use a fixed-step solver"
            )
    return out


def _after_landing(proposed: float, planned: float, tried: float, accepted: bool) -> float:
    """The next step after an attempt of size ``tried``: the controller's ``proposed`` one, but after an accepted
    step shortened from ``planned`` to land on an output time at least ``planned`` (the short step says nothing
    against it; torchdyn's rule). Without it every output time cut the step size down and it grew back over the
    next steps."""
    if accepted and abs(tried) < abs(planned):
        return math.copysign(max(abs(proposed), abs(planned)), planned)
    return proposed


def _counted(f: Field, counts: StepCounts) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(t, x)`` adding each evaluation to ``counts.nfe``."""

    def counted(t: Tensor, x: Tensor) -> Tensor:
        counts.nfe += 1
        return f(t, x)

    return counted


def _adaptive_own_steps(step: Callable[..., tuple], x: Tensor, times: list[float], solver: RungeKutta, *,
                        atol: float, rtol: float, error_size: int | None, counts: StepCounts, max_steps: int,
                        all_steps: list | None, name: str,
                        first_slope: Callable[[Tensor, Tensor], Tensor] | None) -> list[Tensor]:
    """torchdyn's adaptive loop around an adaptive ``step`` of your own, which returns ``(f_new, x_new, x_err,
    ...)``: stepping onto every point of ``times``.

    A step is accepted when ``rms(x_err / (atol + rtol max(|x|, |x_new|))) <= 1`` (over the first ``error_size``
    entries of the flat state when given: the adjoint's seminorm); the next step is the last times
    ``safety · ratio^(-1/order)`` clipped to ``[min_factor, max_factor]`` (never shrinking after an accepted step),
    the solver's ``safety``, ``min_factor`` and ``max_factor`` (torchdyn's 0.9, 0.2, 10 when it has none).
    ``f_new``, when not None, is the next step's ``k1``. The first step is Hairer's estimate from
    ``first_slope(t0, x0)`` (which is also the first step's ``k1``), as torchdyn's; without it (a field that needs
    torchdyn's ``args``, which only the step hands on) a hundredth of the first interval.
    """
    safety, low, high = (float(torch.as_tensor(getattr(solver, name_, default)).reshape(-1)[0])
                         for name_, default in (("safety", 0.9), ("min_factor", 0.2), ("max_factor", 10.0)))
    order = max(int(solver.order), 1)
    out, y, t, k1 = [x], x, times[0], None
    direction = 1.0 if times[-1] > times[0] else -1.0
    if first_slope is None:
        h = 0.01 * (times[1] - times[0])
    else:
        k1 = first_slope(time_tensor(t, x), x)
        h = initial_step(first_slope, t, x, k1, order, atol, rtol, direction,
                         error_size=x.numel() if error_size is None else error_size)
    span_floor = abs(times[-1] - times[0]) * 1e-3
    for target in times[1:]:
        while direction * (target - t) > 4 * _EPS * max(abs(t), abs(target)):
            landing = direction * (h - (target - t)) >= -4 * _EPS * max(abs(t), abs(target))
            h_try = target - t if landing else h
            _count_attempt(counts, max_steps, t, h_try, name)
            result = step(y, t, h_try, k1)
            f_new, y_new, ratio = result[0], result[1], own_error_ratio(solver, result, y, atol, rtol, error_size)
            accepted = ratio <= 1.0
            if accepted:
                t, y, k1 = (target if landing else t + h_try), y_new, f_new
                if all_steps is not None:
                    all_steps.append((t, y))
            else:
                counts.rejected += 1
            factor = high if ratio == 0 else safety * ratio ** (-1.0 / order) if math.isfinite(ratio) else low
            h = _after_landing(h_try * min(high, max(factor, 1.0 if accepted else low)), h, h_try, accepted)
            if not abs(h) > 16 * _EPS * max(abs(t), span_floor):
                raise StepSizeUnderflowError(
                    f"{name}: the adaptive step size underflowed to {abs(h):.3g} at t={t:.6g} (error ratio "
                    f"{ratio:.3g}); check the field and the step's error estimate, or loosen atol/rtol"
                )
        out.append(y)
    return out


def own_error_ratio(solver: RungeKutta, result: tuple, y: Tensor, atol: float, rtol: float,
                    error_size: int | None) -> float:
    """The error ratio of an adaptive step of your own from ``y``, which returned ``result = (f_new, x_new, x_err,
    ...)``: ``rms(x_err / (atol + rtol max(|y|, |x_new|)))`` over the first ``error_size`` entries of the flat state
    (all when None). A host sync; the step is accepted when it is at most 1.

    Raises:
        TypeError: ``result`` has no tensor ``x_err``.
    """
    if len(result) < 3 or not isinstance(result[2], Tensor):
        raise TypeError(f"{type(solver).__name__} is adaptive (stepping_class 'adaptive'), so its step must return "
                        f"(f_new, x_new, x_err, ...) with x_err the error estimate, got {len(result)} values")
    with torch.no_grad():
        e, a, b = (v.detach().reshape(-1)[:error_size] for v in (result[2], y, result[1]))
        return float(_rms(e.abs() / (atol + rtol * torch.maximum(a.abs(), b.abs()))))


def _time_for(ws: Workspace | None, t: float, like: Tensor) -> Tensor:
    """The time tensor handed to the field at ``t``: in a no-grad solve of a field that ignores time, a workspace
    time (no new tensor; it holds NaN or a stale value)."""
    return ws.time_views[0] if ws is not None and not ws.stage_times else time_tensor(t, like)


def _emit_interpolated(f: Field, solver: RungeKutta, out: list[Tensor], times: list[float], j: int, t: float,
                       h: float, t_new: float, y: Tensor, attempt: Attempt, counts: StepCounts, direction: float,
                       ws: Workspace | None) -> int:
    """Append the dense-output states of every ``times[j:]`` inside the accepted step ``[t, t_new]``."""
    inner: list[float] = []
    k = j
    while k < len(times) and direction * (times[k] - t_new) < 0:
        inner.append((times[k] - t) / h)
        k += 1
    if inner:
        out.extend(solver.interpolate(f, y, t, h, attempt.stages, inner, counts, workspace=ws))
    if k < len(times) and times[k] == t_new:
        out.append(_kept(attempt.y1, ws))
        k += 1
    return k
