"""torchdyn's Galerkin layers by name: weights that are functions of the depth, expanded in a basis.

Massaroli et al., "Dissecting Neural ODEs" (2020). Each layer reads the depth ``t`` from the last feature
(channel) of its input, the column :class:`~nodecore.fields.DepthCat` appends, maps it to
``s = dilation * t + shift`` and builds every weight as ``w_r(s) = sum_i sum_n coeffs[r, n, i] phi_i(n, s)``,
``phi`` the basis object's ``n_eig`` families evaluated at the orders ``n = 0, 1, ..., deg - 1``.

These follow torchdyn's constructors, parameter shapes and forward semantics; nodecore's own depth-variant
layer with its own bases is :class:`nodecore.galerkin.GalerkinLinear` (depth from the solver, not a column).
Where torchdyn's layers misbehave (non-integer orders, ``bias=False``, adaptive radial bases, Chebyshev
gradients), these do what the documentation says; the module's tests list each case.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nodecore._checks import integer, number


class _Basis(nn.Module):
    """A basis object: ``forward(n_range [deg], s 0-dim) -> list of n_eig tensors [deg]``.

    Attributes:
        deg: how many orders each family has.
        n_eig: how many families (2 for Fourier: cosines and sines).
    """

    n_eig: int = 1

    def __init__(self, deg: int, adaptive: bool = False) -> None:
        super().__init__()
        self.deg = integer("deg", deg, minimum=1)
        self.adaptive = bool(adaptive)

    def extra_repr(self) -> str:
        return f"deg={self.deg}, adaptive={self.adaptive}"


class Fourier(_Basis):
    """``[cos(n s), sin(n s)]``: ``n_eig = 2`` (``adaptive`` is accepted and has no effect, as in torchdyn)."""

    n_eig = 2

    def forward(self, n_range: Tensor, s: Tensor) -> list[Tensor]:
        ns = s * n_range
        return [torch.cos(ns), torch.sin(ns)]


class Polynomial(_Basis):
    """Monomials ``s**n`` (``adaptive`` has no effect)."""

    def forward(self, n_range: Tensor, s: Tensor) -> list[Tensor]:
        return [s**n_range]


class Chebychev(_Basis):
    """Chebyshev polynomials of the first kind ``T_n(s)`` (``adaptive`` has no effect; torchdyn's spelling).

    Raises:
        ValueError: ``n_range`` holds a negative or non-integer order.
    """

    def forward(self, n_range: Tensor, s: Tensor) -> list[Tensor]:
        orders = n_range.detach().round()
        if bool((orders != n_range.detach()).any()) or bool((orders < 0).any()):
            raise ValueError(f"Chebychev orders must be integers >= 0, got {n_range.tolist()}")
        top = int(orders.max()) if orders.numel() else 0
        values = [torch.ones_like(s), s]
        while len(values) <= top:
            values.append(2 * s * values[-1] - values[-2])
        return [torch.stack(values)[orders.long()]]


class _RadialBasis(_Basis):
    """Shared parts of the radial bases: ``r = |s - centers|`` and ``n / eps_scales``.

    Args:
        deg: orders per family.
        adaptive: learn ``centers`` and ``eps_scales``, one of each per order (``[deg]`` parameters);
            otherwise they are the numbers given.
        eps_scales: the scale ``eps`` (a finite number, not 0).
        centers: the center ``c`` (a finite number).
    """

    def __init__(self, deg: int, adaptive: bool = False, eps_scales: float = 2, centers: float = 0) -> None:
        super().__init__(deg, adaptive)
        eps = number("eps_scales", eps_scales)
        if eps == 0:
            raise ValueError("eps_scales must be a finite nonzero number, got 0")
        c = number("centers", centers)
        self.centers: Tensor | float = nn.Parameter(torch.full((self.deg,), c)) if self.adaptive else c
        self.eps_scales: Tensor | float = nn.Parameter(torch.full((self.deg,), eps)) if self.adaptive else eps

    def radius(self, s: Tensor) -> Tensor:
        return (s - self.centers).abs()


class VanillaRBF(_RadialBasis):
    """``r n / eps`` with ``r = |s - c|`` (torchdyn's "vanilla" radial basis)."""

    def forward(self, n_range: Tensor, s: Tensor) -> list[Tensor]:
        return [self.radius(s) * n_range / self.eps_scales]


class MultiquadRBF(_RadialBasis):
    """``1 + sqrt(1 + (r n / eps)²)`` with ``r = |s - c|`` (torchdyn's multiquadric)."""

    def forward(self, n_range: Tensor, s: Tensor) -> list[Tensor]:
        return [1 + torch.sqrt(1 + (self.radius(s) * n_range / self.eps_scales) ** 2)]


class GaussianRBF(_RadialBasis):
    """``exp(-(r (n - c) / eps)²)`` with ``r = |s - c|`` (torchdyn's Gaussian)."""

    def forward(self, n_range: Tensor, s: Tensor) -> list[Tensor]:
        return [torch.exp(-((self.radius(s) * (n_range - self.centers) / self.eps_scales) ** 2))]


class GalLayer(nn.Module):
    """The common part of the Galerkin layers: basis, dilation and shift of the depth, and the weights at a depth.

    Args:
        bias: whether the layer has a bias (its coefficients are the last rows of ``coeffs``).
        expfunc: the basis object (default a fresh ``Fourier(5)``): any module with ``deg`` and ``n_eig`` and
            ``forward(n_range, s) -> n_eig tensors [deg]``.
        dilation, shift: learn ``s = dilation * t + shift`` (otherwise fixed at ``1`` and ``0``).

    Attributes:
        coeffs: ``[rows, deg, n_eig]``, set by the subclass; zeros at first (torchdyn's initialisation: a fresh
            layer outputs zeros).
    """

    coeffs: nn.Parameter

    def __init__(self, bias: bool = True, expfunc: nn.Module | None = None, dilation: bool = True,
                 shift: bool = True) -> None:
        super().__init__()
        expfunc = Fourier(5) if expfunc is None else expfunc
        if not callable(expfunc) or not hasattr(expfunc, "deg") or not hasattr(expfunc, "n_eig"):
            raise ValueError(f"expfunc must be a basis object with deg, n_eig and forward(n_range, s), e.g. "
                             f"Fourier(5), got {type(expfunc).__name__}")
        self.expfunc = expfunc
        self.deg = integer("expfunc.deg", expfunc.deg, minimum=1)
        self.n_eig = integer("expfunc.n_eig", expfunc.n_eig, minimum=1)
        self.has_bias = bool(bias)
        if dilation:
            self.dilation = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("dilation", torch.ones(1), persistent=False)
        if shift:
            self.shift = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("shift", torch.zeros(1), persistent=False)

    def reset_parameters(self) -> None:
        """Zero coefficients, as torchdyn."""
        nn.init.zeros_(self.coeffs)

    def n_range(self) -> Tensor:
        """The orders ``[0, 1, ..., deg - 1]`` the basis is evaluated at, in the coefficients' dtype.

        torchdyn 1.0.6 uses ``linspace(0, deg, deg)``, non-integer orders for ``deg > 1`` (``s**1.25`` is NaN for
        ``s < 0``); override this method with that to reproduce a layer trained there.
        """
        return torch.arange(self.deg, dtype=self.coeffs.dtype, device=self.coeffs.device)

    def basis(self, t: Tensor) -> Tensor:
        """``[n_eig, deg]``: the basis at depth ``t`` (1 element), after dilation and shift."""
        s = (t.reshape(()) * self.dilation + self.shift).reshape(())
        values = self.expfunc(self.n_range(), s)
        if len(values) != self.n_eig:
            raise ValueError(f"{type(self.expfunc).__name__} returned {len(values)} families, its n_eig is "
                             f"{self.n_eig}")
        return torch.stack([torch.as_tensor(v, dtype=self.coeffs.dtype, device=self.coeffs.device).expand(self.deg)
                            for v in values])

    def calculate_weights(self, t: Tensor) -> Tensor:
        """``[rows]``: every weight at depth ``t``, ``sum_i sum_n coeffs[:, n, i] basis[i, n]``."""
        return torch.einsum("rni,in->r", self.coeffs, self.basis(t))


class GalLinear(GalLayer):
    """A linear layer whose weight and bias are functions of the depth (torchdyn's ``GalLinear``).

    Takes ``[..., in_features + 1]``, the last feature the depth ``t`` (from ``DepthCat(1)``; the last row's is
    used), and returns ``[..., out_features]``: ``x W(t)^T + b(t)``.

    Args:
        in_features, out_features: sizes without the depth column.
        bias, expfunc, dilation, shift: see :class:`GalLayer`.

    Attributes:
        coeffs: ``[(in_features + 1) * out_features, deg, n_eig]`` (``in_features * out_features`` rows
            without bias): the weight's ``W[o, i]`` at row ``o * in_features + i``, then the bias.
        weight, bias: ``W(t) [out_features, in_features]`` and ``b(t) [out_features]`` (None without bias) at
            the depth of the last call (None before one), as torchdyn's layer keeps them.

    Raises:
        ValueError: a size below 1 or a bad basis object.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, expfunc: nn.Module | None = None,
                 dilation: bool = True, shift: bool = True) -> None:
        super().__init__(bias, expfunc, dilation, shift)
        self.in_features = integer("in_features", in_features, minimum=1)
        self.out_features = integer("out_features", out_features, minimum=1)
        rows = (self.in_features + self.has_bias) * self.out_features
        self.coeffs = nn.Parameter(torch.empty(rows, self.deg, self.n_eig))
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        """``[..., in_features + 1] -> [..., out_features]``, the depth read from the last column.

        Raises:
            ValueError: the input does not have ``in_features + 1`` features.
        """
        if input.ndim < 2 or input.shape[-1] != self.in_features + 1:
            raise ValueError(
                f"GalLinear({self.in_features}, {self.out_features}) takes [..., {self.in_features + 1}] inputs: "
                f"{self.in_features} features and the depth that DepthCat(1) appends; got shape {tuple(input.shape)}")
        t = input[..., -1].reshape(-1)[-1]
        w = self.calculate_weights(t)
        n = self.in_features * self.out_features
        self.weight = w[:n].reshape(self.out_features, self.in_features)
        self.bias = w[n:] if self.has_bias else None
        return F.linear(input[..., :-1], self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


class GalConv2d(GalLayer):
    """A 2-D convolution whose kernel and bias are functions of the depth (torchdyn's ``GalConv2d``).

    Takes ``[B, in_channels + 1, H, W]``, the last channel the depth ``t`` (from ``DepthCat(1)``; read at the
    last sample's first pixel), and convolves the other channels.

    Args:
        in_channels, out_channels: channels without the depth channel.
        kernel_size: the square kernel's side.
        stride, padding: as ``nn.Conv2d``'s (integers).
        bias, expfunc, dilation, shift: see :class:`GalLayer`.

    Attributes:
        ic, oc, ks, pad, stride: torchdyn's names of the sizes.
        coeffs: ``[oc * ic * ks² + oc, deg, n_eig]`` (no ``+ oc`` without bias): the kernel in
            ``[oc, ic, ks, ks]`` order, then the bias.
        weight, bias: the kernel and bias at the depth of the last call (None before one).

    Raises:
        ValueError: a size below its minimum or a bad basis object.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 0, bias: bool = True, expfunc: nn.Module | None = None, dilation: bool = True,
                 shift: bool = True) -> None:
        super().__init__(bias, expfunc, dilation, shift)
        self.ic = integer("in_channels", in_channels, minimum=1)
        self.oc = integer("out_channels", out_channels, minimum=1)
        self.ks = integer("kernel_size", kernel_size, minimum=1)
        self.stride = integer("stride", stride, minimum=1)
        self.pad = integer("padding", padding, minimum=0)
        rows = self.oc * self.ic * self.ks**2 + (self.oc if self.has_bias else 0)
        self.coeffs = nn.Parameter(torch.empty(rows, self.deg, self.n_eig))
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        """``[B, in_channels + 1, H, W] -> [B, out_channels, H', W']``, the depth read from the last channel.

        Raises:
            ValueError: the input is not 4-D with ``in_channels + 1`` channels.
        """
        if input.ndim != 4 or input.shape[1] != self.ic + 1:
            raise ValueError(
                f"GalConv2d({self.ic}, {self.oc}) takes [B, {self.ic + 1}, H, W] inputs: {self.ic} channels and "
                f"the depth channel that DepthCat(1) appends; got shape {tuple(input.shape)}")
        t = input[-1, -1, 0, 0]
        w = self.calculate_weights(t)
        n = self.oc * self.ic * self.ks**2
        self.weight = w[:n].reshape(self.oc, self.ic, self.ks, self.ks)
        self.bias = w[n:] if self.has_bias else None
        return F.conv2d(input[:, :-1], self.weight, self.bias, stride=self.stride, padding=self.pad)

    def extra_repr(self) -> str:
        return (f"in_channels={self.ic}, out_channels={self.oc}, kernel_size={self.ks}, stride={self.stride}, "
                f"padding={self.pad}, bias={self.has_bias}")
