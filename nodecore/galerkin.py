"""Depth-variant layers whose weights are functions of the depth ``t`` expanded in a basis (Galerkin).

Massaroli et al., "Dissecting Neural ODEs" (2020): instead of feeding ``t`` to the field as a feature
(:class:`~nodecore.fields.DepthCat`), let the parameters themselves vary with depth,
``W(t) = sum_j c_j phi_j(t)``, and learn the coefficients ``c_j``. Every basis in :data:`GALERKIN_BASES`
starts with the constant ``phi_0(t) = 1``, so ``n_basis=1`` is an ordinary depth-invariant layer.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from nodecore._checks import choice, integer
from nodecore.fields import DepthAware, Time


def _fourier(t: Tensor, n_basis: int) -> Tensor:
    """``[1, sin 2πt, cos 2πt, sin 4πt, cos 4πt, ...]``, the first ``n_basis``: period 1 in depth."""
    idx = torch.arange(n_basis, device=t.device)
    angle = 2.0 * math.pi * ((idx + 1) // 2).to(t.dtype) * t
    return torch.where(idx % 2 == 1, torch.sin(angle), torch.cos(angle))


def _polynomial(t: Tensor, n_basis: int) -> Tensor:
    """Monomials ``[1, t, t^2, ...]``; well conditioned for depths in about ``[-1, 1]``."""
    powers = [torch.ones_like(t)]
    for _ in range(n_basis - 1):
        powers.append(powers[-1] * t)
    return torch.stack(powers)


def _chebyshev(t: Tensor, n_basis: int) -> Tensor:
    """Chebyshev polynomials ``T_j(2t - 1)``: orthogonal (with weight) on depths ``[0, 1]``."""
    s = 2.0 * t - 1.0
    values = [torch.ones_like(t), s]
    while len(values) < n_basis:
        values.append(2.0 * s * values[-1] - values[-2])
    return torch.stack(values[:n_basis])


BasisFunction = Callable[[Tensor, int], Tensor]

#: Depth bases by name: ``GALERKIN_BASES[name](t, n_basis)`` maps a 0-dim depth ``t`` to ``[n_basis]`` values;
#: the first is always the constant 1.
GALERKIN_BASES: Mapping[str, BasisFunction] = MappingProxyType(
    {"fourier": _fourier, "polynomial": _polynomial, "chebyshev": _chebyshev}
)


class GalerkinLinear(DepthAware):
    """A linear layer whose weight and bias vary with depth: ``y = W(t) x + b(t)``.

    ``W(t) = sum_j coeffs[j] * phi_j(t)`` and ``b(t) = sum_j bias_coeffs[j] * phi_j(t)`` with ``phi`` the
    chosen basis of :data:`GALERKIN_BASES`. Inside a vector field the :class:`~nodecore.fields.VectorField`
    supplies ``t`` at every evaluation (the layer is :class:`~nodecore.fields.DepthAware`), e.g.
    ``NeuralODE(nn.Sequential(GalerkinLinear(2, 16), nn.Tanh(), GalerkinLinear(16, 2)))``; outside one,
    pass ``t`` explicitly: ``layer(x, t)``.

    Initialisation: ``coeffs[0]`` and ``bias_coeffs[0]`` as ``nn.Linear`` initialises its weight and bias,
    the higher coefficients zero, so a fresh layer is an ``nn.Linear`` at every depth and training adds
    the depth dependence.

    Args:
        in_features, out_features: sizes of ``x [..., in_features]`` and ``y [..., out_features]``.
        basis: a name from :data:`GALERKIN_BASES` (default ``'fourier'``).
        n_basis: number of basis functions (1: depth-invariant).
        bias: learn a depth-varying bias ``b(t)``.

    Attributes:
        coeffs: ``[n_basis, out_features, in_features]``.
        bias_coeffs: ``[n_basis, out_features]``, or None without bias.

    Raises:
        ValueError: unknown basis (the message lists the valid ones), sizes below 1.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        basis: str = "fourier",
        n_basis: int = 5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.basis = choice("basis", basis, GALERKIN_BASES, plural="bases")
        self.basis_function = GALERKIN_BASES[self.basis]
        self.in_features = integer("in_features", in_features, minimum=1)
        self.out_features = integer("out_features", out_features, minimum=1)
        self.n_basis = integer("n_basis", n_basis, minimum=1)
        factory = {"device": device, "dtype": dtype}
        self.coeffs = nn.Parameter(torch.empty(self.n_basis, self.out_features, self.in_features, **factory))
        self.bias_coeffs = nn.Parameter(torch.empty(self.n_basis, self.out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation for the constant term, zeros for the others."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.coeffs.zero_()
            nn.init.kaiming_uniform_(self.coeffs[0], a=math.sqrt(5))  # what nn.Linear does: U(-bound, bound)
            if self.bias_coeffs is not None:
                self.bias_coeffs.zero_()
                nn.init.uniform_(self.bias_coeffs[0], -bound, bound)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, basis={self.basis!r}, "
                f"n_basis={self.n_basis}, bias={self.bias_coeffs is not None}")

    def phi(self, t: Time) -> Tensor:
        """The basis at depth ``t`` (a number or 0-dim tensor): ``[n_basis]`` in the coefficients' dtype."""
        t = torch.as_tensor(t, dtype=self.coeffs.dtype, device=self.coeffs.device)
        if t.numel() != 1:
            raise ValueError(f"t must be a single depth, got shape {tuple(t.shape)}")
        return self.basis_function(t.reshape(()), self.n_basis)

    def weight_at(self, t: Time) -> Tensor:
        """``W(t) [out_features, in_features]``."""
        return torch.tensordot(self.phi(t), self.coeffs, dims=1)

    def bias_at(self, t: Time) -> Tensor | None:
        """``b(t) [out_features]``, or None without bias."""
        if self.bias_coeffs is None:
            return None
        return self.phi(t) @ self.bias_coeffs

    def forward(self, x: Tensor, t: Time | None = None) -> Tensor:
        """``x [..., in_features] -> [..., out_features]`` at depth ``t`` (default: the one the solver set).

        Raises:
            RuntimeError: no ``t`` given and none set by a VectorField.
        """
        depth = self.depth(x) if t is None else t
        return nn.functional.linear(x, self.weight_at(depth), self.bias_at(depth))
