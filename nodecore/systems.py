"""ODE systems to fit to observed trajectories: learnable physics, physics plus a neural correction, a fit loop.

* :class:`LotkaVolterra`: predator–prey dynamics whose four rates are learnable and stay positive.
* :class:`DampedPendulum`: the acceleration of a (damped) pendulum, a field for ``NeuralODE(order=2)``.
* :class:`HybridField`: ``known(t, x) + unknown(t, x)``, known physics plus a learned correction.
* :func:`fit_trajectories`: fit a :class:`~nodecore.neuralode.NeuralODE` to trajectories ``x_obs [T, B, D]``
  by integrating from ``x_obs[0]`` over ``t_obs``.

Example::

    model = NeuralODE(LotkaVolterra(1.0, 0.5, 0.5, 0.2).double(), solver="rk4", step_size=0.1)
    history = fit_trajectories(model, t_obs, x_obs, epochs=300, lr=0.05)  # Adam
    # or, for a few parameters, full-batch LBFGS converges in far fewer solves:
    lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=20, line_search_fn="strong_wolfe")
    history = fit_trajectories(model, t_obs, x_obs, epochs=2, optimizer=lbfgs)
    model.vf.vf.rates_dict()  # fitted {"alpha": ..., "beta": ..., "gamma": ..., "delta": ...}
"""

from __future__ import annotations

from typing import Callable, Literal, Union

import torch
from torch import Tensor, nn

from nodecore._checks import choice, integer, number, positive
from nodecore.fields import Time, _takes_time
from nodecore.neuralode import NeuralODE

Loss = Literal["mse", "l1"]
LOSSES: tuple[str, ...] = ("mse", "l1")
_FieldLike = Union[nn.Module, Callable[..., Tensor]]


def _call(field: _FieldLike, takes_time: bool, t: Time, x: Tensor) -> Tensor:
    if not takes_time:
        return field(x)
    return field(torch.as_tensor(t, dtype=x.dtype, device=x.device), x)


class LotkaVolterra(nn.Module):
    """Lotka–Volterra predator–prey field with learnable positive rates.

    ``dx/dt = alpha x - beta x y`` (prey ``x``), ``dy/dt = delta x y - gamma y`` (predator ``y``).
    The rates are stored as their logarithms (``log_rates [4]``), so every gradient step keeps them positive
    and Adam's steps are relative changes, whatever a rate's magnitude.

    Args:
        alpha, beta, gamma, delta: initial rates, each a finite number > 0.
        learnable: make the rates parameters (default); otherwise they are fixed buffers.

    Attributes:
        log_rates: ``[4]`` logarithms of ``(alpha, beta, gamma, delta)``.
        NAMES: the rates' names, in that order.

    Raises:
        ValueError: a rate is not a finite number > 0.
    """

    NAMES: tuple[str, ...] = ("alpha", "beta", "gamma", "delta")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        delta: float = 1.0,
        *,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        rates = [positive(name, v) for name, v in zip(self.NAMES, (alpha, beta, gamma, delta))]
        log_rates = torch.tensor(rates, dtype=torch.float64).log().to(torch.get_default_dtype())
        if learnable:
            self.log_rates = nn.Parameter(log_rates)
        else:
            self.register_buffer("log_rates", log_rates)

    @property
    def rates(self) -> Tensor:
        """``[4]`` the current ``(alpha, beta, gamma, delta)``."""
        return self.log_rates.exp()

    def rates_dict(self) -> dict[str, float]:
        """The current rates as plain floats: ``{"alpha": ..., "beta": ..., "gamma": ..., "delta": ...}``."""
        return dict(zip(self.NAMES, self.rates.tolist()))

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., 2] = [prey, predator] -> dx/dt [..., 2]``."""
        if x.shape[-1] != 2:
            raise ValueError(f"LotkaVolterra needs a state [..., 2] = [prey, predator], got shape {tuple(x.shape)}")
        alpha, beta, gamma, delta = self.rates
        prey, predator = x[..., 0], x[..., 1]
        interaction = prey * predator
        return torch.stack([alpha * prey - beta * interaction, delta * interaction - gamma * predator], dim=-1)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in self.rates_dict().items())


class DampedPendulum(nn.Module):
    """Acceleration of a damped pendulum, a field for ``NeuralODE(order=2)``.

    ``theta'' = -(g/L) sin(theta) - c * theta'``, for ``n`` independent pendulums at once. With
    ``damping=0`` it is the frictionless pendulum: the known physics for a :class:`HybridField` that
    learns the friction.

    Args:
        g_over_l: gravity over length ``g/L`` (> 0), in 1/s².
        damping: linear damping coefficient ``c`` (>= 0), in 1/s.
        learnable: make ``g_over_l`` and ``damping`` parameters (unconstrained); fixed buffers by default.

    Raises:
        ValueError: ``g_over_l <= 0`` or ``damping < 0``.
    """

    def __init__(self, g_over_l: float = 1.0, damping: float = 0.0, *, learnable: bool = False) -> None:
        super().__init__()
        values = {
            "g_over_l": torch.tensor(positive("g_over_l", g_over_l)),
            "damping": torch.tensor(number("damping", damping, minimum=0)),
        }
        for name, value in values.items():
            if learnable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def forward(self, z: Tensor) -> Tensor:
        """``z [..., 2n] = [theta, omega] -> theta'' [..., n]``."""
        if z.shape[-1] % 2:
            raise ValueError(f"DampedPendulum needs a state [theta, omega] [..., 2n], got shape {tuple(z.shape)}")
        theta, omega = z.chunk(2, dim=-1)
        return -self.g_over_l * torch.sin(theta) - self.damping * omega

    def extra_repr(self) -> str:
        return f"g_over_l={float(self.g_over_l):.4g}, damping={float(self.damping):.4g}"


class HybridField(nn.Module):
    """Known physics plus a learned correction: ``f(t, x) = known(t, x) + unknown(t, x)``.

    Each part may take ``x`` or ``(t, x)``. Use it as a NeuralODE's field: with ``order=2`` both parts
    return accelerations. Parameters of ``known`` (if any) train too; freeze them with
    ``known.requires_grad_(False)``. Starting ``unknown`` at zero (e.g. a zero-initialised last layer)
    starts the fit from the pure physics model.

    Args:
        known: the physics, an ``nn.Module`` or a plain callable.
        unknown: the correction, an ``nn.Module`` (usually a small MLP).

    Raises:
        TypeError: ``known`` is not callable or ``unknown`` is not an ``nn.Module``.
    """

    def __init__(self, known: _FieldLike, unknown: nn.Module) -> None:
        super().__init__()
        if not callable(known):
            raise TypeError(f"known must be an nn.Module or callable, got {type(known).__name__}")
        if not isinstance(unknown, nn.Module):
            raise TypeError(
                f"unknown must be an nn.Module holding the learned parameters, got {type(unknown).__name__}"
            )
        self.known = known
        self.unknown = unknown
        self._known_takes_time = _takes_time(known)
        self._unknown_takes_time = _takes_time(unknown)

    def physics(self, t: Time, x: Tensor) -> Tensor:
        """The known term alone, ``known(t, x)``."""
        return _call(self.known, self._known_takes_time, t, x)

    def correction(self, t: Time, x: Tensor) -> Tensor:
        """The learned term alone, ``unknown(t, x)``."""
        return _call(self.unknown, self._unknown_takes_time, t, x)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """``known(t, x) + unknown(t, x)``, shaped like the known term."""
        return self.physics(t, x) + self.correction(t, x)


def _loss_function(loss: Loss) -> Callable[[Tensor, Tensor], Tensor]:
    if choice("loss", loss, LOSSES, plural="losses") == "mse":
        return nn.functional.mse_loss
    return nn.functional.l1_loss


def fit_trajectories(
    model: NeuralODE,
    t_obs: Tensor,
    x_obs: Tensor,
    *,
    epochs: int,
    lr: float = 1e-2,
    loss: Loss = "mse",
    optimizer: torch.optim.Optimizer | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fit ``model`` to observed trajectories: integrate from ``x_obs[0]`` over ``t_obs``, match ``x_obs``.

    Each epoch is one full-batch optimiser step on ``loss(model.trajectory(x_obs[0], t_obs), x_obs)``.

    Args:
        model: the NeuralODE whose field's parameters are fitted (in place).
        t_obs: ``[T]`` observation times, strictly monotonic, ``T >= 2``.
        x_obs: ``[T, B, D]`` observed states (``[T, *S]`` for any state shape the model takes);
            ``x_obs[0]`` is the initial state of each trajectory.
        epochs: number of optimiser steps (>= 1).
        lr: learning rate of the default Adam optimiser (unused when ``optimizer`` is given).
        loss: ``'mse'`` (mean squared error) or ``'l1'`` (mean absolute error).
        optimizer: any ``torch.optim`` optimiser over the model's parameters, LBFGS included (it is
            stepped with a closure); Adam with ``lr`` when None.
        callback: called as ``callback(epoch, loss)`` after each epoch.

    Returns:
        The loss history, one float per epoch: the loss evaluated at that epoch's step (before the update).

    Raises:
        ValueError: bad shapes, ``epochs``, ``lr`` or ``loss``, or a model with no trainable parameters;
            solver errors from the model propagate.
    """
    loss_fn = _loss_function(loss)
    epochs = integer("epochs", epochs, minimum=1)
    if not isinstance(t_obs, Tensor) or not isinstance(x_obs, Tensor):
        raise TypeError("t_obs and x_obs must be torch.Tensors")
    if t_obs.ndim != 1 or t_obs.numel() < 2:
        raise ValueError(f"t_obs must be 1-D with at least 2 times, got shape {tuple(t_obs.shape)}")
    if x_obs.ndim < 2 or x_obs.shape[0] != t_obs.shape[0]:
        raise ValueError(
            f"x_obs must be [T, B, D] with T = len(t_obs) = {t_obs.shape[0]}, got shape {tuple(x_obs.shape)}"
        )
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters to fit")
        optimizer = torch.optim.Adam(params, lr=positive("lr", lr))

    x0 = x_obs[0]

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss_fn(model.trajectory(x0, t_obs), x_obs)
        value.backward()
        return value.detach()

    history: list[float] = []
    for epoch in range(epochs):
        value = float(optimizer.step(closure))
        history.append(value)
        if callback is not None:
            callback(epoch, value)
    return history
