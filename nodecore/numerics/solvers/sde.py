"""SDE solvers: the one registry of torchsde's methods, torchdyn's names for them, and one-step solver objects.

torchsde does the arithmetic. This module says which of its methods solve which SDEs (:data:`SDE_SOLVERS`, used
by :class:`~nodecore.models.sde.NeuralSDE` and :func:`~nodecore.numerics.sdeint.sdeint`), maps torchdyn master's
solver names onto them (:data:`TORCHDYN_SDE_SOLVERS`) and wraps one method as a solver object with torchdyn's
``step(x, t, dt) -> (None, x_next, None)`` (:class:`SDEStepper`; torchdyn's classes ``EulerMaruyama``,
``EulerHeun``, ``MilesteinIto``, ``MilesteinStratonovich``, spelt as there). This is torchdyn's import path
``torchdyn.numerics.solvers.sde``.

The steppers use torchsde's solver classes directly (``torchsde._core``; torchsde 0.2.6 has no public one-step
API), so that a solve can step onto every point of its ``t_span``, as torchdyn's does, where ``torchsde.sdeint``
steps at a constant ``dt`` and interpolates linearly between steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
import torchsde
from torch import Tensor, nn
from torchsde._core import base_sde as _torchsde_sde
from torchsde._core import methods as _torchsde_methods

from nodecore._checks import choice
from nodecore.numerics.solvers import time_tensor

NoiseType = Literal["diagonal", "general", "scalar", "additive"]
SDEType = Literal["ito", "stratonovich"]

# torchsde's noise types: the shape the diffusion returns for a state [B, D] (m: Brownian channels).
NOISE_TYPES: tuple[str, ...] = ("diagonal", "general", "scalar", "additive")
DIFFUSION_SHAPES: Mapping[str, str] = MappingProxyType({
    "diagonal": "[B, D] (one Brownian channel per state dimension)",
    "general": "[B, D, m] (m Brownian channels)",
    "scalar": "[B, D, 1] (one Brownian channel shared by all dimensions)",
    "additive": "[B, D, m], independent of the state x",
})
SDE_TYPES: tuple[str, ...] = ("ito", "stratonovich")

_ALL_NOISE = NOISE_TYPES
_NO_GENERAL = ("diagonal", "scalar", "additive")
_ANY_LEVY = ("none", "space-time", "davie", "foster")


@dataclass(frozen=True)
class SDESolver:
    """A torchsde solver and what it can solve.

    Attributes:
        name: torchsde's method name (``NeuralSDE(..., solver=name)``).
        sde_types: the SDE types it solves (``'ito'``, ``'stratonovich'``).
        noise_types: the noise types it solves.
        levy_areas: the Lévy-area approximations its Brownian motion may carry; the first is the one
            nodecore's own Brownian motion is built with.
        description: one line for reports.
    """

    name: str
    sde_types: tuple[str, ...]
    noise_types: tuple[str, ...]
    levy_areas: tuple[str, ...]
    description: str


# The SDE solvers torchsde 0.2.6 offers for forward solves (its 'adjoint_reversible_heun' is the backward half
# of 'reversible_heun' and is not listed). A test checks this table against torchsde's own solver classes.
SDE_SOLVERS: Mapping[str, SDESolver] = MappingProxyType({s.name: s for s in (
    SDESolver("euler", ("ito",), _ALL_NOISE, _ANY_LEVY, "Euler–Maruyama (strong order 0.5; 1.0 for additive noise)"),
    SDESolver("milstein", SDE_TYPES, _NO_GENERAL, _ANY_LEVY, "Milstein (strong order 1.0)"),
    SDESolver("srk", ("ito",), _NO_GENERAL, ("space-time", "davie", "foster"),
              "stochastic Runge–Kutta of Rößler (strong order 1.5; torchdyn's default)"),
    SDESolver("midpoint", ("stratonovich",), _ALL_NOISE, _ANY_LEVY, "midpoint (strong order 1.0; 0.5 general)"),
    SDESolver("heun", ("stratonovich",), _ALL_NOISE, _ANY_LEVY, "Heun (strong order 1.0; 0.5 general)"),
    SDESolver("euler_heun", ("stratonovich",), _ALL_NOISE, _ANY_LEVY, "Euler–Heun (strong order 1.0; 0.5 general)"),
    SDESolver("reversible_heun", ("stratonovich",), _ALL_NOISE, _ANY_LEVY,
              "reversible Heun (strong order 0.5; 1.0 additive); exact gradients with sensitivity='adjoint'"),
    SDESolver("log_ode", ("stratonovich",), _ALL_NOISE, ("foster", "davie"),
              "log-ODE midpoint (strong order 1.0; 0.5 general)"),
)})
SDE_SOLVER_NAMES: tuple[str, ...] = tuple(SDE_SOLVERS)


@dataclass(frozen=True)
class TorchdynSDESolver:
    """One of torchdyn master's SDE solver names (``sdeint(..., solver=name)``) as a torchsde method.

    Attributes:
        name: torchdyn's name.
        method: the torchsde method (a key of :data:`SDE_SOLVERS`).
        sde_type: the only SDE type it takes, where torchdyn's solver is tied to one (its Milstein pair).
        options: torchsde's method options.
    """

    name: str
    method: str
    sde_type: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# torchdyn master's SDE_SOLVER_DICT. Its Milstein pair is derivative-free: torchsde's grad_free option.
TORCHDYN_SDE_SOLVERS: Mapping[str, TorchdynSDESolver] = MappingProxyType({s.name: s for s in (
    TorchdynSDESolver("euler", "euler"),
    TorchdynSDESolver("eulerHeun", "euler_heun"),
    TorchdynSDESolver("midpoint", "midpoint"),
    TorchdynSDESolver("milstein_ito", "milstein", "ito", MappingProxyType({"grad_free": True})),
    TorchdynSDESolver("milstein_stratonovich", "milstein", "stratonovich", MappingProxyType({"grad_free": True})),
)})


def check_sde_options(solver: str, noise_type: str, sde_type: str) -> SDESolver:
    """The registry entry of ``solver``, checked to solve ``sde_type`` SDEs with ``noise_type`` noise.

    Raises:
        ValueError: an unknown solver, noise type or SDE type, or a solver that cannot solve this SDE; the
        message lists the valid values (for the mismatch: the solvers that can).
    """
    noise_type = choice("noise_type", noise_type, NOISE_TYPES)
    sde_type = choice("sde_type", sde_type, SDE_TYPES)
    entry = SDE_SOLVERS[choice("solver", solver, SDE_SOLVER_NAMES)]
    if sde_type not in entry.sde_types or noise_type not in entry.noise_types:
        fits = [s.name for s in SDE_SOLVERS.values() if sde_type in s.sde_types and noise_type in s.noise_types]
        raise ValueError(
            f"solver {solver!r} cannot solve an {sde_type!r} SDE with {noise_type!r} noise (it solves "
            f"{'/'.join(entry.sde_types)} SDEs with {', '.join(entry.noise_types)} noise); valid solvers for "
            f"sde_type={sde_type!r}, noise_type={noise_type!r}: {', '.join(fits)}"
        )
    return entry


def resolve_sde_solver(solver: str, noise_type: str, sde_type: str) -> tuple[SDESolver, dict[str, Any]]:
    """A torchsde method for ``solver`` (torchdyn's name or torchsde's) and its options, checked for this SDE.

    Raises:
        ValueError: an unknown name (the message lists torchdyn's and torchsde's), or one that cannot solve an
            ``sde_type`` SDE with ``noise_type`` noise (the message lists those that can).
    """
    alias = TORCHDYN_SDE_SOLVERS.get(solver) if isinstance(solver, str) else None
    if alias is None:
        names = (*TORCHDYN_SDE_SOLVERS, *(n for n in SDE_SOLVER_NAMES if n not in TORCHDYN_SDE_SOLVERS))
        choice("solver", solver, names)
        return check_sde_options(solver, noise_type, sde_type), {}
    if alias.sde_type is not None and sde_type != alias.sde_type:
        raise ValueError(
            f"solver {solver!r} solves {alias.sde_type!r} SDEs, got sde_type={sde_type!r}; for "
            f"{sde_type!r} SDEs use {'milstein_ito' if sde_type == 'ito' else 'milstein_stratonovich'!r}"
        )
    try:
        entry = check_sde_options(alias.method, noise_type, sde_type)
    except ValueError as err:
        raise ValueError(f"solver {solver!r} (torchsde's {alias.method!r}): {err}") from None
    return entry, dict(alias.options)


class _ShapeCheckedSDE:
    """The user's SDE as torchsde calls it, checking the shapes of the first drift and diffusion it returns.

    Only ``f`` and ``g`` are passed on (torchdyn wraps an SDE the same way), with ``noise_type`` and ``sde_type``.
    """

    def __init__(self, sde: Any, channels: int | None) -> None:
        self.sde, self.channels = sde, channels
        self.noise_type, self.sde_type = sde.noise_type, sde.sde_type
        self.f_checked = self.g_checked = False

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.sde.f(t, y)
        if not self.f_checked:
            if not isinstance(out, Tensor) or out.shape != y.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"the drift f(t, x) must return a tensor shaped like the state {tuple(y.shape)}, "
                                 f"got {got}")
            self.f_checked = True
        return out

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.sde.g(t, y)
        if not self.g_checked:
            check_diffusion(out, y, self.noise_type, self.channels)
            self.g_checked = True
        return out


def check_diffusion(g: object, x: Tensor, noise_type: str, channels: int | None = None) -> int:
    """The Brownian channels ``m`` of a diffusion ``g`` for the state ``x [B, D]``, after checking its shape.

    Args:
        channels: the channels the Brownian motion has, when one is given.

    Raises:
        ValueError: ``g`` is not shaped as ``noise_type`` asks (see :data:`DIFFUSION_SHAPES`), or has other
            channels than ``channels``.
    """
    batch, dim = x.shape
    got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
    if noise_type == "diagonal":
        fits, found = got == (batch, dim), dim
    else:
        fits = isinstance(g, Tensor) and g.ndim == 3 and got[:2] == (batch, dim) and got[2] >= 1
        found = got[2] if fits else 0
        fits = fits and (noise_type != "scalar" or found == 1)
    if not fits:
        raise ValueError(
            f"with noise_type={noise_type!r} the diffusion must return {DIFFUSION_SHAPES[noise_type]} for a "
            f"state [B, D] = {[batch, dim]}, got {got}; pick the noise_type that matches the diffusion "
            f"(valid noise_types: {', '.join(NOISE_TYPES)})"
        )
    if channels is not None and found != channels:
        raise ValueError(f"the diffusion has {found} Brownian channels but bm has {channels}; "
                         f"bm must be shaped [batch, {found}]")
    return found


class SDEStepper(nn.Module):
    """One torchsde method as a torchdyn SDE solver: ``step(x, t, dt) -> (None, x(t + dt), None)``.

    Args:
        sde: torchsde's SDE: ``f(t, x) [B, D]``, ``g(t, x)`` (shaped by ``noise_type``), ``noise_type``, ``sde_type``.
        bm: a torchsde Brownian motion ``[B, m]`` (its increments drive the steps).
        dtype: torchdyn's argument, unused (the state's dtype is used).
        method: a torchdyn name (:data:`TORCHDYN_SDE_SOLVERS`) or a torchsde one (:data:`SDE_SOLVER_NAMES`).

    Attributes:
        stepping_class: ``'fixed'`` (torchdyn's attribute; every SDE method steps at the step it is given).
        order: the method's strong order for this SDE.

    Raises:
        TypeError: ``sde`` lacks ``f``, ``g``, ``noise_type`` or ``sde_type``; ``bm`` is not a torchsde Brownian motion.
        ValueError: a method that cannot solve this SDE, or a Brownian motion without the Lévy area it needs.
    """

    stepping_class = "fixed"

    def __init__(self, sde: Any, bm: torchsde.BaseBrownian, dtype: torch.dtype = torch.float32, *,
                 method: str) -> None:
        super().__init__()
        check_sde(sde)
        if not isinstance(bm, torchsde.BaseBrownian):
            raise TypeError(f"bm must be a torchsde Brownian motion (e.g. torchsde.BrownianInterval), got "
                            f"{type(bm).__name__}")
        self.entry, options = resolve_sde_solver(method, sde.noise_type, sde.sde_type)
        self.method, self.sde, self.bm = method, sde, bm
        channels = bm.shape[1] if len(bm.shape) == 2 else None
        self._checked = _ShapeCheckedSDE(sde, channels)
        solver_class = _torchsde_methods.select(method=self.entry.name, sde_type=sde.sde_type)
        self._solver = solver_class(sde=_torchsde_sde.ForwardSDE(self._checked), bm=bm, dt=1.0, adaptive=False,
                                    rtol=0.0, atol=0.0, dt_min=0.0, options=options)
        self.order = float(self._solver.strong_order)
        self._last: tuple[Tensor, Tensor, tuple] | None = None  # (t1, x1, solver state) of the last step

    def advance(self, x: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        """The state at ``t1 > t0`` from ``x [B, D]`` at ``t0`` (0-dim tensors), in one step."""
        if len(self.bm.shape) != 2 or self.bm.shape[0] != x.shape[0]:
            raise ValueError(f"bm must be shaped [batch, Brownian channels] with batch {x.shape[0]}, got "
                             f"{list(self.bm.shape)}")
        last = self._last
        if last is not None and last[1] is x and bool(last[0] == t0):
            extra = last[2]  # a solver with state (reversible Heun) continues from its last step
        else:
            extra = self._solver.init_extra_solver_state(t0, x)
        x1, extra = self._solver.step(t0, t1, x, extra)
        self._last = (t1, x1, extra) if extra else None
        return x1

    def step(self, x: Tensor, t: Tensor, dt: Tensor) -> tuple[None, Tensor, None]:
        """torchdyn's one step: ``(None, x(t + dt), None)``."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device) if isinstance(t, Tensor) else time_tensor(t, x)
        return None, self.advance(x, t, t + dt), None

    def extra_repr(self) -> str:
        return f"method={self.method!r} (torchsde {self.entry.name!r}), strong order {self.order}"


def check_sde_interface(sde: object, lead: str, hint: str) -> None:
    """Raise a TypeError, ``lead`` + what torchsde's SDE needs + what ``sde`` lacks + ``hint``, unless ``sde``
    has methods ``f(t, x)``, ``g(t, x)`` and attributes ``noise_type``, ``sde_type``."""
    for name in ("f", "g", "noise_type", "sde_type"):
        if not hasattr(sde, name) or (name in ("f", "g") and not callable(getattr(sde, name))):
            what = f"method {name}(t, x)" if name in ("f", "g") else f"attribute {name}"
            raise TypeError(f"{lead} methods f(t, x) (drift) and g(t, x) (diffusion) and attributes noise_type and "
                            f"sde_type; {type(sde).__name__} has no {what} {hint}")


def check_sde(sde: object) -> None:
    """Raise unless ``sde`` is torchsde's SDE: methods ``f(t, x)``, ``g(t, x)``, attributes ``noise_type``, ``sde_type``.

    Raises:
        TypeError: naming what is missing.
        ValueError: an unknown ``noise_type`` or ``sde_type`` (the message lists the valid ones).
    """
    check_sde_interface(sde, "the SDE must have", "(nodecore.models.SDEFunc(f, g, noise_type=..., sde_type=...) "
                                                  "builds one from two modules)")
    choice("noise_type", sde.noise_type, NOISE_TYPES)
    choice("sde_type", sde.sde_type, SDE_TYPES)


class EulerMaruyama(SDEStepper):
    """torchdyn's Euler–Maruyama solver (Itô): ``x + f dt + g dW``, torchsde's ``'euler'``."""

    def __init__(self, sde: Any, bm: torchsde.BaseBrownian, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(sde, bm, dtype, method="euler")


class EulerHeun(SDEStepper):
    """torchdyn's Euler–Heun solver (Stratonovich), torchsde's ``'euler_heun'``."""

    def __init__(self, sde: Any, bm: torchsde.BaseBrownian, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(sde, bm, dtype, method="eulerHeun")


class MilesteinIto(SDEStepper):
    """torchdyn's derivative-free Milstein solver for Itô SDEs (its spelling), torchsde's grad-free ``'milstein'``."""

    def __init__(self, sde: Any, bm: torchsde.BaseBrownian, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(sde, bm, dtype, method="milstein_ito")


class MilesteinStratonovich(SDEStepper):
    """torchdyn's derivative-free Milstein solver for Stratonovich SDEs (its spelling), torchsde's grad-free
    ``'milstein'``."""

    def __init__(self, sde: Any, bm: torchsde.BaseBrownian, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(sde, bm, dtype, method="milstein_stratonovich")


class Midpoint(SDEStepper):
    """The Stratonovich midpoint solver, torchsde's ``'midpoint'`` (torchdyn lists one it cannot construct)."""

    def __init__(self, sde: Any, bm: torchsde.BaseBrownian, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(sde, bm, dtype, method="midpoint")


#: torchdyn's ``SDE_SOLVER_DICT``: its names and solver classes.
SDE_SOLVER_DICT: Mapping[str, type[SDEStepper]] = MappingProxyType({
    "euler": EulerMaruyama, "eulerHeun": EulerHeun, "midpoint": Midpoint, "milstein_ito": MilesteinIto,
    "milstein_stratonovich": MilesteinStratonovich,
})


def sde_str_to_solver(solver_name: str, sde: Any, bm: torchsde.BaseBrownian,
                      dtype: torch.dtype = torch.float32) -> SDEStepper:
    """The solver object for a torchdyn or torchsde method name (torchdyn's function, which takes its names only).

    Raises:
        ValueError: an unknown name or one that cannot solve ``sde``; TypeError: see :class:`SDEStepper`.
    """
    return SDEStepper(sde, bm, dtype, method=solver_name)


def __getattr__(name: str) -> object:
    """torchdyn's module also hands out its solver base classes; loaded on first use."""
    if name in ("DiffEqSolver", "MultipleShootingDiffeqSolver"):
        from nodecore.numerics.solvers import templates

        return getattr(templates, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DIFFUSION_SHAPES", "EulerHeun", "EulerMaruyama", "MilesteinIto", "MilesteinStratonovich", "Midpoint",
    "NOISE_TYPES", "SDESolver", "SDEStepper", "SDE_SOLVERS", "SDE_SOLVER_DICT", "SDE_SOLVER_NAMES", "SDE_TYPES",
    "TORCHDYN_SDE_SOLVERS", "TorchdynSDESolver", "check_diffusion", "check_sde", "check_sde_options",
    "resolve_sde_solver", "sde_str_to_solver",
]
