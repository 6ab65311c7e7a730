"""torchdyn's ``torchdyn.numerics.interpolators`` import path: polynomial interpolants over one step.

An interpolant is fitted on one step ``[t0, t1]`` from what the step computed (end points, end slopes, a
midpoint) and evaluated at ``θ = (t - t0) / (t1 - t0)`` as ``Σ_k coefs[k] θ^k``. nodecore's solvers read inner
output points off their own dense output (``interpolator='dense'``, of the solver's declared dense order); a
:class:`FourthOrder` instance passed as ``interpolator=`` asks for the same thing, as ``'4th'`` does. The classes
stay usable on their own, e.g. to interpolate stored solver steps.

Unlike torchdyn's, :class:`Linear` and :class:`ThirdHermite` are implemented (torchdyn's raise
``NotImplementedError``); :class:`FourthOrder` fits the same quartic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nodecore._checks import choice
from nodecore.numerics.tableaus import DORMAND_PRINCE45

__all__ = ["INTERP_DICT", "FourthOrder", "Interpolator", "Linear", "ThirdHermite", "construct_4th", "str_to_interp"]


class Interpolator:
    """A polynomial interpolant on one step, of accuracy ``order``.

    Attributes:
        order: the interpolant's order of accuracy. bmid: stage weights of the step's midpoint (None when the
            interpolant needs no midpoint).
    """

    bmid: Tensor | None = None

    def __init__(self, order: int) -> None:
        self.order = order

    def sync_device_dtype(self, x: Tensor, t_span: Tensor) -> tuple[Tensor, Tensor]:
        """Moves :attr:`bmid` to ``x``'s device and dtype; returns ``(x, t_span)`` unchanged."""
        if self.bmid is not None:
            self.bmid = self.bmid.to(x)
        return x, t_span

    def fit(self, dt: Tensor | float, f0: Tensor, f1: Tensor, x0: Tensor, x1: Tensor,
            x_mid: Tensor | None = None, **kwargs: object) -> list[Tensor]:
        """The coefficients ``[c0, c1, ...]`` of ``θ^0, θ^1, ...`` for the step ``x0 -> x1`` of size ``dt``."""
        raise NotImplementedError(f"{type(self).__name__} does not define fit")

    def evaluate(self, coefs: Sequence[Tensor], t0: Tensor | float, t1: Tensor | float,
                 t: Tensor | float) -> Tensor:
        """``Σ_k coefs[k] θ^k`` at ``θ = (t - t0) / (t1 - t0)`` (Horner's rule)."""
        theta = (t - t0) / (t1 - t0)
        result = coefs[-1]
        for coef in reversed(coefs[:-1]):
            result = coef + theta * result
        return result


class Linear(Interpolator):
    """The chord from ``x0`` to ``x1``: order 1."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(order=1)

    def fit(self, dt: Tensor | float, f0: Tensor, f1: Tensor, x0: Tensor, x1: Tensor,
            x_mid: Tensor | None = None, **kwargs: object) -> list[Tensor]:
        return [x0, x1 - x0]


class ThirdHermite(Interpolator):
    """The cubic matching ``x`` and ``dx/dt = f`` at both ends: order 3."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(order=3)

    def fit(self, dt: Tensor | float, f0: Tensor, f1: Tensor, x0: Tensor, x1: Tensor,
            x_mid: Tensor | None = None, **kwargs: object) -> list[Tensor]:
        rise, slope0, slope1 = x1 - x0, dt * f0, dt * f1
        return [x0, slope0, 3 * rise - 2 * slope0 - slope1, slope0 + slope1 - 2 * rise]


class FourthOrder(Interpolator):
    """The quartic matching ``x`` and ``f`` at both ends and ``x_mid`` at the step's middle: order 4.

    With a Dormand–Prince 5(4) step, ``x_mid = x0 + dt Σ_i bmid[i] k_i`` from the step's seven stages ``k_i``
    (:attr:`bmid`: Shampine's interpolant at ``θ = 1/2``), as in torchdyn.
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(order=4)
        self.bmid = construct_4th(dtype)

    def fit(self, dt: Tensor | float, f0: Tensor, f1: Tensor, x0: Tensor, x1: Tensor,
            x_mid: Tensor | None = None, **kwargs: object) -> list[Tensor]:
        if x_mid is None:
            raise ValueError("FourthOrder.fit needs x_mid, the state at the step's middle")
        slope0, slope1 = dt * f0, dt * f1
        c2 = slope1 - 4 * slope0 - 11 * x0 - 5 * x1 + 16 * x_mid
        c3 = 5 * slope0 - 3 * slope1 + 18 * x0 + 14 * x1 - 32 * x_mid
        c4 = 2 * (slope1 - slope0) - 8 * (x0 + x1) + 16 * x_mid
        return [x0, slope0, c2, c3, c4]


def construct_4th(dtype: torch.dtype = torch.float32) -> Tensor:
    """The weights ``bmid`` of Dormand–Prince 5(4)'s seven stages giving the step's midpoint (torchdyn's name)."""
    weights = [sum(coef * 0.5 ** (j + 1) for j, coef in enumerate(row)) for row in DORMAND_PRINCE45.dense]
    return torch.tensor(weights, dtype=dtype)


INTERP_DICT: dict[str, type[Interpolator]] = {"4th": FourthOrder}


def str_to_interp(solver_name: str, dtype: torch.dtype = torch.float32) -> Interpolator:
    """The interpolant named ``solver_name`` (torchdyn's names: ``'4th'``).

    Raises:
        ValueError: an unknown name; the message lists the valid ones (torchdyn raises ``KeyError``).
    """
    return INTERP_DICT[choice("interpolator", solver_name, tuple(INTERP_DICT))](dtype)
