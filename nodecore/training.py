"""Training and evaluation of Neural ODE classifiers: a plain loop you can read top to bottom."""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from nodecore._checks import integer, positive
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


def _class_labels(X: Tensor, y: Tensor) -> tuple[Tensor, int]:
    """``y [N]`` as int64 class indices and its largest label, checked against ``X [N, D]`` before any work.

    Raises:
        ValueError: mismatched or empty ``X`` / ``y``, a non-integer dtype, or a negative label.
    """
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"expected X [N, D] and y [N] with N >= 1, got X {tuple(X.shape)} and y {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"y must hold integer class labels 0 .. C-1, got dtype {y.dtype}; convert whole-number labels with "
            "y.long()"
        )
    y = y.long()
    low, high = (int(value) for value in torch.aminmax(y))
    if low < 0:
        _bad_labels(y, y < 0, "class labels must be >= 0")
    return y, high


def _check_label_range(y: Tensor, top_label: int, scores: Tensor) -> None:
    """Raise ``ValueError`` if a label in ``y`` is not one of the ``C`` classes the model scores (``scores [B, C]``)."""
    n_classes = scores.shape[-1]
    if top_label >= n_classes:
        _bad_labels(y, y >= n_classes, f"the model has {n_classes} outputs, so labels must be in 0 .. {n_classes - 1}")


def _bad_labels(y: Tensor, bad: Tensor, rule: str) -> None:
    """Raise the ``ValueError`` for the labels ``y[bad]``: how many, which values, where the first is."""
    values = torch.unique(y[bad]).tolist()
    shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
    first = int(bad.nonzero()[0, 0])
    raise ValueError(
        f"{rule}, but y holds {int(bad.sum())} label(s) outside that range: {shown} (first at index {first})"
    )


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
        ValueError: bad sizes, shapes or arguments; labels that are not integers, are negative, or are not
            below the model's number of outputs (checked on the first batch's scores, before any step).
        NonFiniteError: the loss became NaN or Inf.
    """
    epochs = integer("epochs", epochs, minimum=0)
    start_epoch = integer("start_epoch", start_epoch, minimum=0, maximum=epochs)
    if batch_size is not None:
        batch_size = integer("batch_size (or None for full batch)", batch_size, minimum=1)
    y, top_label = _class_labels(X, y)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=positive("lr", lr))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator()
    history = History()
    labels_checked = False
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
            if not labels_checked:  # the first scores tell the model's class count: check before any step
                _check_label_range(y, top_label, scores)
                labels_checked = True
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
    """Cross-entropy loss, accuracy and forward NFE of ``model`` on ``(X [N, D], y [N])``.

    Raises:
        ValueError: mismatched shapes, or labels that are not integers in ``0 .. C-1`` for a model scoring
            ``C`` classes (the message names the bad dtype or values).
    """
    y, top_label = _class_labels(X, y)
    model.eval()
    started = time.perf_counter()
    scores = logits(model, X, t_span)
    _check_label_range(y, top_label, scores)
    loss = nn.functional.cross_entropy(scores, y).item()
    acc = (scores.argmax(dim=-1) == y).float().mean().item()
    return Metrics(loss, acc, _nfe(model)[0], time.perf_counter() - started)


def accuracy(model: nn.Module, X: Tensor, y: Tensor, *, t_span: Tensor) -> float:
    """Fraction of ``X [N, D]`` whose predicted class (argmax of the final state) equals ``y [N]``."""
    return evaluate(model, X, y, t_span=t_span).accuracy
