"""Training and evaluation of Neural ODE classifiers: a plain loop you can read top to bottom."""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from nodecore.errors import NonFiniteError


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss and accuracy, solver NFE of its last batch, wall time."""

    epoch: int
    loss: float
    accuracy: float
    nfe_forward: int
    nfe_backward: int
    seconds: float


@dataclass
class History:
    """Per-epoch statistics of a training run."""

    epochs: list[EpochStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        """Column-wise: ``{"epoch": [...], "loss": [...], ...}`` (JSON-friendly)."""
        names = EpochStats.__dataclass_fields__
        return {name: [getattr(e, name) for e in self.epochs] for name in names}

    @classmethod
    def from_dict(cls, columns: dict[str, list]) -> "History":
        """Inverse of :meth:`to_dict`."""
        names = list(EpochStats.__dataclass_fields__)
        rows = zip(*(columns[name] for name in names)) if columns else ()
        return cls([EpochStats(*row) for row in rows])


@dataclass(frozen=True)
class Metrics:
    """Evaluation of a classifier on one dataset."""

    loss: float
    accuracy: float
    nfe_forward: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def depth_grid(t_end: float, points: int, *, device: str | torch.device = "cpu") -> Tensor:
    """``points`` evenly spaced depths over ``[0, t_end]``: a ``t_span`` ``[points]``."""
    return torch.linspace(0.0, t_end, points, device=device)


def logits(model: nn.Module, x: Tensor, t_span: Tensor) -> Tensor:
    """Class scores ``[B, C]``.

    For a continuous-depth model, ``model(x, t_span) -> (t_eval, trajectory)``, the final state (the torchdyn
    tutorial's readout); a model whose forward takes ``x`` alone (e.g. a :class:`~nodecore.deq.DEQClassifier`)
    returns the scores itself and ``t_span`` is not used.
    """
    if not _takes_depth(model):
        return model(x)
    output = model(x, t_span)
    trajectory = output[1] if isinstance(output, tuple) else output
    return trajectory[-1]


def _takes_depth(model: nn.Module) -> bool:
    params = inspect.signature(model.forward).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _nfe(model: nn.Module) -> tuple[int, int]:
    stats = getattr(model, "stats", None)
    # An equilibrium model's iterations are its function evaluations.
    forward = getattr(stats, "nfe_forward", getattr(stats, "forward_iterations", 0))
    backward = getattr(stats, "nfe_backward", getattr(stats, "backward_iterations", 0))
    return forward, backward


def train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    t_span: Tensor,
    epochs: int = 200,
    lr: float = 0.01,
    batch_size: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 0,
    seed: int = 0,
    callback: Callable[[EpochStats], None] | None = None,
) -> History:
    """Train a classifier with cross-entropy on the final state, as in the torchdyn moons tutorial.

    Args:
        model: ``model(x, t_span)`` returns ``(t_eval, trajectory)``; ``trajectory[-1]`` are the logits.
        X: inputs ``[N, D]``; y: integer labels ``[N]``; both on the model's device.
        t_span: depths ``[T]`` on the same device.
        epochs: total number of epochs; training runs epochs ``start_epoch .. epochs - 1``.
        lr: Adam learning rate, used when ``optimizer`` is None.
        batch_size: mini-batch size; full batch when None.
        optimizer: an optimizer to continue with (e.g. restored from a checkpoint).
        start_epoch: first epoch to run, for resuming.
        seed: seeds the mini-batch shuffling.
        callback: called with each epoch's :class:`EpochStats` (progress reports, checkpoints).

    Returns:
        The :class:`History` of the epochs run.

    Raises:
        ValueError: bad sizes or shapes; NonFiniteError: the loss became NaN or Inf.
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(start_epoch, int) and 0 <= start_epoch <= epochs):
        raise ValueError(f"start_epoch must be an integer in [0, epochs={epochs}], got {start_epoch!r}")
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"expected X [N, D] and y [N], got X {tuple(X.shape)} and y {tuple(y.shape)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (full batch), got {batch_size}")
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator()
    history = History()
    model.train()
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        generator.manual_seed(seed + epoch)  # per epoch, so a resumed run shuffles as an uninterrupted one
        order = torch.randperm(len(X), generator=generator).to(X.device) if batch_size else None
        batches = [slice(None)] if order is None else order.split(batch_size)
        total_loss, correct = 0.0, 0
        for batch in batches:
            xb, yb = X[batch], y[batch]
            scores = logits(model, xb, t_span)
            loss = loss_fn(scores, yb)
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"the loss became {loss.item()} at epoch {epoch}: lower the learning rate or use a more "
                    "accurate solver (tighter tolerances, smaller step_size)"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(yb)
            correct += int((scores.argmax(dim=-1) == yb).sum())
        nfe_forward, nfe_backward = _nfe(model)
        stats = EpochStats(epoch, total_loss / len(X), correct / len(X), nfe_forward, nfe_backward,
                           time.perf_counter() - started)
        history.epochs.append(stats)
        if callback is not None:
            callback(stats)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor, *, t_span: Tensor) -> Metrics:
    """Cross-entropy loss, accuracy and forward NFE of ``model`` on ``(X [N, D], y [N])``."""
    model.eval()
    started = time.perf_counter()
    scores = logits(model, X, t_span)
    loss = nn.functional.cross_entropy(scores, y).item()
    acc = (scores.argmax(dim=-1) == y).float().mean().item()
    return Metrics(loss, acc, _nfe(model)[0], time.perf_counter() - started)


def accuracy(model: nn.Module, X: Tensor, y: Tensor, *, t_span: Tensor) -> float:
    """Fraction of ``X [N, D]`` whose predicted class (argmax of the final state) equals ``y [N]``."""
    return evaluate(model, X, y, t_span=t_span).accuracy
