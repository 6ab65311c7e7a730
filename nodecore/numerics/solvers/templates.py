"""torchdyn's ``torchdyn.numerics.solvers.templates`` import path: base classes for solvers of your own.

Subclass :class:`DiffEqSolver` (or :class:`~nodecore.numerics.solvers.ode.SolverTemplate`), set ``order`` and
``stepping_class``, and write ``step(f, x, t, dt, k1=None, args=None)`` returning torchdyn's ``(None, x_new,
None)`` (an adaptive one ``(f_new or None, x_new, x_err, ...)``); pass an instance as ``solver=`` to
:func:`~nodecore.numerics.odeint`, ``NeuralODE`` or ``ODEProblem``. The engine steps it through that ``step``,
handing it torchdyn's ``args``: a ``'fixed'`` one at constant steps onto every point of ``t_span`` (split by
``step_size`` when given; a dict-valued state reaches it unchanged), an ``'adaptive'`` one under torchdyn's error
control from the ``x_err`` it returns (``atol``/``rtol``; ``safety``, ``min_factor``, ``max_factor``). Before each
solve it calls :meth:`DiffEqSolver.sync_device_dtype`, as torchdyn's loop does.

A multiple-shooting method of your own subclasses :class:`MultipleShootingDiffeqSolver` (nodecore's
:class:`~nodecore.numerics.shooting.MultipleShootingSolver`) and writes ``root_solve``; its signature is
nodecore's, ``root_solve(f, x, B, grid, maxiter)`` (see :mod:`nodecore.numerics.shooting`), not torchdyn's
``root_solve(odeint_func, f, x, t_span, B, fine_steps, maxiter)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nodecore._checks import choice, integer
from nodecore.numerics import tableaus
from nodecore.numerics.shooting import MultipleShootingSolver
from nodecore.numerics.solvers import RungeKutta

__all__ = ["BaseExplicit", "BaseImplicit", "DiffEqSolver", "MultipleShootingDiffeqSolver", "STEPPING_CLASSES"]

STEPPING_CLASSES: tuple[str, ...] = ("fixed", "adaptive")


class DiffEqSolver(RungeKutta):
    """torchdyn's base of a solver written by hand: ``order``, ``stepping_class`` and a ``step`` of yours.

    Args:
        order: the method's order (an integer >= 1; hypersolvers scale their correction by it).
        stepping_class: ``'fixed'`` (constant steps) or ``'adaptive'`` (error-controlled from the step's ``x_err``).
        min_factor, max_factor, safety: torchdyn's step-size factors (1-element tensors) of that control.

    Attributes:
        tableau: None, or whatever your ``step`` reads (torchdyn's ``construct_*`` tuples, see
            :mod:`nodecore.numerics.solvers.ode`); :meth:`sync_device_dtype` moves a tuple of tensors.
    """

    # Plain attributes here, not the tableau-backed properties of nodecore's own solvers: torchdyn's code assigns
    # them (``self.order = 1``, ``self.stepping_class = 'fixed'``, ``self.tableau = ...``).
    order: int = 1
    stepping_class: str = "fixed"
    tableau = tableaus.EULER  # replaced per instance; the engine never steps by it (the step is yours)

    def __init__(self, order: int, stepping_class: str = "fixed", min_factor: float = 0.2, max_factor: float = 10,
                 safety: float = 0.9) -> None:
        super().__init__(None)
        self.order = integer("order", order, minimum=1)
        self.stepping_class = choice("stepping_class", stepping_class, STEPPING_CLASSES, plural="stepping classes")
        self.min_factor = torch.tensor([float(min_factor)])
        self.max_factor = torch.tensor([float(max_factor)])
        self.safety = torch.tensor([float(safety)])
        self.tableau = None

    @property
    def adaptive(self) -> bool:
        return self.stepping_class == "adaptive"

    @property
    def has_dense_output(self) -> bool:
        return False

    @property
    def error_exponent(self) -> float:
        """The step-size exponent ``1 / order``: torchdyn's rule ``dt * safety * ratio^(-1/order)``."""
        return 1.0 / max(int(self.order), 1)

    def sync_device_dtype(self, x: Tensor | dict[str, Tensor], t_span: Tensor) -> tuple[object, Tensor]:
        """Moves the step-size factors to the state's device and a tensor ``tableau`` (torchdyn's ``(c, a, b,
        b_err)``) to its dtype and device; returns ``(x, t_span on that device)``.

        Raises:
            TypeError: a state that is neither a tensor nor a dict of tensors.
        """
        like = next(iter(x.values())) if isinstance(x, dict) else x
        if not isinstance(like, Tensor):
            raise TypeError(f"the state must be a tensor or a dict of tensors, got {type(x).__name__}")
        if isinstance(self.tableau, tuple):
            self.tableau = tuple(_to(part, like) for part in self.tableau)
        self.safety, self.min_factor, self.max_factor = (v.to(like.device) for v in
                                                         (self.safety, self.min_factor, self.max_factor))
        return x, torch.as_tensor(t_span).to(like.device)

    def step(self, f, x, t, dt, k1=None, args=None) -> tuple:  # noqa: ANN001 (torchdyn's signature)
        """Your stepping rule: return ``(None, x_new, None)``, or ``(f_new, x_new, x_err, ...)`` if adaptive."""
        raise NotImplementedError(f"{type(self).__name__} must define step(f, x, t, dt, k1=None, args=None)")

    def extra_repr(self) -> str:
        return f"order={self.order}, stepping_class={self.stepping_class!r}"


def _to(part: object, like: Tensor) -> object:
    if isinstance(part, Tensor):
        return part.to(like)
    if isinstance(part, (list, tuple)):
        return type(part)(_to(p, like) for p in part)
    return part


class BaseExplicit(DiffEqSolver):
    """torchdyn's base of an explicit solver of your own (a :class:`DiffEqSolver`)."""


class BaseImplicit(DiffEqSolver):
    """torchdyn's base of an implicit solver of your own (a :class:`DiffEqSolver`); ``_residual`` is yours."""

    @staticmethod
    def _residual(f, x, t, dt, x_sol):  # noqa: ANN001, ANN205 (torchdyn's signature)
        raise NotImplementedError("an implicit solver defines _residual(f, x, t, dt, x_sol)")


MultipleShootingDiffeqSolver = MultipleShootingSolver  # torchdyn's name of the base class
