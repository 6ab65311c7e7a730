"""torchdyn's ``LatentNeuralSDE``: a latent SDE trained by variational inference (Li et al. 2020).

A posterior SDE ``dz = f(t, z) dt + g(t, z) dW`` from ``z0 ~ q(z0)`` and a prior SDE ``dz = h(t, z) dt + g(t, z) dW``
from ``z0 ~ p(z0)`` share the diffusion ``g``; ``forward`` samples posterior paths and returns them with the KL
divergence of the posterior from the prior, ``KL(q(z0) || p(z0)) + E[int 1/2 |u|^2 dt]`` with ``g u = f - h``
(Girsanov), which the ELBO ``E[log p(x | z)] - KL`` subtracts. This is torchsde's ``examples/latent_sde.py``
model in torchdyn's API.

torchdyn's class (``torchdyn.models.hybrid``, 1.0.6 and master) cannot run: its module imports a ``LSDEFunc``
torchdyn removed, the class calls a pre-1.0 ``NeuralSDE`` signature and ``torchsde.sdeint`` with arguments
torchsde does not take. This one keeps its constructor, ``forward(eps, s_span) -> (zs, log_ratio)``,
``sample_p``/``sample_q`` and parameter names, and computes what that code intends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torchsde
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from nodecore.fields import Time, VectorField
from nodecore.models.sde import (
    NeuralSDE,
    NoiseType,
    SDEFunc,
    SDEProblem,
    SDESensitivity,
    SDEType,
    SSpan,
    _check_adjoint_modules,
)

__all__ = ["LatentNeuralSDE", "LatentSDEFunc"]


class LatentSDEFunc(SDEFunc):
    """A posterior drift ``f``, a prior drift ``h`` and their shared diffusion ``g`` (torchdyn's ``LSDEFunc``).

    ``f`` and ``g`` make the posterior SDE torchsde integrates; ``h(t, x)`` is the prior's drift (torchsde's name).
    Each may be an ``nn.Module`` (or callable) taking ``x`` or ``(t, x)``.
    """

    def __init__(
        self,
        f: nn.Module | Callable[..., Tensor],
        g: nn.Module | Callable[..., Tensor],
        h: nn.Module | Callable[..., Tensor],
        order: int = 1,
        *,
        noise_type: NoiseType = "diagonal",
        sde_type: SDEType = "ito",
    ) -> None:
        super().__init__(f, g, order, noise_type=noise_type, sde_type=sde_type)
        self.prior = VectorField(h)
        self.control_layers = [*self.control_layers, *self.prior.control_layers]

    @property
    def h_func(self) -> nn.Module | Callable[..., Tensor]:
        """The user's prior drift."""
        return self.prior.vf

    @property
    def vector_fields(self) -> tuple[VectorField, ...]:
        return self.drift, self.diffusion, self.prior

    def h(self, t: Time, x: Tensor) -> Tensor:
        """The prior drift ``h(t, x)``: ``x [B, D] -> [B, D]``."""
        return self.prior(t, x)


class _LatentPart(nn.Module):
    """One of a :class:`LatentSDEFunc`'s SDEs, as torchsde's SDE: its noise and SDE types, diffusion and counted
    fields are the latent function's."""

    def __init__(self, func: LatentSDEFunc) -> None:
        super().__init__()
        self.func = func
        self.noise_type, self.sde_type = func.noise_type, func.sde_type

    @property
    def g_func(self) -> nn.Module | Callable[..., Tensor]:
        return self.func.g_func

    @property
    def vector_fields(self) -> tuple[VectorField, ...]:
        return self.func.vector_fields


class _PathKL(_LatentPart):
    """The posterior SDE with one more state column, ``int 1/2 |u|^2 dt``, the path's KL integrand.

    The column has zero diffusion (for diagonal noise its own Brownian channel, multiplied by zero, as torchsde's
    ``logqp`` builds it). ``u`` solves ``g u = f - h``: ``(f - h) / g`` for diagonal noise, the least-squares
    solution ``pinv(g) (f - h)`` otherwise (exact when ``f - h`` lies in the span of ``g``'s columns; otherwise
    the posterior is not absolutely continuous with respect to the prior and the true KL is infinite).
    """

    @property
    def f_func(self) -> nn.Module | Callable[..., Tensor]:
        return self.func.f_func

    @property
    def control_layers(self) -> list:
        return self.func.control_layers

    def f(self, t: Time, y: Tensor) -> Tensor:
        z = y[:, :-1]
        f, g, h = self.func.f(t, z), self.func.g(t, z), self.func.h(t, z)
        u = _girsanov(f - h, g, self.noise_type)
        return torch.cat([f, 0.5 * u.pow(2).sum(dim=1, keepdim=True)], dim=1)

    def g(self, t: Time, y: Tensor) -> Tensor:
        g = self.func.g(t, y[:, :-1])
        if self.noise_type == "diagonal":
            return torch.cat([g, g.new_zeros(g.shape[0], 1)], dim=1)
        return torch.cat([g, g.new_zeros(g.shape[0], 1, g.shape[2])], dim=1)


class _Prior(_LatentPart):
    """The prior SDE ``dz = h dt + g dW`` of a :class:`LatentSDEFunc`, as torchsde's SDE."""

    @property
    def f_func(self) -> nn.Module | Callable[..., Tensor]:
        return self.func.h_func

    def f(self, t: Time, z: Tensor) -> Tensor:
        return self.func.h(t, z)

    def g(self, t: Time, z: Tensor) -> Tensor:
        return self.func.g(t, z)


def _girsanov(difference: Tensor, g: Tensor, noise_type: str) -> Tensor:
    """``u`` with ``g u = difference``: ``[B, D]`` for diagonal noise, ``[B, m]`` otherwise.

    Where a diagonal ``g`` is zero, ``u`` is 0 if the drifts agree there and infinite if they do not (the KL of
    two SDEs that differ in a noiseless direction is infinite), without a NaN in the gradients.
    """
    if noise_type == "diagonal":
        zero = g == 0
        u = difference / torch.where(zero, torch.ones_like(g), g)
        infinite = torch.where(difference == 0, torch.zeros_like(g), torch.full_like(g, math.inf))
        return torch.where(zero, infinite, u)
    return (torch.linalg.pinv(g) @ difference.unsqueeze(-1)).squeeze(-1)


class LatentNeuralSDE(NeuralSDE):
    """A latent SDE: posterior paths from ``q(z0)`` with their KL divergence from the prior (torchdyn's API).

    ``q(z0) = N(qy0_mean, exp(qy0_logvar))`` is learned; ``p(z0) = N(mu, sigma^2 / (2 theta))`` is fixed: the
    stationary law of the Ornstein–Uhlenbeck prior ``dz = theta (mu - z) dt + sigma dW`` of torchsde's example,
    and ``q(z0)`` starts equal to it. ``sigma``, ``theta`` and ``mu`` set only these two laws: the prior's drift
    and the shared diffusion are the modules given.

    ``model(eps)`` with ``eps [B, D] ~ N(0, 1)`` returns ``(zs [T, B, D], log_ratio)``: posterior paths at the times of
    ``s_span`` from ``z0 = qy0_mean + eps * qy0_std``, and ``log_ratio``, the batch mean of
    ``KL(q(z0) || p(z0)) + int 1/2 |u|^2 dt`` along each path (a one-sample estimate of the path KL;
    exact when ``u`` does not depend on ``z``). Train on ``-log p(x | zs) + log_ratio`` (the negative ELBO).

    Args:
        post_drift: the posterior drift ``f``: ``[B, D] -> [B, D]``, taking ``z`` or ``(t, z)`` (the posterior is
            usually time-dependent).
        diffusion: the shared diffusion ``g``, shaped by ``noise_type`` (``[B, D]`` diagonal). The KL needs it
            nonzero where the drifts differ.
        prior_drift: the prior drift ``h``: ``[B, D] -> [B, D]``.
        sigma, theta, mu: the Ornstein–Uhlenbeck constants of ``p(z0)`` (``sigma, theta > 0``): numbers, or
            ``[D]`` tensors for a ``D``-dimensional latent (numbers mean ``D = 1``).
        options: torchsde's method options (torchdyn passes e.g. ``{'trapezoidal_approx': False}``), or None.
        noise_type, order, sensitivity, s_span, solver, atol, rtol, intloss: as in :class:`NeuralSDE`;
            ``s_span`` (or ``t_span``) is ``forward``'s default times.
        sde_type, ds, t_span, adaptive: keyword-only, as in :class:`NeuralSDE` (torchdyn fixes ``'ito'``).

    Attributes:
        defunc: the :class:`LatentSDEFunc` (``f_func``, ``g_func``, ``h_func`` are the user's modules).
        qy0_mean, qy0_logvar: ``[1, D]`` parameters of ``q(z0)``; ``py0_mean``, ``py0_logvar``: ``[1, D]`` buffers
            of ``p(z0)``.

    Raises:
        ValueError: ``sigma`` or ``theta`` not positive, constants of mismatched shapes, or a bad option (as in
            :class:`NeuralSDE`).
        TypeError: ``sensitivity='adjoint'`` with a function that is not an ``nn.Module``.
    """

    def __init__(
        self,
        post_drift: nn.Module | Callable[..., Tensor],
        diffusion: nn.Module | Callable[..., Tensor],
        prior_drift: nn.Module | Callable[..., Tensor],
        sigma: float | Tensor,
        theta: float | Tensor,
        mu: float | Tensor,
        options: Mapping[str, Any] | None = None,
        noise_type: NoiseType = "diagonal",
        order: int = 1,
        sensitivity: SDESensitivity = "autograd",
        s_span: SSpan | None = None,
        solver: str = "srk",
        atol: float = 1e-4,
        rtol: float = 1e-4,
        intloss: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        sde_type: SDEType = "ito",
        ds: float = 1e-3,
        t_span: SSpan | None = None,
        adaptive: bool = False,
    ) -> None:
        _check_adjoint_modules(sensitivity, {"prior_drift": prior_drift})
        super().__init__(post_drift, diffusion, noise_type, sde_type, order, sensitivity, s_span, solver, atol, rtol,
                         ds, intloss, t_span=t_span, adaptive=adaptive, options=options)
        self.defunc = LatentSDEFunc(post_drift, diffusion, prior_drift, order, noise_type=noise_type,
                                    sde_type=sde_type)
        mean, logvar = _stationary_law(sigma, theta, mu)
        self.register_buffer("py0_mean", mean)
        self.register_buffer("py0_logvar", logvar)
        self.qy0_mean = nn.Parameter(mean.clone())
        self.qy0_logvar = nn.Parameter(logvar.clone())
        self.__dict__["_kl_problem"] = None  # the augmented solve, built on first use (not a submodule)

    @property
    def latent_dim(self) -> int:
        """``D``, the latent's width."""
        return self.qy0_mean.shape[1]

    @property
    def py0_std(self) -> Tensor:
        return torch.exp(0.5 * self.py0_logvar)

    @property
    def qy0_std(self) -> Tensor:
        return torch.exp(0.5 * self.qy0_logvar)

    def forward(  # type: ignore[override]
        self, eps: Tensor, s_span: SSpan | None = None, *, bm: torchsde.BaseBrownian | None = None
    ) -> tuple[Tensor, Tensor]:
        """Posterior paths from ``z0 = qy0_mean + eps * qy0_std`` and their KL divergence from the prior.

        Args:
            eps: standard normal noise ``[B, D]`` (moved to the parameters' device and dtype, as in torchdyn).
            s_span: ``[T]`` strictly increasing times; None uses ``self.s_span``.
            bm: a Brownian motion for the augmented state: ``[B, D + 1]`` for diagonal noise (the last channel
                drives the zero-diffusion KL column), ``[B, m]`` otherwise; None draws a fresh one.

        Returns:
            ``zs [T, B, D]`` (``zs[0]`` is ``z0``) and ``log_ratio``, a scalar: the batch mean of
            ``KL(q(z0) || p(z0))`` summed over the latent's dimensions plus the path's ``int 1/2 |u|^2 dt``;
            ``inf`` when the diffusion is zero where the two drifts differ (its gradients are then meaningless).

        Raises:
            ValueError: ``eps`` not ``[B, D]``; bad times, ``bm`` or module outputs, as in :class:`NeuralSDE`.
        """
        z0 = self._initial(eps, self.qy0_mean, self.qy0_std)
        kl0 = kl_divergence(Normal(self.qy0_mean, self.qy0_std), Normal(self.py0_mean, self.py0_std)).sum(1).mean(0)
        augmented = torch.cat([z0, z0.new_zeros(z0.shape[0], 1)], dim=1)
        _, ys = self._augmented_problem()._solve(augmented, self.s_span if s_span is None else s_span, bm)
        zs, path = ys[..., :-1], ys[-1, :, -1]
        # An infinite integrand (zero diffusion where the drifts differ) turns into NaN where torchsde interpolates
        # between steps (inf - inf). With the latent path finite, that NaN can come from nothing else.
        infinite = torch.isnan(path) & torch.isfinite(zs).transpose(0, 1).flatten(1).all(dim=1)
        path = torch.where(infinite, torch.full_like(path, math.inf), path)
        return zs, kl0 + path.mean(0)

    def sample_p(self, vis_span: SSpan, n_sim: int, eps: Tensor | None = None,
                 bm: torchsde.BaseBrownian | None = None, dt: float = 0.01) -> Tensor:
        """``n_sim`` prior paths ``[T, n_sim, D]`` at the times of ``vis_span``, from ``z0 ~ p(z0)``.

        ``eps`` ``[n_sim, D]`` fixes ``z0 = py0_mean + eps * py0_std`` (None draws it); ``bm`` ``[n_sim, m]`` the
        path; ``dt`` is the step (torchdyn's default 0.01). Solved with ``self.solver``, by autograd.
        """
        return self._sample(_Prior(self.defunc), self.py0_mean, self.py0_std, vis_span, n_sim, eps, bm, dt)

    def sample_q(self, vis_span: SSpan, n_sim: int, eps: Tensor | None = None,
                 bm: torchsde.BaseBrownian | None = None, dt: float = 0.01) -> Tensor:
        """``n_sim`` posterior paths ``[T, n_sim, D]`` from ``z0 ~ q(z0)``; the arguments as in :meth:`sample_p`."""
        return self._sample(self.defunc, self.qy0_mean, self.qy0_std, vis_span, n_sim, eps, bm, dt)

    def _sample(self, sde: nn.Module, mean: Tensor, std: Tensor, vis_span: SSpan, n_sim: int, eps: Tensor | None,
                bm: torchsde.BaseBrownian | None, dt: float) -> Tensor:
        if eps is None:
            eps = torch.randn(n_sim, self.latent_dim, dtype=mean.dtype, device=mean.device)
        z0 = self._initial(eps, mean, std)
        if z0.shape[0] != n_sim:
            raise ValueError(f"eps must have n_sim={n_sim} rows, got shape {tuple(eps.shape)}")
        problem = SDEProblem(sde, self.order, "autograd", None, self.solver, self.atol, self.rtol, ds=dt,
                             adaptive=self.adaptive, options=self.options)
        return problem._solve(z0, vis_span, bm)[1]

    def _initial(self, eps: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """``z0 = mean + eps * std`` ``[B, D]``, after checking ``eps``."""
        if not isinstance(eps, Tensor) or not eps.is_floating_point():
            raise TypeError(f"eps must be a floating-point tensor [batch, {self.latent_dim}], got "
                            f"{type(eps).__name__ if not isinstance(eps, Tensor) else eps.dtype}")
        if eps.ndim != 2 or eps.shape[1] != self.latent_dim or eps.shape[0] == 0:
            raise ValueError(
                f"eps must be standard normal noise [batch, D] with D = {self.latent_dim}, the latent's width "
                f"(from sigma, theta, mu; give them as [D] tensors for a wider latent), got shape {tuple(eps.shape)}"
            )
        eps = eps.to(std)
        return mean + eps * std

    def _augmented_problem(self) -> SDEProblem:
        """The posterior SDE with its KL column, solved with this model's current options."""
        problem = self.__dict__.get("_kl_problem")
        if problem is None or problem.defunc.func is not self.defunc:
            problem = SDEProblem(_PathKL(self.defunc), self.order, self.sensitivity, None, self.solver, self.atol,
                                 self.rtol, ds=self.ds, adaptive=self.adaptive, options=self.options)
            self.__dict__["_kl_problem"] = problem
        problem.defunc.noise_type, problem.defunc.sde_type = self.defunc.noise_type, self.defunc.sde_type
        for name in ("sensitivity", "solver", "atol", "rtol", "ds", "adaptive", "options"):
            setattr(problem, name, getattr(self, name))
        return problem


def _stationary_law(sigma: float | Tensor, theta: float | Tensor, mu: float | Tensor) -> tuple[Tensor, Tensor]:
    """``(mean [1, D], log-variance [1, D])`` of ``N(mu, sigma^2 / (2 theta))``."""
    values = []
    for name, value in (("sigma", sigma), ("theta", theta), ("mu", mu)):
        tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).detach().clone()
        if tensor.ndim > 1 or not torch.isfinite(tensor).all():
            raise ValueError(f"{name} must be a finite number or [D] tensor, got {value!r}")
        if name != "mu" and not (tensor > 0).all():
            raise ValueError(f"{name} must be > 0 (the Ornstein–Uhlenbeck prior's p(z0) = N(mu, sigma^2 / "
                             f"(2 theta))), got {value!r}")
        values.append(tensor.reshape(-1))
    try:
        sigma_, theta_, mu_ = torch.broadcast_tensors(*values)
    except RuntimeError as err:
        shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in zip(("sigma", "theta", "mu"), values))
        raise ValueError(f"sigma, theta and mu must be numbers or [D] tensors of one D, got {shapes}") from err
    return mu_.reshape(1, -1).clone(), torch.log(sigma_**2 / (2 * theta_)).reshape(1, -1)
