"""``NeuralODE``: a vector field integrated over depth, differentiated by autograd or the adjoint."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings
import weakref
from typing import Callable, Iterable, Literal, Mapping

import torch
from torch import Tensor, nn

from nodecore._checks import choice, integer, positive
from nodecore._compile import compiling
from nodecore._shapes import explained_shapes
from nodecore.errors import NonFiniteError, StabilityWarning, TooManyStepsError, translate_solver_assertion
from nodecore.fields import Time, VectorField
from nodecore.numerics.adjoint import BackwardSolve, odeint_adjoint
from nodecore.numerics.control import IntegralController
from nodecore.numerics.integrate import integrate, integrate_by_own_step, no_args, state_like, writes_own_step
from nodecore.numerics.interpolators import Interpolator
from nodecore.numerics.odeint import (
    MAPPING_STATE_HINT,
    check_step_inputs,
    describe,
    interpolates,
    interpolator_name,
    select_states,
    stack_states,
)
from nodecore.numerics.solvers import RungeKutta, real_dtype, time_tensor
from nodecore.names import (  # noqa: F401  (defaults shared with the pipeline's config)
    DEFAULT_ATOL,
    DEFAULT_ATOL_ADJOINT,
    DEFAULT_MAX_STEPS,
    DEFAULT_RTOL,
    DEFAULT_RTOL_ADJOINT,
    DEFAULT_SOLVER,
    SENSITIVITIES,
)
from nodecore.numerics.spans import TSpan, check_t_span, save_at_indices
from nodecore.numerics.registry import SOLVERS, Solver, get_solver
from nodecore.stats import SolveStats, StepCounter, _PhaseCounts

Sensitivity = Literal["autograd", "adjoint", "interpolated_adjoint"]

# Who integrates: nodecore's own engine (nodecore.numerics) or torchdiffeq's odeint.
BACKENDS: tuple[str, ...] = ("nodecore", "torchdiffeq")
#: The lowest ``order``; every integer from it up is valid (``order=k``: ``d^k x/dt^k = f(t, [x, ..., x^(k-1)])``).
MIN_ORDER: int = 1


class _Orders:
    """The orders :class:`NeuralODE` takes, as a container: every integer ``>= MIN_ORDER`` (``3 in ORDERS``).

    Bools and floats are not orders (``True in ORDERS`` and ``2.0 in ORDERS`` are False), as for ``order=``.
    """

    def __contains__(self, value: object) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= MIN_ORDER

    def __repr__(self) -> str:
        return f"<every integer order >= {MIN_ORDER}>"

    def __iter__(self):
        raise TypeError(f"ORDERS is every integer >= {MIN_ORDER} (it was the tuple (1, 2)); test membership "
                        "with `order in ORDERS` instead of listing it")


ORDERS = _Orders()

_NO_ARGS = object()  # a solver's own step called the field as f(t, x), without args
_CONTROLLER = IntegralController()  # torchdiffeq's step-size rule, so both backends take similar steps
# A constant-step solve whose final max |x| exceeds this factor times max(max |x0|, 1) warns (StabilityWarning).
BLOWUP_GROWTH = 1e8


def _hooked(module: nn.Module) -> bool:
    """Whether forward hooks (the module's own or global ones) see the module's calls, ``t`` included."""
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _first_parameter(module: nn.Module) -> nn.Parameter | None:
    """``next(module.parameters(), None)`` without its generator machinery: the same parameter (the first one of
    the first module, in ``modules()`` order, that holds any)."""
    for param in module._parameters.values():
        if param is not None:
            return param
    for child in module._modules.values():
        if child is not None:
            param = _first_parameter(child)
            if param is not None:
                return param
    return None


class _CheckedState:
    """The last initial state found finite, held weakly with its version counter: the same tensor, unmodified,
    need not be checked again (a check is a host sync). Copies and unpickled models start empty."""

    _ref: Callable[[], Tensor | None] | None = None
    _version: int = -1

    def holds(self, x: Tensor) -> bool:
        """Whether ``x`` is the remembered tensor, not written in place since."""
        ref = self._ref
        return ref is not None and ref() is x and not x.is_inference() and x._version == self._version

    def remember(self, x: Tensor) -> None:
        if not x.is_inference():  # inference tensors keep no version counter
            self._ref, self._version = weakref.ref(x), x._version

    def __getstate__(self) -> dict:
        return {}  # weak references do not pickle


class _SolveFunc:
    """What torchdiffeq integrates for one solve: the field plus counters and the step cap.

    A plain callable rather than an ``nn.Module``: it is called at every function evaluation, and a module
    call's hook machinery is measurable overhead on small fields.
    """

    def __init__(
        self,
        vf: VectorField,
        counter: StepCounter,
        *,
        max_steps: int,
        adaptive_forward: bool,
        adaptive_backward: bool,
        count: bool = True,
        checked: bool = False,
    ) -> None:
        self.vf = vf
        self.counter = counter
        # nodecore's engine counts evaluations itself; torchdiffeq's needs the field to.
        self.phase: _PhaseCounts = counter.forward if count else _PhaseCounts()
        self.max_steps = int(max_steps)
        # checked: an earlier solve already saw the field take and return states of this shape.
        self._shape_checked = checked
        if checked:
            self._choose_evaluate()
        # torchdiffeq warns about callbacks a solver cannot call, so only offer the ones it can.
        if adaptive_forward:
            self.callback_reject_step = self._reject_forward
        if adaptive_backward:
            self.callback_reject_step_adjoint = self._reject_backward

    @property
    def ignores_time(self) -> bool:
        """Whether nothing reads the time argument (the engine then skips computing stage times): the field
        cannot see it, and no hook on the wrapper is handed it."""
        return not _hooked(self.vf) and bool(getattr(self.vf, "ignores_time", False))

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.phase.nfe += 1
        if self._shape_checked:
            return self._evaluate(t, x)
        return self._first_evaluation(t, x)

    def for_engine(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The field as nodecore's engine calls it: this wrapper until the field has been checked, then the checked
        evaluation itself, carrying :attr:`ignores_time` (one Python call less per evaluation; the engine counts
        evaluations itself, so only torchdiffeq's solves need :meth:`__call__`'s count)."""
        if not self._shape_checked:
            return self
        evaluate = functools.partial(self._evaluate)
        evaluate.ignores_time = self.ignores_time
        return evaluate

    def call_from_step(self, t: Tensor, x: object, args: object = _NO_ARGS) -> object:
        """The field as a solver's own ``step`` sees it, torchdyn's ``f(t, x, args)``: ``args`` goes on to the field
        (:class:`_ArgsField`); called as ``f(t, x)`` on a tensor state it is the field of every solve, checked."""
        if args is _NO_ARGS and isinstance(x, Tensor):
            return self(t, x)
        self.phase.nfe += 1
        field = self.vf
        if not isinstance(field, _ArgsField):
            raise TypeError(
                f"the solver's step handed the vector field {describe(args)} after (t, x), but an order-"
                f"{getattr(field, 'order', 1)} field is called as f(t, z) only (torchdyn drops it there silently)"
            )
        return (field if _hooked(field) else field.forward)(t, x, args)

    def _first_evaluation(self, t: Tensor, x: Tensor) -> Tensor:
        """Evaluate the field, explaining a state it cannot take and a result not shaped like the state."""
        with explained_shapes("the vector field", {"the state x": x}, self.vf.vf):
            dx = self.vf(t, x)
        if not isinstance(dx, Tensor) or dx.shape != x.shape:
            got = tuple(dx.shape) if isinstance(dx, Tensor) else type(dx).__name__
            raise ValueError(
                f"the vector field must return a tensor shaped like the state {tuple(x.shape)}, got {got}; "
                "for an augmented state, put an Augmenter before the NeuralODE"
            )
        self._shape_checked = True
        self._choose_evaluate()
        return dx

    def _choose_evaluate(self) -> None:
        """Evaluations skip the wrapper module's call machinery unless someone hooked the wrapper."""
        wrapper = self.vf
        self._evaluate = wrapper if _hooked(wrapper) else wrapper.forward

    def _attempt(self, phase: _PhaseCounts, name: str) -> None:
        phase.attempts += 1
        if phase.attempts > self.max_steps:
            raise TooManyStepsError(
                f"the {name} solve exceeded max_steps={self.max_steps}: the dynamics may be stiff or the "
                "tolerances too tight; loosen atol/rtol, use a fixed-step solver, or raise max_steps"
            )

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self._attempt(self.counter.forward, "forward")

    def callback_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self._attempt(self.counter.backward, "backward (adjoint)")

    def _reject_forward(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.counter.forward.rejected += 1

    def _reject_backward(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.counter.backward.rejected += 1


def _derivative_name(k: int) -> str:
    """``x``, ``x'``, ``x''``, ``x'''``, then ``x^(4)``, ``x^(5)``, ...: the ``k``-th derivative of ``x``."""
    return "x" + "'" * k if k <= 3 else f"x^({k})"


def _state_blocks(order: int) -> str:
    """The blocks of a state of this order as messages name them: ``[position, velocity]`` for 2."""
    if order == 2:
        return "[position, velocity]"
    names = [_derivative_name(k) for k in range(order)]
    return f"[{', '.join(names if order <= 5 else [*names[:3], '...', names[-1]])}]"


def _fraction(order: int) -> str:
    """``half``, ``a third of``, ``a quarter of``, ``1/5 of``, ...: one block's share of a state of this order."""
    return {2: "half", 3: "a third of", 4: "a quarter of"}.get(order, f"1/{order} of")


class _HigherOrderField(VectorField):
    """The first-order form of an order-``k`` field (``k >= 2``), built as torchdyn builds it.

    The state is ``z = [x, x', ..., x^(k-1)]``: ``k`` blocks of ``n`` on the last dim (``k n`` in all; for
    ``k = 2``, ``[position, velocity]``). The user's field maps the whole state ``z [..., k n]`` (or ``(t, z)``)
    to the highest derivative ``x^(k) [..., n]`` (for ``k = 2``, the acceleration), and this module returns
    ``dz/dt = [x', ..., x^(k-1), f(t, z)] [..., k n]``. Being a :class:`VectorField`, it counts evaluations and
    keeps the user's module as ``.vf`` (the same weight names whatever the order).
    """

    def __init__(self, vf: nn.Module | Callable[..., Tensor], order: int) -> None:
        super().__init__(vf)
        self.order = int(order)

    def forward(self, t: Time, z: Tensor) -> Tensor:
        """``z = [x, ..., x^(k-1)] [..., k n] -> dz/dt = [x', ..., x^(k-1), f(t, z)] [..., k n]``."""
        order = self.order
        if z.ndim < 1 or z.shape[-1] % order:
            last = "an even last dimension" if order == 2 else f"a last dimension divisible by {order}"
            raise ValueError(
                f"order={order} needs a state {_state_blocks(order)} with {last}, got shape {tuple(z.shape)}"
            )
        n = z.shape[-1] // order
        top = super().forward(t, z)
        block = (*z.shape[:-1], n)
        if not isinstance(top, Tensor) or top.shape != block:
            got = tuple(top.shape) if isinstance(top, Tensor) else type(top).__name__
            what, like = (("the acceleration", "the velocity") if order == 2
                          else (_derivative_name(order), _derivative_name(order - 1)))
            raise ValueError(
                f"with order={order} the vector field must return {what} shaped like {like} "
                f"{block} ({_fraction(order)} the state's last dimension), got {got}"
            )
        # Each block's derivative is the next block: drop the first block, append the field's output.
        return torch.cat([z[..., n:], top], dim=-1)


def _parameters(vf: Callable) -> list[inspect.Parameter]:
    """The parameters of a field's call (its ``forward`` for a module); none when they cannot be read."""
    try:
        return list(inspect.signature(vf.forward if isinstance(vf, nn.Module) else vf).parameters.values())
    except (TypeError, ValueError):
        return []


def _declares_args(vf: Callable) -> bool:
    """Whether the field has a parameter named ``args``, which torchdyn's ``DEFunc`` fills by keyword."""
    return any(p.name == "args" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in _parameters(vf))


def _takes_third_positional(vf: Callable) -> bool:
    """Whether the field can be called as ``vf(t, x, extra)``."""
    params = _parameters(vf)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


class _ArgsField(VectorField):
    """A first-order field called as torchdyn's ``DEFunc`` calls it: ``f(t, x, args)`` reaches it as
    ``vf(t, x, args=args)``. Used for a field with an ``args`` parameter and with a solver that has its own ``step``.

    A field with an ``args`` parameter gets ``args={}`` when called as ``f(t, x)``, as from nodecore's solvers (which
    never hand args on, like torchdyn's). Otherwise what a solver's own step passes after ``(t, x)`` goes on to a
    field taking a third positional argument (``fun(t, x, cond)``); an empty one (None, ``{}``) is dropped for a
    field that takes none, as torchdyn drops it for an ``x``-only field; anything else is refused.
    """

    def __init__(self, vf: nn.Module | Callable[..., object]) -> None:
        super().__init__(vf)
        self.passes_args = self.takes_time and _declares_args(self.vf)
        self.takes_extra = self.takes_time and _takes_third_positional(self.vf)

    def forward(self, t: Time, x: object, args: object = _NO_ARGS) -> object:
        """``f(t, x, args)``; ``x`` a tensor, or a dict of tensors for a solver's own step."""
        if self.passes_args:
            return self._call(t, x, args={} if args is _NO_ARGS else args)
        if args is _NO_ARGS or (not self.takes_extra and no_args(args)):
            return self._call(t, x)
        if self.takes_extra:
            return self._call(t, x, args)
        takes, torchdyn = ("(t, x)", "fails") if self.takes_time else ("x", "drops it silently")
        raise TypeError(
            f"the solver's step handed the vector field {describe(args)} after (t, x), but the field takes {takes} "
            f"only (torchdyn {torchdyn}); give the field a parameter named args, fun(t, x, args), to receive it"
        )

    def _call(self, t: Time, x: object, *extra: object, **named: object) -> object:
        if not compiling():
            self._nfe[0] += 1
        for layer in self._depth_layers:
            layer.t = t
        if not self.takes_time:
            return self.vf(x)
        if not isinstance(t, Tensor):
            t = time_tensor(t, state_like(x))
        return self.vf(t, x, *extra, **named)


def _solver_options(solver: Solver, step_size: float | None, t_span: Tensor) -> dict:
    """torchdiffeq options for a solver; with ``step_size`` every solver takes constant steps."""
    if step_size is None:
        return {}
    if solver.adaptive:
        # min_step == max_step pins the step (torchdiffeq accepts every step at min_step); step_t shortens
        # the step that would cross a point of t_span, so no step overshoots the end of the solve.
        return {"first_step": step_size, "min_step": step_size, "max_step": step_size, "step_t": t_span}
    return {"step_size": step_size}


class NeuralODE(nn.Module):
    """A Neural ODE: ``dx/dt = f(t, x)`` integrated over ``t_span``.

    ``model(x, t_span)`` returns ``(t_eval [T], trajectory [T, *x.shape])``; ``trajectory[0]`` is ``x``. With
    ``return_t_eval=False`` it returns the trajectory alone, so the model chains inside ``nn.Sequential``.

    The arguments up to ``optimizable_params`` are torchdyn's, in torchdyn's positional order
    (``NeuralODE(f, 'rk4')`` works); the rest are nodecore's and keyword-only.

    Args:
        vector_field: an ``nn.Module`` (or callable) taking ``x`` or ``(t, x)``.
        solver: a name from :data:`nodecore.solvers.SOLVER_NAMES` (default ``'tsit5'``, torchdyn's), or a
            solver object such as ``HyperEuler(hypernet)`` (registered as
            the submodule ``solver_module``, so its parameters train with the model; such models run on the
            nodecore backend, and their checkpoints cannot rebuild the solver by name).
        order: any integer ``k >= 1`` (default 1, ``dx/dt = f(t, x)``), as in torchdyn. For ``k >= 2`` the
            state is ``z = [x, x', ..., x^(k-1)]``, ``k`` blocks of ``n`` concatenated on the last dim (``k n``;
            for ``k = 2``, ``[position, velocity]``); the field takes the whole state ``z`` (or ``(t, z)``) and
            returns the highest derivative ``x^(k)`` (``n``; for ``k = 2``, the acceleration), and the model
            integrates ``dz/dt = [x', ..., x^(k-1), f(t, z)]``. Then ``model.vf(t, z)`` returns that full
            first-order derivative (``k n``, for plotting). With ``integral_loss`` and ``'autograd'`` the cost
            column comes first, outside the blocks: ``[c, x, ..., x^(k-1)]`` (``1 + k n``).
        atol, rtol: forward tolerances of adaptive solvers (default 1e-3, torchdyn's).
        sensitivity: ``'autograd'`` backpropagates through the solver (fast, memory grows with steps);
            ``'adjoint'`` solves the adjoint ODE backwards (memory flat in the number of steps);
            ``'interpolated_adjoint'`` too, reading the state off the forward's dense output instead of
            solving it backwards (memory grows with forward steps; fixed-step solvers keep a cubic Hermite
            interpolant of each step; not for solvers that override ``step``, such as hypersolvers).
        solver_adjoint: solver for the adjoint solve; the forward solver when None.
        atol_adjoint, rtol_adjoint: tolerances of the backward adjoint solve (default 1e-4).
        interpolator: None (default, torchdyn's) or ``'step'``: adaptive solvers step onto every point of
            ``t_span``, so each is a step end, and the adjoints' backward solve restarts at every point too, as
            torchdyn's does. ``'dense'`` or torchdyn's ``'4th'``: they step freely and read the inner points off
            their own dense output (as torchdiffeq does): within the tolerance, and far fewer steps for a dense
            ``t_span``. With ``backend='torchdiffeq'`` None means torchdiffeq's dense output (it cannot step
            onto points, so ``'step'`` is refused there).
        integral_loss: torchdyn's running cost ``l(t, x)``. With ``sensitivity='autograd'`` the state carries it
            in its first column (pass ``x0 = [0, x]`` on dim 1; ``trajectory[-1][:, 0]`` is ``∫ l dt``); with the
            adjoints the backward pass adds its gradient, as if ``∫ l dt`` were part of the loss (nodecore
            backend only).
        seminorm: in adjoint mode, leave the parameter-gradient channels out of the backward step-size
            control (Kidger et al. 2021): same gradients to tolerance, far fewer backward steps. Default off,
            as in torchdyn; turn it on for faster adjoint training (the pipeline does).
        return_t_eval: forward returns ``(t_eval, trajectory)`` when True (default), ``trajectory`` when False.
        optimizable_params: ``nn.Parameter``s the field uses but does not hold (e.g. captured by a plain
            function); they are registered on ``model.vf``, so the optimiser and the adjoint see them.
        step_size: constant step. Fixed-step solvers step on ``t_span`` when None; adaptive solvers given
            a step size take constant steps without error control.
        max_steps: cap on steps per solve (forward and backward each); exceeding it raises
            :class:`~nodecore.errors.TooManyStepsError` instead of looping for ever.
        t_span: the default depths ``[T]`` of ``forward(x)``, stored as ``model.t_span``; None means ``[0, 1]``.
        backend: ``'nodecore'`` (default) integrates with nodecore's own engine (:mod:`nodecore.numerics`);
            ``'torchdiffeq'`` with torchdiffeq's ``odeint`` (there ``'rk4'`` is the 3/8 rule and ``'dopri8'``
            torchdiffeq's own 8th-order pair). A ``t_span`` that requires grad always uses torchdiffeq.

    Attributes:
        t_span: the depths ``forward(x)`` integrates over when called without ``t_span``; assign to it (as
            torchdyn code does, e.g. ``model.t_span = torch.linspace(1, 0, 2)`` to run a CNF backwards).

    Raises:
        ValueError: unknown solver, sensitivity, interpolator or backend (the message lists the valid ones),
            an ``order`` that is not an integer >= 1, bad tolerances, or options the torchdiffeq backend cannot
            run (a solver object, ``integral_loss``, ``'interpolated_adjoint'``, ``interpolator='step'``).
        TypeError: an ``integral_loss`` that is not callable; ``'adjoint'`` with a plain function holding no
            parameters.
    """

    def __init__(
        self,
        vector_field: nn.Module | Callable[..., Tensor],
        solver: str | RungeKutta = DEFAULT_SOLVER,
        order: int = 1,
        atol: float = DEFAULT_ATOL,
        rtol: float = DEFAULT_RTOL,
        sensitivity: Sensitivity = "autograd",
        solver_adjoint: str | RungeKutta | None = None,
        atol_adjoint: float = DEFAULT_ATOL_ADJOINT,
        rtol_adjoint: float = DEFAULT_RTOL_ADJOINT,
        interpolator: str | Interpolator | None = None,
        integral_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        seminorm: bool = False,
        return_t_eval: bool = True,
        optimizable_params: Iterable[nn.Parameter] = (),
        *,
        step_size: float | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        t_span: TSpan | None = None,
        backend: str = "nodecore",
    ) -> None:
        super().__init__()
        order = integer("order", order, minimum=MIN_ORDER)
        sensitivity = choice("sensitivity", sensitivity, SENSITIVITIES, plural="sensitivities")
        max_steps = integer("max_steps", max_steps, minimum=1)
        return_t_eval = choice("return_t_eval", return_t_eval, (True, False), plural="values")
        seminorm = choice("seminorm", seminorm, (True, False), plural="values")
        self.backend = choice("backend", backend, BACKENDS)
        self.interpolator = interpolator_name(interpolator)  # a torchdyn FourthOrder() is kept as "4th"
        self._interpolate = interpolates(self.interpolator)
        if integral_loss is not None and not callable(integral_loss):
            raise TypeError(f"integral_loss must be a callable (t, x) -> loss, got {type(integral_loss).__name__}")
        self.integral_loss = integral_loss
        extra_params = _optimizable_params(optimizable_params)
        if sensitivity != "autograd" and not isinstance(vector_field, nn.Module) and not extra_params:
            raise TypeError(
                "sensitivity='adjoint' returns gradients for the field's parameters only, so the field must be an "
                f"nn.Module holding them (got {type(vector_field).__name__}); tensors a plain function captures "
                "would silently get no gradient. Wrap it in an nn.Module, pass them as optimizable_params, or "
                "use sensitivity='autograd'"
            )
        self.order = order
        self.solver, stepper = _solver_entry(solver)
        # A solver class of the user's own is stepped through its step, which torchdyn hands args and dict states.
        self._by_own_step = writes_own_step(stepper)
        field = VectorField(vector_field) if order == 1 else _HigherOrderField(vector_field, order)
        if order == 1 and (self._by_own_step or _declares_args(field.vf)):
            field = _ArgsField(vector_field)
        self.vf = field

        held = {id(p) for p in self.vf.parameters()}
        for k, param in enumerate(p for p in extra_params if id(p) not in held):
            self.vf.register_parameter(f"optimizable_parameter_{k}", param)
        if solver_adjoint is None:
            self.solver_adjoint, stepper_adjoint = self.solver, stepper
        else:
            self.solver_adjoint, stepper_adjoint = _solver_entry(solver_adjoint)
        self.sensitivity = sensitivity
        if self.backend == "torchdiffeq":
            self._check_torchdiffeq_can_run("backend='torchdiffeq'")
        if sensitivity == "interpolated_adjoint" and type(stepper).step is not RungeKutta.step:
            raise ValueError(
                f"sensitivity='interpolated_adjoint' reads the forward solution off an interpolant of the solver's "
                f"steps, which solver {self.solver.name!r} (it overrides step(), e.g. a hypersolver) cannot give; "
                f"use sensitivity='adjoint' or 'autograd', or one of: {', '.join(SOLVERS)}"
            )
        # Registry solvers are plain attributes (no state); a solver object the user passed, such as a
        # hypersolver, is a submodule, so its parameters train and move with the model.
        object.__setattr__(self, "_stepper", stepper)
        object.__setattr__(self, "_stepper_adjoint", stepper_adjoint)
        if isinstance(solver, RungeKutta):
            self.solver_module = solver
        if isinstance(solver_adjoint, RungeKutta) and solver_adjoint is not solver:
            self.solver_adjoint_module = solver_adjoint
        self.atol, self.rtol = positive("atol", atol), positive("rtol", rtol)
        self.atol_adjoint = positive("atol_adjoint", atol_adjoint)
        self.rtol_adjoint = positive("rtol_adjoint", rtol_adjoint)
        self.seminorm = bool(seminorm)
        self.step_size = None if step_size is None else positive("step_size", step_size)
        self.max_steps = int(max_steps)
        self.return_t_eval = return_t_eval
        self.t_span = t_span
        self._counter = StepCounter()
        self._checked_t_span: tuple = (None, None, None, None, None)
        self._finite_state = _CheckedState()
        self._field_checked_for: tuple | None = None

    def _check_torchdiffeq_can_run(self, why: str) -> None:
        """Raise when this model's options need nodecore's engine; ``why`` says what asked for torchdiffeq."""
        if not (self.solver.method and self.solver_adjoint.method):
            raise ValueError(
                f"{why} runs registered solvers by name only, got {self.solver.name} ({self.solver.description}); "
                "use a name from nodecore.solvers.SOLVER_NAMES"
            )
        if self.integral_loss is not None or self.sensitivity == "interpolated_adjoint" or self.interpolator == "step":
            raise ValueError(
                f"{why}: integral_loss, sensitivity='interpolated_adjoint' and interpolator='step' need nodecore's "
                "engine (backend='nodecore' and a t_span that does not require grad)"
            )

    def extra_repr(self) -> str:
        return (f"solver={self.solver.name}, sensitivity={self.sensitivity}, atol={self.atol}, rtol={self.rtol}, "
                f"NFE={self.vf.nfe}")

    def options(self) -> dict[str, object]:
        """The constructor's keyword arguments (all but the field): ``NeuralODE(f, **model.options())``."""
        return {
            "solver": self.solver.name,
            "sensitivity": self.sensitivity,
            "atol": self.atol,
            "rtol": self.rtol,
            "atol_adjoint": self.atol_adjoint,
            "rtol_adjoint": self.rtol_adjoint,
            "solver_adjoint": self.solver_adjoint.name,
            "seminorm": self.seminorm,
            "step_size": self.step_size,
            "max_steps": self.max_steps,
            "order": self.order,
            "return_t_eval": self.return_t_eval,
            "t_span": None if self.t_span is None else torch.as_tensor(self.t_span).tolist(),
            "interpolator": self.interpolator,
            "backend": self.backend,
        }

    @property
    def stats(self) -> SolveStats:
        """NFE and step counts of the last forward pass and of the backward pass that followed it."""
        return self._counter.snapshot()

    def forward(
        self,
        x: Tensor | Mapping[str, Tensor],
        t_span: TSpan | None = None,
        save_at: TSpan = (),
        args: object = None,
    ) -> tuple[Tensor, Tensor] | Tensor:
        """Integrate from ``x`` over ``t_span``.

        With a solver class of your own whose ``step`` overrides the solvers' (torchdyn's custom solvers), that step
        is called as torchdyn calls it, ``step(f, x, t, dt, k1=None, args=args)``, and its ``f(t, x, a)`` reaches
        the vector field as ``vf(t, x, args=a)`` (a field with a parameter named ``args``; a field
        ``vf(t, x, cond)`` gets it positionally). A field with an ``args`` parameter gets ``args={}`` when called
        as ``f(t, x)``, from any solver.

        Args:
            x: initial state ``[B, D]`` (any shape the field accepts), floating point or complex (``t_span`` stays
                real; the field's parameters may be complex or real of the same precision). With a fixed-step
                solver class of your own and ``sensitivity='autograd'``, also a dict of such tensors (torchdyn's
                dict-valued states): the trajectory is then a dict of ``[S, *x[key].shape]``, stacked per key.
            t_span: ``[T]`` depths, strictly increasing or strictly decreasing (a backward solve), on
                ``x``'s device. None uses ``self.t_span``, and ``[0, 1]`` when that is None too.
            save_at: ``[S]`` points of ``t_span`` at which to return the solution (all of ``t_span`` when
                empty). The solve still steps on ``t_span``, so fixed-step solvers give the same values.
                Unlike torchdyn, adaptive solvers honour it too.
            args: handed to every call of a solver's own ``step`` (``{}`` when None, torchdyn's default); refused
                when non-empty with a solver whose ``step`` is nodecore's (it would never be read, which torchdyn
                does silently) and with the adjoints (whose backward solve it cannot reach; torchdyn fails there).

        Returns:
            ``(t_eval [S], trajectory [S, *x.shape])``, or ``trajectory`` alone when ``return_t_eval`` is False;
            ``S = T`` without ``save_at``.

        Raises:
            ValueError: bad ``x``, ``t_span`` or ``save_at`` (a point not in ``t_span``), a non-empty ``args`` that
            cannot reach a solver's own step; TypeError: ``x`` is not a tensor, or a dict this model cannot step;
            InputShapeError (a ValueError): the field cannot take a state of ``x``'s shape (the message names
            it and the ``in_features`` of the field's first layer, when it has one);
            NonFiniteError, StepSizeUnderflowError, TooManyStepsError: the solve failed.

        Warns:
            StabilityWarning: a constant-step solve (a fixed-step solver, or ``step_size`` given) ended with
            ``max |x(T)| > BLOWUP_GROWTH * max(max |x0|, 1)`` (``BLOWUP_GROWTH = 1e8``): most likely the step is
            too large for stiff dynamics. Checked once per solve, in the same host sync as the NaN/Inf check.
        """
        if not isinstance(x, Tensor) or not no_args(args):
            self._check_step_inputs(x, args)
            if isinstance(x, Mapping):
                return self._forward_mapping(x, self.t_span if t_span is None else t_span, save_at, args)
        t_span = self._check_inputs(x, self.t_span if t_span is None else t_span)
        keep = None if isinstance(save_at, tuple) and not save_at else save_at_indices(save_at, t_span)
        vf = self.vf  # a submodule: each attribute read goes through nn.Module.__getattr__
        for hook in vf.before_solve_hooks:  # e.g. a CNF draws this solve's Hutchinson noise
            hook(x)
        excess = vf.excess_dims
        for layer in vf.control_layers:  # DataControl: the field sees where each sample started
            layer.u = x[:, excess:] if excess else x  # without a CNF's log-density column (torchdyn's rule)
        counter = StepCounter()
        self._counter = counter
        # Gradients with respect to t_span need torchdiffeq: nodecore's engine keeps times on the host.
        backend = "torchdiffeq" if t_span.requires_grad else self.backend
        if backend != self.backend:
            self._check_torchdiffeq_can_run("a t_span that requires grad (solved by torchdiffeq)")
        if backend == "torchdiffeq" and x.is_complex() and self.sensitivity != "autograd":
            raise ValueError(
                f"a complex state with sensitivity={self.sensitivity!r} needs nodecore's engine (backend='nodecore' "
                "and a t_span that does not require grad): the torchdiffeq backend's adjoint is real-only; "
                "sensitivity='autograd' works there"
            )
        shape_key = (x.shape, x.dtype, x.device)
        func = _SolveFunc(
            vf,
            counter,
            max_steps=self.max_steps,
            adaptive_forward=self.solver.adaptive,
            adaptive_backward=self.solver_adjoint.adaptive,
            count=backend == "torchdiffeq",
            checked=self._field_checked_for == shape_key,
        )
        try:
            if backend == "nodecore":
                trajectory = self._integrate_nodecore(func, counter, x, t_span, args)
            else:
                trajectory = self._integrate(func, x, t_span)
        except AssertionError as err:  # torchdiffeq signals solve failures with assertions
            raise translate_solver_assertion(err) from err
        if backend == "torchdiffeq":
            func.phase = counter.backward  # any later evaluation belongs to the backward pass
        if func._shape_checked and self._field_checked_for != shape_key:
            self._field_checked_for = shape_key
        # Adaptive solvers reject non-finite steps until the step size underflows (an error above); a
        # fixed-step solve, or an adaptive solver pinned to constant steps, can end on NaN or Inf, or on a
        # finite but exploded state.
        if not self.solver.adaptive or self.step_size is not None:
            self._check_constant_step_result(x, trajectory[-1], t_span)
        t_eval = t_span
        if keep is not None:
            t_eval, trajectory = t_span[keep], trajectory[keep]
        self._last_t_eval = t_eval
        return (t_eval, trajectory) if self.return_t_eval else trajectory

    def solve(self, x: Tensor, t_span: TSpan | None = None) -> tuple[Tensor, Tensor]:
        """``(t_eval [T], trajectory [T, *x.shape])``, whatever ``return_t_eval`` is (for models built on this one)."""
        output = self(x, t_span)
        return output if self.return_t_eval else (self._last_t_eval, output)

    def _check_step_inputs(self, x: object, args: object) -> None:
        """Refuse a non-empty ``args`` or a dict state that this model cannot hand to a solver's own step."""
        check_step_inputs(x, args, self._stepper, self.solver.name)
        mapping = isinstance(x, Mapping)
        if not mapping and no_args(args):
            return  # neither a dict nor args: _check_inputs explains what x is
        if self.sensitivity != "autograd":
            sensitivity = f"sensitivity={self.sensitivity!r}"
            autograd = "use sensitivity='autograd', which backpropagates through the solver's own step"
            if mapping:
                raise TypeError(f"a dict state with {sensitivity}: the adjoint solves for one tensor state (torchdyn's "
                                f"adjoints fail on a dict too); {autograd}, or {MAPPING_STATE_HINT}")
            raise ValueError(f"args={describe(args)} with {sensitivity}: the adjoint's backward solve steps the "
                             "adjoint system, which args cannot reach (torchdyn's adjoints fail on a non-empty args); "
                             f"{autograd}, or capture the values in the field")
        if mapping:
            needs = [name for name, given in (
                (f"order={self.order}", self.order > 1), ("integral_loss", self.integral_loss is not None),
                ("a DataControl layer", bool(self.vf.control_layers)),
                ("a per-solve hook (a CNF's before_odeint)", bool(self.vf.before_solve_hooks)),
            ) if given]
            if needs:
                raise TypeError(f"a dict state cannot be used with {', '.join(needs)}, which need a tensor state "
                                f"(as in torchdyn); {MAPPING_STATE_HINT}")

    def _forward_mapping(self, x: Mapping[str, Tensor], t_span: TSpan | None, save_at: TSpan, args: object
                         ) -> tuple[Tensor, dict[str, Tensor]] | dict[str, Tensor]:
        """``forward`` for a dict state (checked by :meth:`_check_step_inputs`): the solver's own fixed step steps it,
        and the trajectory is stacked per key."""
        like = state_like(x)
        t_span = check_t_span(t_span, like)
        if t_span.requires_grad:
            self._check_torchdiffeq_can_run("a t_span that requires grad (solved by torchdiffeq)")
        for key, value in x.items():
            if value.numel() == 0 or not torch.isfinite(value).all():
                raise ValueError(f"x[{key!r}] must be a non-empty finite tensor, got shape {tuple(value.shape)}"
                                 + ("" if value.numel() == 0 else " with NaN or Inf"))
        keep = save_at_indices(save_at, t_span)
        counter = StepCounter()
        self._counter = counter
        func = _SolveFunc(self.vf, counter, max_steps=self.max_steps, adaptive_forward=False,
                          adaptive_backward=False, count=False)
        trajectory = stack_states(integrate_by_own_step(
            func.call_from_step, x, t_span.tolist(), self._stepper, args=args, counts=counter.forward,
            max_steps=self.max_steps, step_size=self.step_size, label="forward", atol=self.atol, rtol=self.rtol,
        ))
        self._check_constant_step_result(x, {key: value[-1] for key, value in trajectory.items()}, t_span)
        t_eval = t_span
        if keep is not None:
            t_eval, trajectory = t_span[keep], select_states(trajectory, keep)
        self._last_t_eval = t_eval
        return (t_eval, trajectory) if self.return_t_eval else trajectory

    def _check_constant_step_result(self, x: Tensor | Mapping[str, Tensor], final: Tensor | Mapping[str, Tensor],
                                    t_span: Tensor) -> None:
        """Raise on NaN/Inf in ``final``; warn when it grew past the blow-up rule (one host sync in all)."""
        with torch.no_grad():
            start, end = torch.stack([_max_abs(x), _max_abs(final)]).tolist()
        if not math.isfinite(end):  # amax propagates NaN, and |-inf| is inf
            raise NonFiniteError(
                "the solution contains NaN or Inf: the dynamics blew up; use a smaller step_size, an "
                "adaptive solver, tighter tolerances, or check the vector field and inputs"
            )
        if end > BLOWUP_GROWTH * max(start, 1.0):
            step = self.step_size if self.step_size is not None else float(t_span.diff().abs().max())
            warnings.warn(
                f"the constant-step {self.solver.name!r} solve (step size {step:g}) grew the state from max |x0| = "
                f"{start:.3g} to max |x(T)| = {end:.3g}, more than {BLOWUP_GROWTH:.0e} times max(|x0|, 1): the "
                "dynamics are probably too stiff for this step and the result is likely a numerical blow-up; use an "
                "adaptive solver (e.g. 'dopri5') or a smaller step_size",
                StabilityWarning,
                stacklevel=2,
            )

    def trajectory(self, x: Tensor, t_span: TSpan | None = None) -> Tensor:
        """The states only: ``trajectory [T, *x.shape]``, whatever ``return_t_eval`` is."""
        return self.solve(x, t_span)[1]

    def _integrate_nodecore(self, func: _SolveFunc, counter: StepCounter, x: Tensor, t_span: Tensor, args: object
                            ) -> Tensor:
        times = t_span.tolist()
        engine = func.for_engine()
        field = engine if self.integral_loss is None or self.sensitivity != "autograd" else _with_running_cost(
            engine, self.integral_loss)

        def solve(x0: Tensor, dense_steps: list | None = None) -> Tensor:
            if self._by_own_step and self.sensitivity == "autograd":  # torchdyn's loop: args reach the step
                return torch.stack(integrate_by_own_step(
                    func.call_from_step if field is engine else field, x0, times, self._stepper, args=args,
                    counts=counter.forward, max_steps=self.max_steps, step_size=self.step_size, label="forward",
                    atol=self.atol, rtol=self.rtol,
                ))
            return torch.stack(integrate(
                field, x0, times, self._stepper, atol=self.atol, rtol=self.rtol, controller=_CONTROLLER,
                counts=counter.forward, max_steps=self.max_steps, interpolate=self._interpolate,
                step_size=self.step_size, label="forward", dense_steps=dense_steps,
            ))

        if self.sensitivity == "autograd":
            return solve(x)
        backward = BackwardSolve(
            solver=self._stepper_adjoint, atol=self.atol_adjoint, rtol=self.rtol_adjoint, controller=_CONTROLLER,
            counts=counter.backward, max_steps=self.max_steps, step_size=self.step_size, seminorm=self.seminorm,
            interpolated=self.sensitivity == "interpolated_adjoint", integral_loss=self.integral_loss,
            forward_solver=self._stepper, restart_at_every_time=not self._interpolate,
        )
        # A data-controlled field depends on x0 through its control too: the adjoint returns that gradient as
        # for a parameter, and autograd adds it to the one through the initial state.
        controls = (x,) if self.vf.control_layers and x.requires_grad else ()
        return odeint_adjoint(func, x, times, solve=solve, params=(*self.vf.parameters(), *controls),
                              backward=backward)

    def _integrate(self, func: _SolveFunc, x: Tensor, t_span: Tensor) -> Tensor:
        odeint, odeint_adjoint_flat = _torchdiffeq()
        options = _solver_options(self.solver, self.step_size, t_span)
        if self.sensitivity == "autograd":
            return odeint(func, x, t_span, rtol=self.rtol, atol=self.atol, method=self.solver.method, options=options)
        return odeint_adjoint_flat(
            func,
            x,
            t_span,
            solve=lambda x0, t: odeint(func, x0, t, rtol=self.rtol, atol=self.atol, method=self.solver.method,
                                       options=options),
            params=(*self.vf.parameters(), *((x,) if self.vf.control_layers and x.requires_grad else ())),
            method=self.solver_adjoint.method,
            adaptive=self.solver_adjoint.adaptive,
            options=_solver_options(self.solver_adjoint, self.step_size, t_span),
            rtol=self.rtol_adjoint,
            atol=self.atol_adjoint,
            seminorm=self.seminorm,
        )

    def _check_inputs(self, x: Tensor, t_span: TSpan | None) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise ValueError(f"x must be floating point or complex, got dtype {x.dtype}; convert it with x.float()")
        if x.ndim < 1 or x.numel() == 0:
            raise ValueError(f"x must be a non-empty state tensor such as [batch, dim], got shape {tuple(x.shape)}")
        # torchdyn's autograd integral loss runs in a leading cost column on dim 1, outside the derivative
        # blocks; it is on the blocks' (last) dim only for a [B, 1 + k n] state.
        cost_columns = int(self.integral_loss is not None and self.sensitivity == "autograd" and x.ndim == 2)
        if self.order > 1 and (x.shape[-1] - cost_columns) % self.order:
            size = "even size 2n" if self.order == 2 else f"size a multiple of {self.order}, {self.order}n"
            cost = ", after integral_loss's cost column" if cost_columns else ""
            raise ValueError(
                f"order={self.order} needs x = {_state_blocks(self.order)} concatenated on the last dim "
                f"({size}{cost}), got shape {tuple(x.shape)}"
            )
        # Full-batch training passes the same x and t_span every step: their values are checked once while they
        # are unmodified (under torch.compile every time: the caches keep tensors by identity and version counter,
        # which Dynamo cannot trace).
        cached = not compiling()
        if not (cached and self._finite_state.holds(x)):
            if not torch.isfinite(x).all():
                raise ValueError("x contains NaN or Inf; the initial state must be finite")
            if cached:
                self._finite_state.remember(x)
        param = _first_parameter(self.vf)
        # A complex state may meet real parameters of its precision (torch promotes real * complex); a real
        # state may not meet complex ones (the field would leave the real state space).
        if param is not None and (param.device != x.device or param.dtype not in (x.dtype, real_dtype(x.dtype))):
            hint = ("make x complex too, e.g. x.to(param.dtype)" if param.dtype.is_complex and not x.is_complex()
                    else "move one to the other, e.g. model.to(x.device, x.dtype)")
            raise ValueError(
                f"x is {x.dtype} on {x.device} but the vector field's parameters are {param.dtype} on "
                f"{param.device}; {hint}"
            )
        # The t_span cache holds the tensor itself, so an identical object is never a different tensor.
        seen, version, device, dtype, checked = self._checked_t_span
        if not (cached and isinstance(t_span, Tensor) and t_span is seen and t_span._version == version
                and (device, dtype) == (x.device, x.dtype)):
            checked = check_t_span(t_span, x)
            if cached and isinstance(t_span, Tensor) and not t_span.is_inference():  # inference: no version
                self._checked_t_span = (t_span, t_span._version, x.device, x.dtype, checked)
        t_span = checked
        if self.sensitivity != "autograd" and t_span.requires_grad:
            raise ValueError("gradients with respect to t_span need sensitivity='autograd'")
        return t_span


def _max_abs(state: Tensor | Mapping[str, Tensor]) -> Tensor:
    """``max |state|`` as a 0-dim tensor; over every entry of a dict state (then float64, on the CPU)."""
    if isinstance(state, Tensor):
        return state.detach().abs().amax()
    return torch.stack([value.detach().abs().amax().to("cpu", torch.float64) for value in state.values()]).amax()


def _with_running_cost(func: Callable[[Tensor, Tensor], Tensor], cost: Callable[[Tensor, Tensor], Tensor]
                       ) -> Callable[[Tensor, Tensor], Tensor]:
    """torchdyn's autograd integral loss: the state is ``[c, x]`` (``c`` one column on dim 1, started at 0) and
    ``dc/dt = cost(t, x)``, so ``trajectory[-1][:, 0]`` is ``∫ cost dt``."""

    def field(t: Tensor, z: Tensor) -> Tensor:
        x = z[:, 1:]
        running = cost(t, x)
        return torch.cat([running.reshape(z.shape[0], -1).sum(1, keepdim=True), func(t, x)], dim=1)

    return field


def _torchdiffeq() -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """torchdiffeq's ``odeint`` (nodecore's tsit5 registered with it) and the adjoint on top of it, imported on first
    use: torchdiffeq imports SciPy's integrators (about 0.35 s), which nodecore's own engine never needs."""
    import nodecore.tsit5  # noqa: F401  (registers tsit5 with torchdiffeq)
    from nodecore.adjoint import odeint_adjoint_flat
    from torchdiffeq import odeint

    return odeint, odeint_adjoint_flat


def _solver_entry(solver: str | RungeKutta) -> tuple[Solver, RungeKutta]:
    """The registry entry and solver object of a solver name or object (a name-less entry for objects)."""
    if isinstance(solver, type) and issubclass(solver, RungeKutta):
        solver = solver()
    if isinstance(solver, RungeKutta):
        entry = Solver(type(solver).__name__, solver.order, solver.adaptive, type(solver), "",
                       f"user-supplied {type(solver).__name__} object")
        return entry, solver
    entry = get_solver(solver)
    return entry, entry.build()


def _optimizable_params(params: Iterable[nn.Parameter]) -> tuple[nn.Parameter, ...]:
    """torchdyn's ``optimizable_params`` as a tuple, each checked to be an ``nn.Parameter``."""
    params = tuple(params)
    for param in params:
        if not isinstance(param, nn.Parameter):
            raise TypeError(
                f"optimizable_params must hold nn.Parameter objects, got {type(param).__name__}; "
                "wrap a tensor as nn.Parameter(tensor)"
            )
    return params
