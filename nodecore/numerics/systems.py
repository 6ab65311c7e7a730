"""Test systems as ``nn.Module`` fields ``f(t, x)``: torchdyn's ``torchdyn.numerics.systems``.

``VanDerPol``, ``Lorenz`` and ``ODEProblem4`` (Rabinovich–Fabrikant) act on the last dimension of a state of any
leading shape; ``ODEProblem2`` / ``ODEProblem3`` (exponentials) and ``SineSystem`` have closed-form solutions;
``LTISystem``, the ``FourierSystem`` family and the ``MatMulSystem`` s are random systems with
``randomize_parameters()``, to draw families of problems.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Uniform

from nodecore._checks import integer, number


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

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

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

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

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


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _distribution(name: str, value: object) -> Distribution:
    if not isinstance(value, Distribution):
        raise ValueError(f"{name} must be a torch.distributions.Distribution (e.g. Uniform(-1, 1)), got {value!r}")
    return value


class ODEProblem2(nn.Module):
    """Exponential growth ``x' = 0.5 x`` (any state shape): ``x(t) = x0 exp(0.5 t)``."""

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x -> 0.5 x``; ``t`` and extra keywords are ignored."""
        return 0.5 * x


class ODEProblem3(nn.Module):
    """Exponential decay ``x' = -0.1 x`` (any state shape): ``x(t) = x0 exp(-0.1 t)``."""

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x -> -0.1 x``; ``t`` and extra keywords are ignored."""
        return -0.1 * x


class ODEProblem4(nn.Module):
    """The Rabinovich–Fabrikant system on states ``[..., 3]``:
    ``x' = y (z - 1 + x²) + gamma x``, ``y' = x (3 z + 1 - x²) + gamma y``, ``z' = -2 z (alpha + x y)``.

    torchdyn's takes no arguments and fixes ``gamma = 0.87, alpha = 1.1``, the defaults here; the keyword-only
    arguments are nodecore's.

    Args:
        alpha, gamma: the parameters (finite numbers).
    """

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

    def __init__(self, *, alpha: float = 1.1, gamma: float = 0.87) -> None:
        super().__init__()
        self.alpha, self.gamma = number("alpha", alpha), number("gamma", gamma)

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x [..., 3] -> dx/dt [..., 3]``; ``t`` and extra keywords are ignored (an autonomous field)."""
        _check_state("ODEProblem4", x, 3, "x, y, z")
        x1, x2, x3 = x[..., :1], x[..., 1:2], x[..., 2:]
        return torch.cat([x2 * (x3 - 1 + x1**2) + self.gamma * x1,
                          x1 * (3 * x3 + 1 - x1**2) + self.gamma * x2,
                          -2 * x3 * (self.alpha + x1 * x2)], -1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


class SineSystem(nn.Module):
    """``x' = sin(t)``, broadcast to the state's shape (the field does not depend on ``x``):
    ``x(t) = x0 + cos(t0) - cos(t)``."""

    def forward(self, t: Tensor | float, x: Tensor, **kwargs: object) -> Tensor:
        """``(t, x) -> sin(t)`` in ``x``'s shape, dtype and device; extra keywords are ignored."""
        return torch.sin(torch.as_tensor(t, dtype=x.dtype, device=x.device)) + torch.zeros_like(x)


class LTISystem(nn.Module):
    """A linear time-invariant system ``x' = A x + b`` on states ``[..., dim]``, ``A, b`` those of an ``nn.Linear``.

    Args:
        dim: the state size (an integer >= 1).
        randomizable: a flag for callers that redraw systems (stored, as torchdyn does; not enforced).

    Attributes:
        l: the ``nn.Linear(dim, dim)`` holding ``A`` (``l.weight``) and ``b`` (``l.bias``).
    """

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

    def __init__(self, dim: int = 2, randomizable: bool = True) -> None:
        super().__init__()
        self.dim = integer("dim", dim, minimum=1)
        self.randomizable = _flag("randomizable", randomizable)
        self.l = nn.Linear(self.dim, self.dim)

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x [..., dim] -> A x + b``; ``t`` and extra keywords are ignored."""
        return self.l(x)

    def randomize_parameters(self) -> None:
        """Replace ``l`` by a freshly initialised ``nn.Linear`` (on ``l``'s device and dtype)."""
        old = self.l.weight
        self.l = nn.Linear(self.dim, self.dim, device=old.device, dtype=old.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, randomizable={self.randomizable}"


def _like_state(value: Tensor, t: Tensor | float, x: object) -> Tensor:
    """The ``[1, dim]`` value at a scalar ``t`` expanded to a state ``[..., B, dim]`` (as is for any other)."""
    if torch.as_tensor(t).ndim == 0 and isinstance(x, Tensor) and x.ndim >= 2 and x.shape[-1] == value.shape[-1]:
        return value.expand(x.shape).contiguous()
    return value


class FourierSystem(nn.Module):
    """A field of time alone, a random sum of cosines: for each output ``d``,
    ``f_d(t) = sum_h sum_k A[d, h, k] cos(w[d, h, k] t + phi[d, h, k])`` (``k`` in 0, 1), whose solution is
    ``x0 + sum A / w (sin(w t + phi) - sin(w t0 + phi))``.

    ``n_harmonics`` is drawn with ``torch.randint`` in ``[2, 20)``, then ``A``, ``phi``, ``w`` (shape
    ``[dim, n_harmonics, 2]``) from their distributions, in torchdyn's order: under the same seed the draws are
    torchdyn's. ``A``, ``phi``, ``w`` are non-persistent buffers: they follow ``.to()`` / ``.double()``, and state
    dicts stay torchdyn's (empty). The field computes in their dtype.

    Args:
        dim: the state size (an integer >= 1).
        A_dist, phi_dist, w_dist: ``torch.distributions.Distribution`` s (stateless, so the shared defaults are
            safe) for the amplitudes, phases and angular frequencies.
        randomizable: a flag for callers that redraw systems (stored, as torchdyn does; not enforced).

    Attributes:
        n_harmonics: the number of harmonics (an ``int``; torchdyn keeps a one-element tensor).
    """

    _harmonics: tuple[int, int] = (2, 20)

    def __init__(
        self,
        dim: int = 2,
        A_dist: Distribution = Uniform(-10, 10),
        phi_dist: Distribution = Uniform(-1, 1),
        w_dist: Distribution = Uniform(-20, 20),
        randomizable: bool = True,
    ) -> None:
        super().__init__()
        self.dim = integer("dim", dim, minimum=1)
        self.A_dist = _distribution("A_dist", A_dist)
        self.phi_dist = _distribution("phi_dist", phi_dist)
        self.w_dist = _distribution("w_dist", w_dist)
        self.randomizable = _flag("randomizable", randomizable)
        self.n_harmonics = int(torch.randint(*self._harmonics, size=(1,)))
        shape = self._shape()
        for name, dist in (("A", self.A_dist), ("phi", self.phi_dist), ("w", self.w_dist)):
            self.register_buffer(name, dist.sample(shape), persistent=False)

    def _shape(self) -> torch.Size:
        return torch.Size([self.dim, self.n_harmonics, 2])

    def _fourier(self, t: Tensor | float) -> Tensor:
        """The unmixed sum at scalar ``t`` (shape ``[1, dim]``) or at each of a 1-D ``t`` (shape ``[T, dim]``)."""
        t = torch.as_tensor(t).to(self.A)
        if t.ndim > 1:
            raise ValueError(f"{type(self).__name__} takes a scalar or 1-D t, got shape {tuple(t.shape)}")
        t = t.reshape(-1, 1, 1, 1)
        return (self.A * torch.cos(self.w * t + self.phi)).sum((-2, -1))

    def forward(self, t: Tensor | float, x: Tensor | None = None, **kwargs: object) -> Tensor:
        """``t -> f(t)``: ``[1, dim]`` for a scalar ``t`` (torchdyn's shape), ``[T, dim]`` for a 1-D ``t``; extra
        keywords are ignored. ``x`` is read for its shape only: at a scalar ``t`` with a batch ``x`` of shape
        ``[..., B, dim]`` the ``[1, dim]`` value is expanded to ``x``'s shape, as nodecore's solvers need
        (torchdyn's broadcast it inside their steps; the values are the same).

        Raises:
            ValueError: ``t`` has more than one dimension.
        """
        return _like_state(self._fourier(t), t, x)

    def randomize_parameters(self) -> None:
        """Redraw ``A``, ``phi`` and ``w`` (same shape, dtype and device; ``n_harmonics`` is kept)."""
        shape = self._shape()
        for name, dist in (("A", self.A_dist), ("phi", self.phi_dist), ("w", self.w_dist)):
            old = getattr(self, name)
            setattr(self, name, dist.sample(shape).to(old))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_harmonics={self.n_harmonics}, randomizable={self.randomizable}"


class StiffFourierSystem(FourierSystem):
    """:class:`FourierSystem` with many more harmonics: ``n_harmonics`` is drawn in ``[20, 100)``."""

    _harmonics = (20, 100)


class CoupledFourierSystem(FourierSystem):
    """:class:`FourierSystem`'s sum mixed across dimensions: ``f(t) = W F(t) + b``, ``W, b`` those of the
    ``nn.Linear(dim, dim)`` ``mixing_l`` (built after the draws, as torchdyn does). The solution is
    ``x0 + W (G(t) - G(t0)) + b (t - t0)``, ``G`` the antiderivative of ``F``.
    """

    def __init__(
        self,
        dim: int = 2,
        A_dist: Distribution = Uniform(-10, 10),
        phi_dist: Distribution = Uniform(-1, 1),
        w_dist: Distribution = Uniform(-20, 20),
        randomizable: bool = True,
    ) -> None:
        super().__init__(dim, A_dist, phi_dist, w_dist, randomizable)
        self.mixing_l = nn.Linear(self.dim, self.dim)

    def forward(self, t: Tensor | float, x: Tensor | None = None, **kwargs: object) -> Tensor:
        """``t -> W F(t) + b``, shaped as :meth:`FourierSystem.forward`'s.

        Raises:
            ValueError: ``t`` has more than one dimension.
        """
        return _like_state(self.mixing_l(self._fourier(t)), t, x)

    def randomize_parameters(self) -> None:
        """Redraw ``A``, ``phi``, ``w`` and replace ``mixing_l`` by a freshly initialised ``nn.Linear``."""
        super().randomize_parameters()
        old = self.mixing_l.weight
        self.mixing_l = nn.Linear(self.dim, self.dim, device=old.device, dtype=old.dtype)


class MatMulSystem(nn.Module):
    """A random neural field ``x' = net(x)`` on states ``[..., dim]``: an MLP of ``layers`` activated layers,
    ``Linear(dim, hdim)`` then ``layers - 1`` blocks ``Linear(hdim, hdim)``, each followed by ``activation``, and
    a last ``Linear(hdim, dim)``.

    torchdyn ignores ``activation`` and ``layers`` (always ``Tanh`` and 5 activated layers); nodecore honours
    them, a deliberate fix of that torchdyn bug. The defaults give torchdyn's network, with its module layout (so
    its state dicts load). Each layer gets its own copy of ``activation``.

    Args:
        dim, hdim: the state and hidden sizes (integers >= 1).
        activation: an ``nn.Module``.
        layers: the number of activated layers (an integer >= 1).
        randomizable: a flag for callers that redraw systems (stored, as torchdyn does; not enforced).

    Attributes:
        net: the ``nn.Sequential``.
    """

    ignores_time = True  # autonomous: solvers skip the stage times, multiple shooting batches its intervals

    _bounded = False

    def __init__(self, dim: int = 2, activation: nn.Module = nn.Tanh(), layers: int = 5, hdim: int = 32,
                 randomizable: bool = True) -> None:
        super().__init__()
        self.dim = integer("dim", dim, minimum=1)
        layers = integer("layers", layers, minimum=1)
        hdim = integer("hdim", hdim, minimum=1)
        if not isinstance(activation, nn.Module):
            raise ValueError(f"activation must be an nn.Module (e.g. nn.Tanh()), got {activation!r}")
        self.randomizable = _flag("randomizable", randomizable)
        # Built first layer to last, as torchdyn does: under the same seed the initial weights are torchdyn's.
        blocks: list[nn.Module] = [nn.Linear(self.dim, hdim), copy.deepcopy(activation)]
        blocks += [nn.Sequential(nn.Linear(hdim, hdim), copy.deepcopy(activation)) for _ in range(layers - 1)]
        blocks += [nn.Linear(hdim, self.dim)] + ([nn.Tanh()] if self._bounded else [])
        self.net = nn.Sequential(nn.Sequential(*blocks))

    def forward(self, t: Tensor, x: Tensor, **kwargs: object) -> Tensor:
        """``x [..., dim] -> net(x)``; ``t`` and extra keywords are ignored."""
        return self.net(x)

    @torch.no_grad()
    def randomize_parameters(self) -> None:
        """Redraw every parameter of ``net`` in place from ``N(0, 1)``."""
        for p in self.net.parameters():
            nn.init.normal_(p, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, randomizable={self.randomizable}"


class MatMulBoundedSystem(MatMulSystem):
    """:class:`MatMulSystem` with a final ``Tanh``: ``|dx/dt| <= 1`` componentwise."""

    _bounded = True
