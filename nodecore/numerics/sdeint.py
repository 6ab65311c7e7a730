"""``sdeint``: torchdyn master's functional SDE solve (``torchdyn.numerics.sdeint``), stepped by torchsde.

Like torchdyn's, it takes one step per interval of ``t_span``, so every point of ``t_span`` is a step end and
the step sizes are the spacings of ``t_span``; torchsde's methods do the steps (see
:mod:`nodecore.numerics.solvers.sde`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torchsde
from torch import Tensor

from nodecore._checks import positive
from nodecore.numerics.solvers.sde import SDEStepper, check_diffusion, check_sde, resolve_sde_solver
from nodecore.numerics.spans import TSpan, check_t_span, save_at_indices

_DEFAULT_TOL = 1e-3


def sdeint(
    sde: Any,
    x: Tensor,
    t_span: TSpan,
    solver: str | SDEStepper,
    bm: torchsde.BaseBrownian | None = None,
    atol: float = _DEFAULT_TOL,
    rtol: float = _DEFAULT_TOL,
    t_stops: None = None,
    verbose: bool = False,
    interpolator: str | Callable | None = None,
    return_all_eval: bool = False,
    save_at: Iterable[float] | Tensor = (),
    args: Mapping[str, object] | None = None,
    seminorm: tuple[bool, int | None] = (False, None),
) -> tuple[Tensor, Tensor]:
    """Solve ``dx = f(t, x) dt + g(t, x) dW`` from ``x`` at ``t_span[0]``; return ``(t_eval, solution)``.

    torchdyn master's signature and semantics: one step per interval of ``t_span`` (the step sizes are its
    spacings; give a finer ``t_span`` and ``save_at`` for smaller steps), ``solution[0]`` is ``x``, differentiable by
    autograd through the steps.

    Args:
        sde: torchsde's SDE: methods ``f(t, x) -> [B, D]`` (drift) and ``g(t, x)`` (diffusion: ``[B, D]`` for
            ``noise_type='diagonal'``, ``[B, D, m]`` for ``'general'``/``'additive'``, ``[B, D, 1]`` for
            ``'scalar'``), attributes ``noise_type`` and ``sde_type`` (``'ito'`` or ``'stratonovich'``); e.g. a
            :class:`~nodecore.models.SDEFunc`.
        x: initial state ``[B, D]``, floating point.
        t_span: ``[T]`` strictly increasing times (a list or a tensor).
        solver: torchdyn's names ``'euler'`` (Euler–Maruyama, Itô), ``'eulerHeun'`` (Stratonovich),
            ``'milstein_ito'``, ``'milstein_stratonovich'`` (derivative-free Milstein), ``'midpoint'``
            (Stratonovich), any torchsde method (:data:`~nodecore.numerics.solvers.sde.SDE_SOLVER_NAMES`, e.g.
            ``'srk'``), or a solver object with torchdyn's ``step(x, t, dt) -> (_, x_next, _)``.
        bm: the Brownian motion ``[B, m]`` (a ``torchsde.BrownianInterval`` with a fixed ``entropy`` repeats a
            path). torchdyn requires it; None draws a new one over ``t_span``, seeded from torch's global
            generator, with the Lévy area the solver needs.
        atol, rtol: unused (every SDE method here takes fixed steps); changing them warns, as in torchdyn.
        t_stops, args: not supported (refused, not ignored).
        verbose: unused, as in torchdyn.
        interpolator, seminorm: torchdyn ignores them here; only their defaults are accepted.
        return_all_eval: return every step end: every point of ``t_span`` (``save_at`` is then ignored).
        save_at: points of ``t_span`` to return (all when empty).

    Returns:
        ``t_eval [S]`` (the points of ``save_at``, or all of ``t_span``) and ``solution [S, B, D]``.

    Raises:
        TypeError: ``sde`` lacks ``f``, ``g``, ``noise_type`` or ``sde_type``; ``x`` or ``bm`` of the wrong type.
        ValueError: a bad ``x``, ``t_span``, ``save_at`` or tolerance, an unknown solver or one that cannot solve
            this SDE (the message lists those that can), a drift or diffusion of the wrong shape, or a ``bm``
            that does not fit.
        NotImplementedError: ``t_stops``, ``args``, or a solver object whose ``stepping_class`` is
            ``'adaptive'`` (torchdyn has no adaptive SDE stepping either).
    """
    if t_stops is not None:
        raise NotImplementedError("t_stops is not supported; put the stop times into t_span instead")
    if args:
        raise NotImplementedError(f"args={dict(args)!r}: capture extra arguments in the drift and diffusion instead")
    if interpolator is not None or seminorm[0]:
        given = "interpolator" if interpolator is not None else "seminorm"
        raise ValueError(f"sdeint steps onto every point of t_span and has no error control: {given} does not "
                         "apply (leave it at its default)")
    if positive("atol", atol) != _DEFAULT_TOL or positive("rtol", rtol) != _DEFAULT_TOL:
        warnings.warn("Setting tolerances has no effect on fixed-step methods", stacklevel=2)
    check_sde(sde)
    x = _check_state(x)
    t_span = check_t_span(t_span, x).to(x.dtype)
    if t_span.requires_grad:
        raise ValueError("t_span must not require grad: torchsde gives no gradients with respect to the times")
    if not bool((t_span.diff() > 0).all()):
        raise ValueError(f"t_span must be strictly increasing (SDEs are solved forward in time), got "
                         f"{t_span.tolist()}")
    keep = None if return_all_eval else save_at_indices(save_at, t_span)
    if isinstance(solver, str):
        entry, _ = resolve_sde_solver(solver, sde.noise_type, sde.sde_type)
        if bm is None:
            bm = _brownian(sde, x, t_span, entry.levy_areas[0])
        stepper = SDEStepper(sde, bm, x.dtype, method=solver)
        advance = stepper.advance
    else:
        if getattr(solver, "stepping_class", "fixed") == "adaptive":
            raise NotImplementedError("adaptive SDE solvers are not supported (torchdyn has none either); use a "
                                      "fixed-step solver and a finer t_span")

        def advance(state: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
            return solver.step(state, t0, t1 - t0)[1]

    states = [x]
    for t0, t1 in zip(t_span[:-1], t_span[1:]):
        states.append(advance(states[-1], t0, t1))
    solution = torch.stack(states)
    if keep is not None:
        return t_span[keep], solution[keep]
    return t_span, solution


def _check_state(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}; convert it with x.float()")
    if x.ndim != 2 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty state [batch, dim] (torchsde's layout), got shape {tuple(x.shape)}")
    return x


def _brownian(sde: Any, x: Tensor, t_span: Tensor, levy_area: str) -> torchsde.BrownianInterval:
    """A fresh Brownian motion ``[B, m]`` over ``t_span``, its entropy drawn from torch's global generator.

    For a noise type other than diagonal, the channels ``m`` come from one diffusion evaluation at ``t_span[0]``.
    """
    if sde.noise_type == "diagonal":
        channels = x.shape[1]
    else:
        with torch.no_grad():
            channels = check_diffusion(sde.g(t_span[0], x), x, sde.noise_type)
    entropy = int(torch.randint(0, 2**31 - 1, ()))
    mean_step = float(t_span[-1] - t_span[0]) / (t_span.numel() - 1)
    return torchsde.BrownianInterval(t0=t_span[0], t1=t_span[-1], size=(x.shape[0], channels), dtype=x.dtype,
                                     device=x.device, entropy=entropy, dt=mean_step,
                                     levy_area_approximation=levy_area)
