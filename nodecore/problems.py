"""torchdyn's problem classes: ``ODEProblem`` (a field, a solver and a sensitivity) and ``MultipleShootingLayer``."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from torch import Tensor, nn

from nodecore._checks import choice, integer
from nodecore.fields import VectorField
from nodecore.neuralode import NeuralODE, TSpan
from nodecore.numerics.interpolators import Interpolator
from nodecore.numerics.shooting import MS_SOLVERS, SHOOTING_SENSITIVITIES, MultipleShootingSolver, odeint_mshooting
from nodecore.numerics.solvers import RungeKutta


class ODEProblem(NeuralODE):
    """An ODE ``dx/dt = f(t, x)`` with its solver and sensitivity, in torchdyn's argument order and defaults.

    The same model as :class:`~nodecore.neuralode.NeuralODE` (its keyword-only options are accepted too), with
    torchdyn's ``ODEProblem`` signature: ``solver`` required, ``interpolator`` third, ``atol = rtol = 1e-4``,
    ``atol_adjoint = rtol_adjoint = 1e-6``, ``seminorm=False``; ``odeint(x, t_span)`` returns
    ``(t_eval, solution)``.

    ``interpolator`` means what it means for ``NeuralODE`` (and torchdyn): None steps onto every point of
    ``t_span``; ``'4th'`` or ``'dense'`` reads inner points off the dense output.
    """

    def __init__(
        self,
        vector_field: nn.Module | Callable[..., Tensor],
        solver: str | RungeKutta,
        interpolator: str | Interpolator | None = None,
        order: int = 1,
        atol: float = 1e-4,
        rtol: float = 1e-4,
        sensitivity: str = "autograd",
        solver_adjoint: str | RungeKutta | None = None,
        atol_adjoint: float = 1e-6,
        rtol_adjoint: float = 1e-6,
        seminorm: bool = False,
        integral_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        optimizable_params: Iterable[nn.Parameter] = (),
        **options: object,
    ) -> None:
        super().__init__(vector_field, solver, order, atol, rtol, sensitivity, solver_adjoint, atol_adjoint,
                         rtol_adjoint, interpolator, integral_loss, seminorm, True, optimizable_params, **options)

    def odeint(self, x: Tensor | Mapping[str, Tensor], t_span: TSpan, save_at: TSpan = (), args: object = None
               ) -> tuple[Tensor, Tensor | dict[str, Tensor]]:
        """``(t_eval, solution)`` of the solve from ``x`` over ``t_span``; ``save_at``, ``args`` and dict states as in
        :meth:`~nodecore.neuralode.NeuralODE.forward` (``args`` reach a solver class's own ``step``)."""
        return self.forward(x, t_span, save_at, args)


class MultipleShootingLayer(nn.Module):
    """A Neural ODE solved by multiple shooting (:func:`~nodecore.numerics.shooting.odeint_mshooting`).

    Args:
        vector_field: an ``nn.Module`` (or callable) taking ``x`` or ``(t, x)``; it must not depend on ``t``.
        solver: ``'mszero'`` (Parareal) or ``'msbackward'`` (Newton), or a multiple-shooting solver object.
        sensitivity: ``'autograd'`` (gradients flow through the iterations) or ``'adjoint'`` (torchdyn's
            ``'interpolated_adjoint'`` is the same here): the implicit-function-theorem gradient of the shooting
            solution, one sequential sweep of fine-solver vector–Jacobian products through the returned points,
            memory flat in ``maxiter`` (see :mod:`nodecore.numerics.shooting`). Exact for a converged solve
            (``maxiter`` >= the intervals, or a small defect).
        maxiter: shooting iterations; ``fine_steps``: points per interval of the fine solver.
        solver_adjoint, atol_adjoint, rtol_adjoint, seminorm, integral_loss: torchdyn's adjoint options. The
            adjoint here is the fine solver's own discrete one, so there is no adjoint ODE to configure: a
            ``solver_adjoint`` or ``integral_loss`` is refused; the tolerances and ``seminorm`` are accepted for
            torchdyn's signature and unused.

    Raises:
        ValueError: an unknown solver or sensitivity; NotImplementedError: ``solver_adjoint`` or ``integral_loss``.
    """

    def __init__(
        self,
        vector_field: nn.Module | Callable[..., Tensor],
        solver: str | MultipleShootingSolver,
        sensitivity: str = "autograd",
        maxiter: int = 4,
        fine_steps: int = 4,
        solver_adjoint: None = None,
        atol_adjoint: float = 1e-6,
        rtol_adjoint: float = 1e-6,
        seminorm: bool = False,
        integral_loss: None = None,
    ) -> None:
        super().__init__()
        self.sensitivity = choice("sensitivity", sensitivity, SHOOTING_SENSITIVITIES, plural="sensitivities")
        if solver_adjoint is not None or integral_loss is not None:
            given = "solver_adjoint" if solver_adjoint is not None else "integral_loss"
            raise NotImplementedError(
                f"{given} is not supported by multiple shooting: its adjoint is the fine solver's discrete one "
                "(no adjoint ODE is solved), and integral losses are not implemented; leave it None"
            )
        if isinstance(solver, str):
            choice("multiple-shooting solver", solver, tuple(MS_SOLVERS))
        self.vf = VectorField(vector_field)
        self.solver = solver
        self.maxiter = integer("maxiter", maxiter, minimum=0)
        self.fine_steps = integer("fine_steps", fine_steps, minimum=2)

    def forward(self, x: Tensor, t_span: TSpan, B0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(t_eval [N+1], solution [N+1, *x.shape])`` over the equally spaced ``t_span``."""
        return odeint_mshooting(self.vf, x, t_span, self.solver, B0, self.fine_steps, self.maxiter,
                                sensitivity=self.sensitivity)
