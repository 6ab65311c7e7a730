"""torchdyn's ``torchdyn.numerics.sensitivity`` import path: :func:`generic_odeint`.

torchdyn keeps its adjoint's autograd functions here (private names); nodecore's are in
:mod:`nodecore.numerics.adjoint` (:func:`~nodecore.numerics.adjoint.odeint_adjoint`), chosen with
``NeuralODE(..., sensitivity=...)``. The one public name is the solve dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from nodecore._checks import choice
from nodecore.numerics.interpolators import Interpolator
from nodecore.numerics.odeint import odeint
from nodecore.numerics.registry import Solver
from nodecore.numerics.shooting import MultipleShootingSolver, odeint_mshooting
from nodecore.numerics.spans import TSpan

__all__ = ["PROBLEM_TYPES", "generic_odeint"]

PROBLEM_TYPES: tuple[str, ...] = ("standard", "multiple_shooting")


def generic_odeint(problem_type: str, vf: Callable[..., Tensor], x: Tensor, t_span: TSpan,
                   solver: str | Solver | MultipleShootingSolver, atol: float, rtol: float,
                   interpolator: str | Interpolator | None, B0: Tensor | None = None, return_all_eval: bool = False,
                   maxiter: int = 4, fine_steps: int = 4, save_at: TSpan = ()) -> tuple[Tensor, Tensor]:
    """``(t_eval, solution)`` by :func:`~nodecore.numerics.odeint` (``'standard'``) or by
    :func:`~nodecore.numerics.odeint_mshooting` (``'multiple_shooting'``, which reads ``B0``, ``fine_steps`` and
    ``maxiter`` and ignores the tolerances, the interpolator, ``return_all_eval`` and ``save_at``), as torchdyn's.

    Raises:
        ValueError: an unknown ``problem_type`` (torchdyn returns None), or whatever the solve refuses.
    """
    if choice("problem_type", problem_type, PROBLEM_TYPES) == "standard":
        return odeint(vf, x, t_span, solver, atol=atol, rtol=rtol, interpolator=interpolator,
                      return_all_eval=return_all_eval, save_at=save_at)
    return odeint_mshooting(vf, x, t_span, solver, B0=B0, fine_steps=fine_steps, maxiter=maxiter)
