"""Step-size control: the controllers that pick the next step from the error ratio, and the first step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from nodecore._checks import number, positive
from nodecore.numerics.solvers import Workspace, time_tensor


@dataclass(frozen=True)
class PIController:
    """A proportional–integral step-size controller (Gustafsson; Hairer & Wanner II, IV.2; Söderlind).

    After a step with error ratio ``r`` (the previous accepted one had ``r_prev``), the next step is
    ``h * clip(safety * r**(-(icoeff + pcoeff) / k) * r_prev**(pcoeff / k), min_factor, max_factor)`` with
    ``1 / k`` the solver's error exponent; an accepted step never shrinks the next one. ``pcoeff = 0``,
    ``icoeff = 1`` is the classic integral controller (:class:`IntegralController`); Hairer's DOPRI5 uses
    ``pcoeff = 0.2, icoeff = 0.65`` (the defaults here).

    Args:
        pcoeff, icoeff: the proportional and integral gains.
        safety: factor below 1 that keeps the next step inside the tolerance.
        min_factor, max_factor: bounds on how fast the step may shrink and grow.
        min_step: steps never shrink below this size; a step at the minimum is accepted whatever its error
            (as torchdiffeq's ``min_step`` does). 0 means no minimum.
        max_step: steps never grow beyond this size.
    """

    pcoeff: float = 0.2
    icoeff: float = 0.65
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    min_step: float = 0.0
    max_step: float = math.inf

    def __post_init__(self) -> None:
        number("pcoeff", self.pcoeff)
        positive("icoeff", self.icoeff)
        positive("safety", self.safety)
        positive("min_factor", self.min_factor)
        if not self.min_factor <= 1.0 <= self.max_factor:
            raise ValueError(f"need min_factor <= 1 <= max_factor, got {self.min_factor} and {self.max_factor}")
        if self.min_step < 0 or not self.min_step <= self.max_step:
            raise ValueError(f"need 0 <= min_step <= max_step, got {self.min_step} and {self.max_step}")

    def next_step(self, h: float, ratio: float, previous_ratio: float, exponent: float, accepted: bool) -> float:
        """The signed size of the next step after a step ``h`` whose error ratio was ``ratio``."""
        if ratio == 0.0:
            factor = self.max_factor
        elif not math.isfinite(ratio):
            factor = self.min_factor
        else:
            factor = self.safety * ratio ** (-(self.icoeff + self.pcoeff) * exponent)
            if self.pcoeff:
                factor *= max(previous_ratio, 1e-4) ** (self.pcoeff * exponent)
            factor = min(self.max_factor, max(1.0 if accepted else self.min_factor, factor))
        return math.copysign(min(max(abs(h) * factor, self.min_step), self.max_step), h)

    def accepts(self, h: float, ratio: float) -> bool:
        """Whether a step of size ``h`` with error ratio ``ratio`` is accepted."""
        # A step stretched by a few ulps to land on an output time still counts as at the minimum.
        at_minimum = self.min_step > 0 and abs(h) <= self.min_step * (1 + 1e-9)
        return ratio <= 1.0 or (at_minimum and math.isfinite(ratio))


@dataclass(frozen=True)
class IntegralController(PIController):
    """The integral (I) controller: ``h * clip(safety * r**(-1/k), min_factor, max_factor)``; torchdiffeq's."""

    pcoeff: float = 0.0
    icoeff: float = 1.0


def initial_step(
    f: Callable[[Tensor, Tensor], Tensor],
    t0: float,
    y0: Tensor,
    f0: Tensor,
    order: int,
    atol: float,
    rtol: float,
    direction: float,
    error_size: int | None = None,
    *,
    workspace: Workspace | None = None,
) -> float:
    """Hairer's starting step (Hairer, Nørsett & Wanner I, II.4): one more field evaluation, one host sync.

    The norms are taken over ``atol / rtol + |y0|`` and divided by ``rtol`` (the same numbers to round-off as over
    ``atol + rtol |y0|``, in fewer ops). With the solve's ``workspace`` that scale is kept for the first step's
    error estimate, and a field that ignores time (``workspace.stage_times`` false) is handed no fresh time tensor.

    Returns the signed step size.
    """
    with torch.no_grad():
        offset = atol / rtol
        shaped = error_size is None and y0.ndim > 0
        if shaped:  # one norm per row of [y0, f0] over all their dims: no flattening ops
            y_n, k_n, dims = y0, f0, tuple(range(1, y0.ndim + 1))
        else:
            y_n, k_n, dims = y0.reshape(-1)[:error_size], f0.reshape(-1)[:error_size], 1
        root_n = rtol * math.sqrt(max(y_n.numel(), 1))
        if workspace is None:
            scale = y_n.abs().add_(offset)
        else:
            scale = workspace.scaled_abs_of(y0, offset, error_size, shaped=shaped)
        d0, d1 = (x / root_n for x in torch.linalg.vector_norm(torch.stack([y_n, k_n]).div_(scale), dim=dims).tolist())
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = torch.add(y0, f0, alpha=direction * h0)
        if workspace is not None and not workspace.stage_times:
            t1 = workspace.time_views[0]
        else:
            t1 = time_tensor(t0 + direction * h0, y0)
        f1 = f(t1, y1)
        if not shaped:
            f1 = f1.reshape(-1)[:error_size]
        d2 = float(torch.linalg.vector_norm(f1.sub(k_n).div_(scale))) / root_n / h0
        dmax = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (order + 1))
    return direction * min(100 * h0, h1)


def _rms(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))
