"""Neural SDEs: torchdyn's ``NeuralSDE`` and ``SDEProblem``, integrated by torchsde.

``dx = f(t, x) ds + g(t, x) dW`` with a learned drift ``f`` and diffusion ``g``. torchsde does the stepping
(``torchsde.sdeint``, or ``torchsde.sdeint_adjoint`` for ``sensitivity='adjoint'``); this module checks the
options and shapes before any work starts and wraps the user's modules in torchsde's SDE interface.

``NeuralSDE`` takes both torchdyn signatures: 1.0.6's (its positional order; ``s_span``, ``model(x)`` returning
the final state) and master's keywords (``t_span``, ``bm``, ``return_t_eval``, ``interpolator``;
``model(x, t_span)`` returning ``(t_eval, trajectory)``). The latent SDE is in :mod:`nodecore.models.latent_sde`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torchsde
from torch import Tensor, nn

from nodecore._checks import choice, integer, positive
from nodecore._shapes import explained_shapes
from nodecore.fields import Time, VectorField
from nodecore.numerics.spans import save_at_indices
from nodecore.numerics.solvers.sde import (  # noqa: F401  (the registry's names, importable from here as before)
    NOISE_TYPES,
    SDE_SOLVER_NAMES,
    SDE_SOLVERS,
    SDE_TYPES,
    NoiseType,
    SDESolver,
    SDEType,
    TORCHDYN_SDE_SOLVERS,
    check_diffusion,
    check_sde_interface,
    check_sde_options,
    resolve_sde_solver,
)

SDESensitivity = Literal["autograd", "adjoint"]
SSpan = Tensor | Sequence[float]

SDE_SENSITIVITIES: tuple[str, ...] = ("autograd", "adjoint")
SDE_ORDERS: tuple[int, ...] = (1,)


class SDEAccuracyWarning(RuntimeWarning):
    """An SDE solve will converge, but more slowly than its solver's order promises."""


# Solvers whose diagonal-noise step uses the diffusion's derivative (see SDEProblem._uses_diffusion_derivative).
_DERIVATIVE_SOLVERS: tuple[str, ...] = ("milstein", "srk")


class SDEFunc(nn.Module):
    """A drift and a diffusion as torchsde's SDE: ``f(t, x)``, ``g(t, x)``, ``noise_type``, ``sde_type``.

    Each may be an ``nn.Module`` (or callable) taking ``x`` or ``(t, x)``; :class:`~nodecore.fields.DepthCat`
    and :class:`~nodecore.fields.DepthAware` layers inside receive ``t`` before each call.

    Args:
        f: the drift, ``x [B, D] -> [B, D]``.
        g: the diffusion, ``x [B, D] ->`` the shape of ``noise_type`` (``[B, D]`` diagonal, ``[B, D, m]``
            general or additive, ``[B, D, 1]`` scalar).
        order: 1 (the only order implemented).
        noise_type, sde_type: torchsde's, see :data:`NOISE_TYPES` and :data:`SDE_TYPES` (positional after
            ``order``, as in torchdyn master's ``SDEFunc(f, g, order, noise_type, sde_type)``).

    Attributes:
        drift, diffusion: the :class:`~nodecore.fields.VectorField` wrappers (``drift.vf`` is ``f``).
        nfe: drift evaluations (torchdyn counts these); ``nfe_diffusion``: diffusion evaluations.
    """

    def __init__(
        self,
        f: nn.Module | Callable[..., Tensor],
        g: nn.Module | Callable[..., Tensor],
        order: int = 1,
        noise_type: NoiseType = "diagonal",
        sde_type: SDEType = "ito",
    ) -> None:
        super().__init__()
        self.order = _check_order(order)
        self.noise_type = choice("noise_type", noise_type, NOISE_TYPES)
        self.sde_type = choice("sde_type", sde_type, SDE_TYPES)
        self.drift = VectorField(f)
        self.diffusion = VectorField(g)
        self.control_layers = [*self.drift.control_layers, *self.diffusion.control_layers]

    @property
    def f_func(self) -> nn.Module | Callable[..., Tensor]:
        """The user's drift (torchdyn's name)."""
        return self.drift.vf

    @property
    def g_func(self) -> nn.Module | Callable[..., Tensor]:
        """The user's diffusion (torchdyn's name)."""
        return self.diffusion.vf

    @property
    def vector_fields(self) -> tuple[VectorField, ...]:
        """The wrappers whose evaluations are counted (the drift's first)."""
        return self.drift, self.diffusion

    @property
    def nfe(self) -> int:
        return self.drift.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        for field in self.vector_fields:
            field.nfe = value

    @property
    def nfe_diffusion(self) -> int:
        return self.diffusion.nfe

    def f(self, t: Time, x: Tensor) -> Tensor:
        """The drift ``f(t, x)``: ``x [B, D] -> [B, D]``."""
        return self.drift(t, x)

    def g(self, t: Time, x: Tensor) -> Tensor:
        """The diffusion ``g(t, x)``: ``x [B, D] -> [B, D]`` (diagonal) or ``[B, D, m]``."""
        return self.diffusion(t, x)

    def forward(self, t: Time, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(t, x), g(t, x))``."""
        return self.f(t, x), self.g(t, x)

    def extra_repr(self) -> str:
        return f"noise_type={self.noise_type!r}, sde_type={self.sde_type!r}"


class SDEProblem(nn.Module):
    """An SDE ``dx = f(t, x) ds + g(t, x) dW`` with its solver and sensitivity, solved by torchsde.

    torchdyn 1.0.6 declares ``SDEProblem`` but its constructor only raises ``NotImplementedError``; this one
    takes the arguments torchdyn's ``NeuralSDE`` passes it, in that positional order, and torchdyn master's
    keywords beside them: ``SDEProblem(defunc=sde, solver='euler', interpolator=None, atol=..., rtol=...,
    sensitivity=..., solver_adjoint=..., atol_adjoint=..., rtol_adjoint=...)``, with master's
    ``prob(x, t_span, bm)`` and ``prob.sdeint(x, t_span, bm, save_at)`` returning ``(t_eval, trajectory)``.
    Master's positional order (``defunc, solver, interpolator, atol, ...``) differs from the second argument on
    and is refused with that advice (a solver name where ``order`` goes).

    Args:
        func: torchsde's SDE: an object with ``f(t, x) -> [B, D]``, ``g(t, x)`` (shaped by its noise type) and
            the attributes ``noise_type`` and ``sde_type`` (e.g. :class:`SDEFunc`, or a ``torchsde.SDEIto``
            subclass). An ``nn.Module`` for ``sensitivity='adjoint'`` (its parameters get the gradients).
        order: 1 (higher orders raise ``NotImplementedError``, as in torchdyn).
        sensitivity: ``'autograd'`` backpropagates through the solver (``torchsde.sdeint``); ``'adjoint'``
            solves the adjoint SDE backwards (``torchsde.sdeint_adjoint``, memory flat in the number of steps).
        s_span: ``[T]`` strictly increasing times; ``forward`` integrates from ``s_span[0]`` to ``s_span[-1]``.
            None means ``[0, 1]``.
        solver: a name from :data:`SDE_SOLVER_NAMES` that solves this SDE type and noise type, or one of torchdyn
            master's names (``'eulerHeun'``, ``'milstein_ito'``, ``'milstein_stratonovich'``: torchsde's
            ``euler_heun`` and derivative-free ``milstein``).
        atol, rtol: tolerances of adaptive stepping; unused unless ``adaptive`` (torchdyn never steps adaptively).
        ds: the step size (torchsde's ``dt``); the initial step when ``adaptive``.
        adaptive: adaptive time-stepping (off, as in torchdyn, where it is the attribute ``adaptive``).
        options: torchsde's method options (e.g. ``{'grad_free': True}`` for ``'milstein'``), passed on as given.
        defunc: torchdyn master's name for ``func`` (keyword-only; give one of the two).
        interpolator: master's, which its SDE solve ignores; only None is accepted (keyword-only).
        solver_adjoint: the solver of the adjoint SDE with ``sensitivity='adjoint'`` (torchsde's
            ``adjoint_method``), by the same names as ``solver`` (master's ``'milstein_*'`` are torchsde's
            derivative-using Milstein here: its derivative-free one cannot solve an adjoint SDE); None is torchsde's
            default for the SDE's type (keyword-only; master stores none of the three adjoint options, and raises
            for the adjoint).
        atol_adjoint, rtol_adjoint: the adjoint solve's tolerances (torchsde's ``adjoint_atol``/``adjoint_rtol``),
            used only when ``adaptive``; None is torchsde's defaults (keyword-only).

    Raises:
        ValueError: unknown or incompatible sensitivity, solver, solver_adjoint, noise type or SDE type (the
            message lists the valid ones), bad tolerances, step size or ``s_span``; both or neither of ``func``
            and ``defunc``; an ``interpolator``; adjoint options without ``sensitivity='adjoint'``.
        NotImplementedError: ``order`` > 1.
        TypeError: ``func`` lacks ``f``/``g``; ``'adjoint'`` with a ``func`` that is not an ``nn.Module``; master's
            positional order (a solver name where ``order`` goes).
    """

    def __init__(
        self,
        func: nn.Module | None = None,
        order: int = 1,
        sensitivity: SDESensitivity = "autograd",
        s_span: SSpan | None = None,
        solver: str = "srk",
        atol: float = 1e-4,
        rtol: float = 1e-4,
        *,
        ds: float = 1e-3,
        adaptive: bool = False,
        options: Mapping[str, Any] | None = None,
        defunc: nn.Module | None = None,
        interpolator: str | Callable | None = None,
        solver_adjoint: str | None = None,
        atol_adjoint: float | None = None,
        rtol_adjoint: float | None = None,
    ) -> None:
        super().__init__()
        func = _problem_func(func, defunc, order)
        if interpolator is not None:
            raise ValueError(f"interpolator={interpolator!r}: {_NO_INTERPOLATOR}")
        self.interpolator = interpolator
        self.order = _check_order(order)
        check_sde_interface(func, "func must be torchsde's SDE:", "(build one with NeuralSDE(drift, diffusion))")
        self.defunc = func
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a dict of torchsde's method options or None, got "
                            f"{type(options).__name__}")
        self.sensitivity, self.solver, self.options = sensitivity, solver, None if options is None else dict(options)
        self._options()  # checks them, with the SDE's noise and SDE types
        self.atol = positive("atol", atol)
        self.rtol = positive("rtol", rtol)
        self.ds = positive("ds", ds)
        self.adaptive = choice("adaptive", adaptive, (False, True), plural="values")
        self.s_span = torch.linspace(0, 1, 2) if s_span is None else _as_span(s_span, None)
        _check_span(self.s_span)
        self._checked_for: tuple | None = None
        self._noise_channels = 0
        adjoint_options = {"solver_adjoint": solver_adjoint, "atol_adjoint": atol_adjoint,
                           "rtol_adjoint": rtol_adjoint}
        given = [name for name, value in adjoint_options.items() if value is not None]
        if given and sensitivity != "adjoint":
            raise ValueError(f"{', '.join(given)} set the adjoint solve, which only sensitivity='adjoint' runs "
                             f"(got sensitivity={sensitivity!r})")
        self.solver_adjoint = solver_adjoint
        self.atol_adjoint = None if atol_adjoint is None else positive("atol_adjoint", atol_adjoint)
        self.rtol_adjoint = None if rtol_adjoint is None else positive("rtol_adjoint", rtol_adjoint)
        self._adjoint_method()  # checks solver_adjoint with the SDE's noise and SDE types

    def _options(self) -> SDESolver:
        """The solver's registry entry, after checking the options (they are attributes torchdyn code may set)."""
        return self._method()[0]

    def _method(self) -> tuple[SDESolver, dict[str, Any]]:
        """The torchsde method's registry entry and its options, after checking them with the SDE's types."""
        sensitivity = choice("sensitivity", self.sensitivity, SDE_SENSITIVITIES, plural="sensitivities")
        if sensitivity == "adjoint" and not isinstance(self.defunc, nn.Module):
            raise TypeError(
                "sensitivity='adjoint' returns gradients for an nn.Module's parameters, got "
                f"{type(self.defunc).__name__}; make the SDE an nn.Module or use sensitivity='autograd'"
            )
        entry, options = _resolve_solver(self.solver, self.defunc.noise_type, self.defunc.sde_type)
        return entry, {**options, **(self.options or {})}

    def _adjoint_method(self) -> dict[str, Any]:
        """torchsde's adjoint keywords for ``solver_adjoint`` and the adjoint tolerances (empty for the defaults)."""
        kwargs: dict[str, Any] = {}
        if self.solver_adjoint is not None:
            try:
                entry, _ = _resolve_solver(self.solver_adjoint, self.defunc.noise_type, self.defunc.sde_type)
            except ValueError as err:
                raise ValueError(f"solver_adjoint: {err}") from None
            kwargs["adjoint_method"] = entry.name  # without master's grad_free for milstein: torchsde's
            # derivative-free Milstein cannot solve an adjoint SDE, its derivative-using one can
        if self.atol_adjoint is not None:
            kwargs["adjoint_atol"] = self.atol_adjoint
        if self.rtol_adjoint is not None:
            kwargs["adjoint_rtol"] = self.rtol_adjoint
        return kwargs

    def extra_repr(self) -> str:
        return (f"solver={self.solver!r}, sensitivity={self.sensitivity!r}, ds={self.ds}, "
                f"adaptive={self.adaptive}, atol={self.atol}, rtol={self.rtol}")

    def forward(
        self,
        x: Tensor,
        t_span: SSpan | None = None,
        bm: torchsde.BaseBrownian | None = None,
        save_at: SSpan = (),
        args: Mapping[str, object] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The state at ``s_span[-1]`` of the solve from ``x`` at ``s_span[0]``; with a ``t_span`` (or ``save_at``),
        torchdyn master's ``forward``: ``(t_eval, trajectory)``, as :meth:`sdeint`.

        Args:
            x: initial state ``[B, D]``, floating point.
            t_span: ``[T]`` strictly increasing times (master's; None solves over ``s_span``).
            bm: the Brownian motion to drive the solve with, shaped ``[B, m]`` (e.g. a
                ``torchsde.BrownianInterval`` over the times with a fixed ``entropy``, to repeat a sample path);
                None draws a new path, seeded from torch's global generator (``torch.manual_seed`` repeats it).
            save_at, args: as in :meth:`sdeint`.

        Returns:
            ``x(s_span[-1])`` ``[B, D]`` (the final state only, as 1.0.6's ``NeuralSDE``), or, given ``t_span`` or
            ``save_at``, ``(t_eval [S], trajectory [S, B, D])``.

        Raises:
            TypeError, ValueError: bad ``x``, ``s_span`` or ``bm``, or a drift/diffusion that returns the wrong
            shape for the noise type (:class:`~nodecore.errors.InputShapeError` when it cannot take ``x``).
            NotImplementedError: a non-empty ``args``.
        """
        if t_span is None and not _given(save_at) and not args:
            return self._solve(x, self.s_span, bm)[1][-1]
        return self.sdeint(x, t_span, bm, save_at, args)

    def sdeint(
        self,
        x: Tensor,
        t_span: SSpan | None = None,
        bm: torchsde.BaseBrownian | None = None,
        save_at: SSpan = (),
        args: Mapping[str, object] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """torchdyn master's ``SDEProblem.sdeint``: ``(t_eval [S], trajectory [S, B, D])`` from ``x`` at ``t_span[0]``.

        Args:
            x: initial state ``[B, D]``, floating point.
            t_span: ``[T]`` strictly increasing times; None uses ``s_span``.
            bm: the Brownian motion ``[B, m]`` (master requires one); None uses the model's ``bm`` attribute where
                it has one (a :class:`NeuralSDE` built with ``bm=``), else draws a new path.
            save_at: points of ``t_span`` to return (all of them when empty, master's default ``()``).
            args: master's, which its SDE solvers ignore; only None or an empty dict is accepted.

        Raises:
            As :meth:`forward`; ValueError for a ``save_at`` point not in ``t_span``.
        """
        if args:
            raise NotImplementedError(f"args={dict(args)!r}: capture extra arguments in the drift and diffusion "
                                      "instead (torchdyn master's SDE solvers ignore them)")
        span = self.s_span if t_span is None else t_span
        saving = _given(save_at)
        if saving:  # fail before the solve
            save_at_indices(save_at, _as_span(torch.linspace(0, 1, 2) if span is None else span, None))
        span, trajectory = self._solve(x, span, getattr(self, "bm", None) if bm is None else bm)
        if saving:
            keep = save_at_indices(save_at, span)
            return span[keep], trajectory[keep]
        return span, trajectory

    def trajectory(self, x: Tensor, s_span: SSpan, *, bm: torchsde.BaseBrownian | None = None) -> Tensor:
        """The states ``[T, B, D]`` at the ``T`` times of ``s_span`` (``trajectory[0]`` is ``x``); see ``forward``."""
        return self._solve(x, s_span, bm)[1]

    def _solve(self, x: Tensor, s_span: SSpan | None, bm: torchsde.BaseBrownian | None) -> tuple[Tensor, Tensor]:
        """``(span [T], states [T, B, D])``: the times on ``x``'s device and dtype, and the solve's states there."""
        entry, method_options = self._method()
        span = self._check_inputs(x, torch.linspace(0, 1, 2) if s_span is None else s_span)
        for layer in getattr(self.defunc, "control_layers", ()):  # DataControl: the control is each solve's x0
            layer.u = x
        channels = self._check_func(x, span[0])
        if bm is None:
            bm = self._brownian(x, span, channels, entry)
        else:
            self._check_bm(bm, x, channels, entry, span)
        options = {"bm": bm, "method": entry.name, "dt": self.ds, "adaptive": self.adaptive, "rtol": self.rtol,
                   "atol": self.atol, "options": method_options or None}
        if self.sensitivity == "autograd":
            return span, torchsde.sdeint(self.defunc, x, span, **options)
        params = tuple(self.defunc.parameters())
        if getattr(self.defunc, "control_layers", ()) and x.requires_grad:
            params = (*params, x)  # a data-controlled SDE depends on x0 through its control too
        return span, torchsde.sdeint_adjoint(self.defunc, x, span, adjoint_params=params, **options,
                                             **self._adjoint_method())

    def _check_inputs(self, x: Tensor, s_span: SSpan) -> Tensor:
        """``s_span`` as a tensor on ``x``'s device and dtype, after checking ``x`` and it."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got dtype {x.dtype}; convert it with x.float()")
        if x.ndim != 2 or x.numel() == 0:
            raise ValueError(
                f"x must be a non-empty state [batch, dim] (torchsde's layout), got shape {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or Inf; the initial state must be finite")
        param = next(self.defunc.parameters(), None) if isinstance(self.defunc, nn.Module) else None
        if param is not None and (param.device != x.device or param.dtype != x.dtype):
            raise ValueError(
                f"x is {x.dtype} on {x.device} but the SDE's parameters are {param.dtype} on {param.device}; "
                "move one to the other, e.g. model.to(x.device, x.dtype)"
            )
        span = _as_span(s_span, x)
        _check_span(span)
        return span

    def _check_func(self, x: Tensor, t0: Tensor) -> int:
        """Evaluate drift and diffusion once per state shape, checking their shapes; the Brownian channels."""
        key = (x.shape, x.dtype, x.device, self.defunc.noise_type, self.defunc.sde_type, self.solver,
               self.sensitivity)
        if self._checked_for == key:
            return self._noise_channels
        fields = tuple(getattr(self.defunc, "vector_fields", ()))
        nfe = [field.nfe for field in fields]
        try:
            channels = self._check_shapes(x, t0)
        finally:
            for field, count in zip(fields, nfe):  # the checks' evaluations are not part of the solve
                field.nfe = count
        self._checked_for, self._noise_channels = key, channels
        return channels

    def _check_shapes(self, x: Tensor, t0: Tensor) -> int:
        func, noise_type = self.defunc, self.defunc.noise_type
        with torch.no_grad():
            with explained_shapes("the drift", {"the state x": x}, getattr(func, "f_func", func)):
                drift = func.f(t0, x)
            with explained_shapes("the diffusion", {"the state x": x}, getattr(func, "g_func", func)):
                diffusion = func.g(t0, x)
        if not isinstance(drift, Tensor) or drift.shape != x.shape:
            got = tuple(drift.shape) if isinstance(drift, Tensor) else type(drift).__name__
            raise ValueError(f"the drift must return a tensor shaped like the state {tuple(x.shape)}, got {got}")
        channels = check_diffusion(diffusion, x, noise_type)
        if noise_type == "diagonal" and self._uses_diffusion_derivative() and not _elementwise(func, t0, x):
            self._refuse_mixing_diffusion()
        return channels

    def _uses_diffusion_derivative(self) -> bool:
        """Whether this solve takes a diagonal diffusion ``g_i`` to depend on ``x_i`` alone.

        With diagonal noise, torchsde's Milstein and SRK steps and its Itô adjoint compute the correction
        ``g_i dg_i/dx_i`` as ``((dg/dx)^T g)_i``; the two agree only when ``dg/dx`` is diagonal.
        """
        uses = self._options().name in _DERIVATIVE_SOLVERS  # torchdyn's milstein_* names are 'milstein' too
        return uses or (self.sensitivity == "adjoint" and self.defunc.sde_type == "ito")

    def _refuse_mixing_diffusion(self) -> None:
        """Raise where a diagonal diffusion that mixes dimensions gives wrong results; warn where it costs accuracy.

        Measured with torchsde 0.2.6 on a fixed Brownian path: the Itô adjoint's gradients stay 1-2% off autograd's
        however small the step; Stratonovich Milstein converges to another solution; Itô Milstein and SRK still
        converge, at Euler's strong order 0.5 instead of their own.
        """
        sde_type = self.defunc.sde_type
        free = [s.name for s in SDE_SOLVERS.values()
                if sde_type in s.sde_types and "diagonal" in s.noise_types and s.name not in _DERIVATIVE_SOLVERS]
        general = "noise_type='general' with the diffusion returning torch.diag_embed(g) [B, D, D]"
        mixing = "this diffusion mixes the state's dimensions (or the batch's samples)"
        if self.sensitivity == "adjoint" and sde_type == "ito":
            raise ValueError(
                "with noise_type='diagonal', sensitivity='adjoint' with sde_type='ito' needs an element-wise diffusion "
                f"(g_i depending on x_i only), but {mixing}: torchsde's Itô adjoint would return wrong gradients "
                f"without an error; make the diffusion element-wise, or use sde_type='stratonovich', or {general}"
            )
        if sde_type == "stratonovich":
            raise ValueError(
                f"with noise_type='diagonal', solver {self.solver!r} needs an element-wise diffusion (g_i depending on "
                f"x_i only), but {mixing}: the solve would converge to a wrong solution without an error; make the "
                f"diffusion element-wise, or use a derivative-free solver ({', '.join(free)}), or {general}"
            )
        warnings.warn(
            f"with noise_type='diagonal', solver {self.solver!r} assumes an element-wise diffusion (g_i depending on "
            f"x_i only), but {mixing}: it still converges, but only at Euler's strong order 0.5, at {self.solver!r}'s "
            f"cost; use solver='euler' (cheaper, as accurate here), make the diffusion element-wise, or use {general}",
            SDEAccuracyWarning,
            stacklevel=2,
        )

    def _brownian(self, x: Tensor, span: Tensor, channels: int, entry: SDESolver) -> torchsde.BrownianInterval:
        """A fresh Brownian motion ``[B, m]`` over ``span``, its entropy drawn from torch's global generator."""
        entropy = int(torch.randint(0, 2**31 - 1, ()))
        # Telling it the step size spares torchsde's re-balancing of its tree of intervals, which costs far more
        # than the solve itself whenever a step comes out tiny (e.g. the last one, by rounding).
        return torchsde.BrownianInterval(
            t0=span[0], t1=span[-1], size=(x.shape[0], channels), dtype=x.dtype, device=x.device, entropy=entropy,
            dt=None if self.adaptive else self.ds, levy_area_approximation=entry.levy_areas[0],
        )

    def _check_bm(self, bm: object, x: Tensor, channels: int, entry: SDESolver, span: Tensor) -> None:
        if not isinstance(bm, torchsde.BaseBrownian):
            raise TypeError(f"bm must be a torchsde Brownian motion (e.g. torchsde.BrownianInterval), got "
                            f"{type(bm).__name__}")
        if tuple(bm.shape) != (x.shape[0], channels):
            raise ValueError(
                f"bm must have shape [batch, Brownian channels] = {[x.shape[0], channels]} for this state and "
                f"noise_type={self.defunc.noise_type!r}, got {list(bm.shape)}"
            )
        levy = getattr(bm, "levy_area_approximation", None)
        if levy not in entry.levy_areas:
            raise ValueError(
                f"solver {self.solver!r} needs a Brownian motion with levy_area_approximation in "
                f"{', '.join(entry.levy_areas)}, got {levy!r}"
            )
        start, end = getattr(bm, "_start", None), getattr(bm, "_end", None)  # a BrownianInterval's [t0, t1]
        if start is not None and end is not None:
            first, last = float(span[0]), float(span[-1])
            slack = 1e-6 * max(1.0, abs(float(start)), abs(float(end)))
            if first < float(start) - slack or last > float(end) + slack:
                raise ValueError(
                    f"bm covers [{float(start):g}, {float(end):g}] but the solve runs over [{first:g}, {last:g}] "
                    "(torchsde would only warn and extrapolate); build bm with t0=t_span[0], t1=t_span[-1]"
                )


class NeuralSDE(SDEProblem):
    """A Neural SDE ``dx = f(t, x) ds + g(t, x) dW`` that takes torchdyn 1.0.6's signature and master's keywords.

    One model, two call styles:

    * torchdyn 1.0.6: ``NeuralSDE(f, g, noise_type, sde_type, order, sensitivity, s_span, solver, ...)``;
      ``model(x)`` returns the state at ``model.s_span[-1]`` ``[B, D]``, ``model.trajectory(x, s_span)`` the
      states ``[T, B, D]`` at the ``T`` times of ``s_span``.
    * torchdyn master: ``NeuralSDE(f, g, solver='euler', t_span=t_span, bm=bm, ...)``; ``model(x)`` or
      ``model(x, t_span)`` returns ``(t_eval [T], trajectory [T, B, D])`` (``trajectory[0]`` is ``x``), or the
      trajectory alone with ``return_t_eval=False``, so the model chains inside ``nn.Sequential``.

    ``return_t_eval`` decides the output: True or False is master's; None, the default unless ``t_span`` or ``bm``
    is given, is 1.0.6's final state, except that a ``forward`` given a ``t_span`` or ``save_at`` (which only
    master's takes) returns master's ``(t_eval, trajectory)``. ``t_span`` and ``s_span`` are one attribute under
    two names.

    The positional order is 1.0.6's: master reorders every argument after the diffusion (``order, solver,
    noise_type, sde_type, t_span, atol, rtol, sensitivity, ds, ...``), so one signature cannot follow both, and
    master's options go by keyword, as its tutorials pass them. Master's ``order`` integer where 1.0.6 puts
    ``noise_type`` is refused with that advice.

    Where master steps once per interval of ``t_span`` and ignores ``ds``, the solve here steps at ``ds``
    (torchsde's ``dt``, as in 1.0.6 and as master documents ``ds``) and reports the states at the points of
    ``t_span``; :func:`nodecore.numerics.sdeint` steps as master does. Both converge to the same solution.

    Args:
        drift_func: the drift, an ``nn.Module`` (or callable) taking ``x`` or ``(t, x)``: ``[B, D] -> [B, D]``.
        diffusion_func: the diffusion, likewise, returning the shape of ``noise_type``.
        noise_type: ``'diagonal'`` (diffusion ``[B, D]``, one independent Brownian motion per dimension),
            ``'general'`` (``[B, D, m]``), ``'scalar'`` (``[B, D, 1]``) or ``'additive'`` (``[B, D, m]``,
            not depending on ``x``; torchsde trusts this and does not check it).
        sde_type: ``'ito'`` or ``'stratonovich'``.
        order, sensitivity, s_span, solver, atol, rtol, ds: as in :class:`SDEProblem`. The default solver is
            1.0.6's ``'srk'`` (Itô SDEs with diagonal, scalar or additive noise only); master's is ``'euler'``,
            so pass ``solver='euler'`` for master's results. Master's names ``'eulerHeun'``, ``'milstein_ito'``
            and ``'milstein_stratonovich'`` are accepted too. ``sensitivity='adjoint'`` works in both styles
            (master raises ``NotImplementedError`` for it).
        intloss: torchdyn's integral loss, which torchdyn stores but never applies; only None is accepted.
        t_span: master's name for ``s_span`` (keyword-only; give one of the two).
        bm: master's: a torchsde Brownian motion ``[B, m]`` covering ``t_span`` that drives every call, so each
            call repeats its path, as in master (keyword-only). ``forward(x, bm=...)`` overrides it for one
            call; None draws a fresh path per call from torch's global generator.
        return_t_eval: master's: True returns ``(t_eval, trajectory)``, False the trajectory; None as above.
        interpolator: master's, which its SDE solve ignores; only None is accepted.
        adaptive: adaptive time-stepping (keyword-only; torchdyn's attribute ``adaptive``, off).
        options: torchsde's method options (keyword-only), as in :class:`SDEProblem`.

    Attributes:
        defunc: the :class:`SDEFunc` torchsde integrates (``defunc.f_func``/``g_func`` are the user's modules).

    Raises:
        ValueError: unknown or incompatible options, as in :class:`SDEProblem`; both ``t_span`` and ``s_span``;
            an ``interpolator``.
        NotImplementedError: ``order`` > 1 or an ``intloss``.
        TypeError: ``sensitivity='adjoint'`` with a drift or diffusion that is a plain function rather than an
            ``nn.Module`` (tensors it captures would silently get no gradient); master's positional order;
            a ``bm`` that is not a torchsde Brownian motion.
    """

    def __init__(
        self,
        drift_func: nn.Module | Callable[..., Tensor],
        diffusion_func: nn.Module | Callable[..., Tensor],
        noise_type: NoiseType = "diagonal",
        sde_type: SDEType = "ito",
        order: int = 1,
        sensitivity: SDESensitivity = "autograd",
        s_span: SSpan | None = None,
        solver: str = "srk",
        atol: float = 1e-4,
        rtol: float = 1e-4,
        ds: float = 1e-3,
        intloss: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        t_span: SSpan | None = None,
        bm: torchsde.BaseBrownian | None = None,
        return_t_eval: bool | None = None,
        interpolator: str | Callable | None = None,
        adaptive: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        _check_master_options(noise_type, s_span, t_span, bm, interpolator)
        if return_t_eval is not None:
            return_t_eval = choice("return_t_eval", return_t_eval, (True, False), plural="values")
        if intloss is not None:
            raise NotImplementedError(
                "integral losses (intloss) are not implemented for Neural SDEs (torchdyn accepts one and ignores "
                "it); add the running cost to the loss from model.trajectory(x, s_span) instead"
            )
        _check_adjoint_modules(sensitivity, {"drift_func": drift_func, "diffusion_func": diffusion_func})
        func = SDEFunc(drift_func, diffusion_func, order, noise_type=noise_type, sde_type=sde_type)
        super().__init__(func, order, sensitivity, s_span if t_span is None else t_span, solver, atol, rtol, ds=ds,
                         adaptive=adaptive, options=options)
        self.intloss = intloss
        self.interpolator = interpolator
        self.bm = bm
        if return_t_eval is None and (t_span is not None or bm is not None):
            return_t_eval = True  # built the master way: master's output
        self.return_t_eval = return_t_eval

    @property
    def t_span(self) -> Tensor | None:
        """torchdyn master's name for ``s_span``: the times ``forward(x)`` solves over (None means ``[0, 1]``)."""
        return self.s_span

    @t_span.setter
    def t_span(self, value: SSpan | None) -> None:
        self.s_span = value

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        t_span: SSpan | None = None,
        save_at: SSpan = (),
        args: Mapping[str, object] | None = None,
        *,
        bm: torchsde.BaseBrownian | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Solve from ``x`` at the first time of ``t_span`` (torchdyn master's ``forward``, and 1.0.6's ``model(x)``).

        Args:
            x: initial state ``[B, D]``, floating point.
            t_span: ``[T]`` strictly increasing times; None uses ``self.t_span`` (``[0, 1]`` when that is None).
            save_at: points of ``t_span`` to return (all when empty, master's default ``()``).
            args: master's, which its SDE solvers ignore; only None or an empty dict is accepted.
            bm: the Brownian motion ``[B, m]`` for this call; None uses ``self.bm``, or draws a new path, seeded
                from torch's global generator (``torch.manual_seed`` repeats it), when that is None too.

        Returns:
            With ``return_t_eval`` True: ``(t_eval [S], trajectory [S, B, D])``, the ``S`` points of ``save_at``
            (all of ``t_span`` when empty); False: ``trajectory`` alone; None: ``x(t_span[-1])`` ``[B, D]``
            (1.0.6's), or ``(t_eval, trajectory)`` when ``t_span`` or ``save_at`` is given.

        Raises:
            TypeError, ValueError: bad ``x``, ``t_span``, ``save_at`` (a point not in ``t_span``) or ``bm``, or a
            drift/diffusion that returns the wrong shape for the noise type.
            NotImplementedError: a non-empty ``args``.
        """
        if args:
            raise NotImplementedError(f"args={dict(args)!r}: capture extra arguments in the drift and diffusion "
                                      "instead (torchdyn master's SDE solvers ignore them)")
        span = self.s_span if t_span is None else t_span
        saving = _given(save_at)
        if saving:  # fail before the solve
            save_at_indices(save_at, _as_span(torch.linspace(0, 1, 2) if span is None else span, None))
        span, trajectory = self._solve(x, span, self.bm if bm is None else bm)
        if self.return_t_eval is None and t_span is None and not saving:
            return trajectory[-1]
        keep = save_at_indices(save_at, span) if saving else None
        t_eval = span
        if keep is not None:
            t_eval, trajectory = span[keep], trajectory[keep]
        return trajectory if self.return_t_eval is False else (t_eval, trajectory)

    def trajectory(  # type: ignore[override]
        self,
        x: Tensor,
        s_span: SSpan | None = None,
        *,
        t_span: SSpan | None = None,
        bm: torchsde.BaseBrownian | None = None,
    ) -> Tensor:
        """The states ``[T, B, D]`` at the ``T`` times of ``s_span`` (or ``t_span``, master's name; None uses
        ``self.s_span``); ``trajectory[0]`` is ``x``. ``bm`` as in ``forward``."""
        if s_span is not None and t_span is not None:
            raise ValueError("give the times as t_span (torchdyn master) or s_span (torchdyn 1.0.6), not both")
        span = s_span if s_span is not None else t_span if t_span is not None else self.s_span
        return self._solve(x, span, self.bm if bm is None else bm)[1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, return_t_eval={self.return_t_eval}"


_NO_INTERPOLATOR = ("a Neural SDE reports its states at the points of t_span and has no interpolator (torchdyn master "
                    "accepts one and ignores it); leave it None")


def _problem_func(func: object, defunc: object, order: object) -> Any:
    """The SDE given as ``func`` (positional, 1.0.6's ``NeuralSDE`` order) or ``defunc`` (master's keyword)."""
    if isinstance(order, str):
        raise TypeError(
            f"order={order!r} is not an order. SDEProblem takes the positional order (func, order, sensitivity, "
            "s_span, solver, atol, rtol) that torchdyn 1.0.6's NeuralSDE passes it; torchdyn master's order (defunc, "
            "solver, interpolator, atol, rtol, sensitivity, ...) differs from the second argument on. Pass the "
            "options by keyword, e.g. SDEProblem(defunc=sde, solver='euler', sensitivity='autograd')"
        )
    if func is not None and defunc is not None:
        raise ValueError("give the SDE as func (positional) or defunc (torchdyn master's keyword), not both")
    if func is None and defunc is None:
        raise TypeError("SDEProblem needs the SDE: SDEProblem(func) or SDEProblem(defunc=func), e.g. an SDEFunc(f, g)")
    return func if func is not None else defunc


def _check_master_options(noise_type: object, s_span: object, t_span: object, bm: object,
                          interpolator: object) -> None:
    """Refuse torchdyn master's positional order, two spans, a non-Brownian ``bm`` and an ``interpolator``."""
    if isinstance(noise_type, numbers.Integral) and not isinstance(noise_type, bool):
        raise TypeError(
            f"noise_type={noise_type!r} is not a noise type (valid noise_types: {', '.join(NOISE_TYPES)}). "
            "NeuralSDE takes torchdyn 1.0.6's positional order (drift_func, diffusion_func, noise_type, sde_type, "
            "order, sensitivity, s_span, solver, atol, rtol, ds, intloss); torchdyn master's order (drift_func, "
            "diffusion_func, order, solver, noise_type, ...) differs from the third argument on. Pass the options "
            "by keyword, e.g. NeuralSDE(f, g, order=1, solver='euler', t_span=t_span)"
        )
    if s_span is not None and t_span is not None:
        raise ValueError("give the times as t_span (torchdyn master) or s_span (torchdyn 1.0.6), not both")
    if bm is not None and not isinstance(bm, torchsde.BaseBrownian):
        raise TypeError(f"bm must be a torchsde Brownian motion (e.g. torchsde.BrownianInterval) or None, got "
                        f"{type(bm).__name__}")
    if interpolator is not None:
        raise ValueError(f"interpolator={interpolator!r}: {_NO_INTERPOLATOR}")


def _check_adjoint_modules(sensitivity: object, functions: Mapping[str, object]) -> None:
    """With the adjoint, every user function must be an ``nn.Module`` (its parameters are the ones differentiated)."""
    if sensitivity != "adjoint":
        return
    for name, fn in functions.items():
        if not isinstance(fn, nn.Module):
            raise TypeError(
                f"sensitivity='adjoint' returns gradients for the SDE's module parameters only, so "
                f"{name} must be an nn.Module (got {type(fn).__name__}); tensors a plain function captures "
                "would silently get no gradient. Wrap it in an nn.Module or use sensitivity='autograd'"
            )


def _given(save_at: object) -> bool:
    """Whether ``save_at`` names any point (torchdyn's default ``()`` names none)."""
    if isinstance(save_at, Tensor):
        return save_at.numel() > 0
    try:
        return len(save_at) > 0  # type: ignore[arg-type]
    except TypeError:
        return True  # a lone number: save_at_indices refuses it by name


def _resolve_solver(solver: object, noise_type: str, sde_type: str) -> tuple[SDESolver, dict[str, Any]]:
    """The torchsde registry entry and method options for ``solver``: torchsde's name or torchdyn master's.

    Raises:
        ValueError: an unknown noise type, SDE type or solver (the message lists the valid ones), or a solver that
        cannot solve this SDE (the message lists those that can).
    """
    choice("noise_type", noise_type, NOISE_TYPES)
    choice("sde_type", sde_type, SDE_TYPES)
    if isinstance(solver, str) and solver in SDE_SOLVERS:
        return check_sde_options(solver, noise_type, sde_type), {}
    if isinstance(solver, str) and solver in TORCHDYN_SDE_SOLVERS:
        return resolve_sde_solver(solver, noise_type, sde_type)
    masters = [name for name in TORCHDYN_SDE_SOLVERS if name not in SDE_SOLVERS]
    raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SDE_SOLVER_NAMES)} (torchsde's), or "
                     f"torchdyn master's {', '.join(masters)}")


def _elementwise(func: object, t0: Tensor, x: Tensor) -> bool:
    """Whether the diffusion's Jacobian ``dg/dx`` (over the whole batch) is diagonal.

    For a diagonal ``J``, ``J^T (u * w) == (J^T u) * w`` for all ``u``, ``w``; for any other ``J`` random ``u``, ``w``
    break it. Two backward passes through the diffusion, once per state shape.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)  # leaves the global random state alone
    u, w = (torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) for _ in range(2))
    with torch.enable_grad():
        state = x.detach().requires_grad_()
        g = func.g(t0, state)
        if not g.requires_grad:
            return True  # a diffusion that does not depend on the state at all
        first, = torch.autograd.grad(g, state, u, retain_graph=True, allow_unused=True)
        second, = torch.autograd.grad(g, state, u * w, allow_unused=True)
    if first is None or second is None:
        return True
    scale = float(first.abs().max() + second.abs().max())
    return bool(torch.allclose(first * w, second, rtol=1e-4, atol=1e-5 * scale + 1e-12))


def _check_order(order: int) -> int:
    order = integer("order", order, minimum=1)
    if order not in SDE_ORDERS:
        raise NotImplementedError(f"order={order}: higher-order Neural SDEs are not implemented; use order=1")
    return order


def _as_span(s_span: SSpan, x: Tensor | None) -> Tensor:
    """``s_span`` as a floating tensor (on ``x``'s device and dtype when given)."""
    if isinstance(s_span, Tensor):
        span = s_span
    else:
        try:
            span = torch.as_tensor(s_span, dtype=torch.get_default_dtype() if x is None else x.dtype)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"s_span must be a 1-D tensor or sequence of times, got {s_span!r}") from err
    if x is not None:
        span = span.to(device=x.device, dtype=x.dtype)
    elif not span.is_floating_point():
        span = span.to(torch.get_default_dtype())
    return span


def _check_span(span: Tensor) -> None:
    if span.ndim != 1 or span.numel() < 2:
        raise ValueError(f"s_span must be 1-D with at least 2 times, got shape {tuple(span.shape)}")
    if span.requires_grad:
        raise ValueError("s_span must not require grad: torchsde gives no gradients with respect to the times")
    if not torch.isfinite(span).all():
        raise ValueError(f"s_span must be finite, got {span.tolist()}")
    if not (span.diff() > 0).all():
        raise ValueError(
            f"s_span must be strictly increasing (torchsde solves forward in time only), got {span.tolist()}"
        )
