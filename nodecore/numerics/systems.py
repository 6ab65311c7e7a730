"""Classic test systems as ``nn.Module`` fields ``f(t, x)``: torchdyn's ``VanDerPol`` and ``Lorenz``.

Both act on the last dimension of a state of any leading shape (``[..., 2]`` and ``[..., 3]``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nodecore._checks import number


def _check_state(name: str, x: Tensor, size: int, names: str) -> None:
    if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[-1] != size:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} takes states [..., {size}] ({names}), got {got}")


class VanDerPol(nn.Module):
    """The Van der Pol oscillator: ``x1' = x2``, ``x2' = alpha (1 - x1²) x2 - x1``.

    Stiff for large ``alpha`` (torchdyn's default 10: relaxation oscillations of period about
    ``(3 - 2 ln 2) alpha``).

    Args:
        alpha: the damping ``alpha`` (a finite number).

    Attributes:
        nfe: how many times the field has been evaluated (reset it by assigning 0).
    """

    def __init__(self, alpha: float = 10) -> None:
        super().__init__()
        self.alpha = number("alpha", alpha)
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x [..., 2] -> dx/dt [..., 2]``; ``t`` and extra keywords are ignored (an autonomous field)."""
        _check_state("VanDerPol", x, 2, "x1, x2")
        self.nfe += 1
        x1, x2 = x[..., :1], x[..., 1:]
        return torch.cat([x2, self.alpha * (1 - x1**2) * x2 - x1], -1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Lorenz(nn.Module):
    """The Lorenz system: ``x' = sigma (y - x)``, ``y' = x (rho - z) - y``, ``z' = x y - beta z``.

    torchdyn's takes no arguments and fixes the classic chaotic ``sigma = 10, rho = 28, beta = 8/3``, the
    defaults here; the keyword-only arguments are nodecore's.

    Args:
        sigma, rho, beta: the parameters (finite numbers).

    Attributes:
        p: an unused ``nn.Linear(1, 1)``, kept so that torchdyn's state dicts load and the module has
            parameters (an optimiser, or the adjoint, can be built over it).
    """

    def __init__(self, *, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0) -> None:
        super().__init__()
        self.sigma, self.rho, self.beta = number("sigma", sigma), number("rho", rho), number("beta", beta)
        self.p = nn.Linear(1, 1)

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x [..., 3] -> dx/dt [..., 3]``; ``t`` and extra keywords are ignored (an autonomous field)."""
        _check_state("Lorenz", x, 3, "x, y, z")
        x1, x2, x3 = x[..., :1], x[..., 1:2], x[..., 2:]
        return torch.cat([self.sigma * (x2 - x1), x1 * (self.rho - x3) - x2, x1 * x2 - self.beta * x3], -1)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, rho={self.rho}, beta={self.beta}"
