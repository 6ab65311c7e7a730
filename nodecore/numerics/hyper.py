"""Hypersolvers: a base solver's step plus a learned correction (Poli et al., "Hypersolvers", NeurIPS 2020).

``x_{n+1} = step(x_n) + h^(p+1) g(t_n, x_n)`` with ``p`` the base method's order and ``g`` the hypernet. With a
network that returns zeros the hypersolver is its base solver, bit for bit. Hypersolvers take constant steps
(the loop calls their :meth:`step`), and their hypernet's parameters are the module's parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from nodecore.numerics.solvers import Euler, Midpoint, RungeKutta, RungeKutta4


class HyperSolver(RungeKutta):
    """Mixin body of the hypersolvers below: ``hypernet(t, x)`` corrects each base step.

    Args:
        hypernet: an ``nn.Module`` (or callable) mapping ``(t, x)`` to a tensor shaped like ``x``.
        dtype: accepted for torchdyn compatibility.
    """

    def __init__(self, hypernet: nn.Module | Callable[[Tensor, Tensor], Tensor], dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__(dtype)
        if not callable(hypernet):
            raise TypeError(f"hypernet must be an nn.Module or callable (t, x) -> dx, got {type(hypernet).__name__}")
        self.hypernet = hypernet

    @property
    def adaptive(self) -> bool:
        return False

    @property
    def stepping_class(self) -> str:
        return "fixed"

    def step(self, f, x: Tensor, t, dt, k1: Tensor | None = None, args: object = None) -> tuple:
        """The base step plus ``dt^(order+1) * hypernet(t, x)``; torchdyn's ``(None, x_new, None)``."""
        _, x_base, _ = super().step(f, x, t, dt, k1)
        correction = self.hypernet(t, x)
        if not isinstance(correction, Tensor) or correction.shape != x.shape:
            got = tuple(correction.shape) if isinstance(correction, Tensor) else type(correction).__name__
            raise ValueError(f"the hypernet must return a tensor shaped like the state {tuple(x.shape)}, got {got}")
        return None, x_base + float(dt) ** (self.order + 1) * correction, None


class HyperEuler(HyperSolver, Euler):
    """Euler's step plus a learned ``h² g(t, x)``."""


class HyperMidpoint(HyperSolver, Midpoint):
    """The midpoint step plus a learned ``h³ g(t, x)``."""


class HyperRungeKutta4(HyperSolver, RungeKutta4):
    """The classic RK4 step plus a learned ``h⁵ g(t, x)``."""
