"""PyTorch Lightning for nodecore models: the torchdyn tutorial's ``Learner``, run by ``pl.Trainer``.

An optional extra (``pip install 'nodecore[lightning]'``); ``import nodecore`` never imports this module::

    import lightning.pytorch as pl
    from nodecore.lightning import Learner, dataloader

    learner = Learner(NeuralODE(f, sensitivity="adjoint"), torch.linspace(0, 1, 5))
    pl.Trainer(max_epochs=200).fit(learner, dataloader(X, y))
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from lightning.pytorch import LightningModule
except ImportError as err:  # the optional extra is not installed
    raise ImportError(
        "nodecore.lightning needs PyTorch Lightning, an optional extra: pip install 'nodecore[lightning]'"
    ) from err

from nodecore._checks import integer, positive
from nodecore.errors import NonFiniteError
from nodecore.neuralode import TSpan
from nodecore.training import _nfe, logits

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

__all__ = ["Learner", "OptimizerFactory", "dataloader"]


class Learner(LightningModule):
    """A classifier trained with cross-entropy on the final state, as in the torchdyn moons tutorial.

    ``t_span`` is a buffer, so it follows the module to the Trainer's device and dtype and is saved in
    checkpoints. Logged metrics: ``train_loss``, ``train_acc`` (epoch means), ``nfe_forward`` and
    ``nfe_backward`` (last batch, when the model has ``stats``), ``val_loss``/``val_acc`` and
    ``test_loss``/``test_acc``.

    Args:
        model: ``model(x, t_span) -> (t_eval, scores [T, B, C])`` (a :class:`~nodecore.NeuralODE` or
            :class:`~nodecore.ODEClassifier`), or a model returning ``[B, C]`` from ``x`` alone
            (a :class:`~nodecore.DEQClassifier`); see :func:`nodecore.logits`.
        t_span: depths ``[T]`` to integrate over.
        lr: Adam learning rate, used when ``optimizer`` is None.
        optimizer: builds the optimizer from the parameters, e.g.
            ``functools.partial(torch.optim.SGD, lr=0.1)``; overrides ``lr``.

    Raises:
        ValueError: ``t_span`` is not 1-D with at least 2 points, or ``lr`` is not > 0.
    """

    def __init__(
        self,
        model: nn.Module,
        t_span: TSpan,
        *,
        lr: float = 0.01,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        t_span = torch.as_tensor(t_span)
        if t_span.ndim != 1 or t_span.numel() < 2:
            raise ValueError(f"t_span must be 1-D with at least 2 depths, got shape {tuple(t_span.shape)}")
        if not t_span.is_floating_point():
            t_span = t_span.to(torch.get_default_dtype())
        self.lr = positive("lr", lr)
        self.model = model
        self.register_buffer("t_span", t_span.clone())
        self.optimizer_factory = optimizer

    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``[B, C]`` for ``x [B, D]``: the final state, via :func:`nodecore.logits`."""
        return logits(self.model, x, self.t_span)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of the final state on a batch ``(x [B, D], y [B])``; logs loss, accuracy, forward NFE.

        Raises:
            NonFiniteError: the loss became NaN or Inf.
        """
        x, y = batch
        scores = self(x)
        loss = nn.functional.cross_entropy(scores, y)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the loss became {loss.item()} at epoch {self.current_epoch}: lower the learning rate or use a "
                "more accurate solver (tighter tolerances, smaller step_size)"
            )
        size = len(y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train_acc", _accuracy(scores, y), on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        if self._has_stats():
            self.log("nfe_forward", float(_nfe(self.model)[0]), on_step=True, on_epoch=False, batch_size=size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log ``nfe_backward`` of the backward pass just run (counted only once backward has happened)."""
        if self._has_stats():
            self.log("nfe_backward", float(_nfe(self.model)[1]), on_step=True, on_epoch=False,
                     batch_size=len(batch[1]))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``val_loss`` and ``val_acc`` of a batch ``(x [B, D], y [B])`` (averaged over the epoch)."""
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``test_loss`` and ``test_acc`` of a batch ``(x [B, D], y [B])`` (averaged over the run)."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """``optimizer(parameters)`` when a factory was given, else ``Adam(parameters, lr)``."""
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.parameters())
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def _evaluate(self, batch: tuple[Tensor, Tensor], prefix: str) -> None:
        x, y = batch
        scores = self(x)
        size = len(y)
        self.log(f"{prefix}_loss", nn.functional.cross_entropy(scores, y), prog_bar=True, batch_size=size)
        self.log(f"{prefix}_acc", _accuracy(scores, y), prog_bar=True, batch_size=size)

    def _has_stats(self) -> bool:
        return getattr(self.model, "stats", None) is not None


def _accuracy(scores: Tensor, y: Tensor) -> Tensor:
    return (scores.argmax(dim=-1) == y).float().mean()


def dataloader(X: Tensor, y: Tensor, *, batch_size: int | None = None, shuffle: bool = True) -> DataLoader:
    """A loader over ``(X [N, D], y [N])``; full batch by default, as in the torchdyn tutorial.

    Args:
        X: inputs ``[N, D]``; y: integer labels ``[N]``.
        batch_size: mini-batch size; the whole dataset (one batch per epoch) when None.
        shuffle: reshuffle every epoch (seed with ``lightning.seed_everything`` for repeatable runs).

    Returns:
        A ``DataLoader`` yielding ``(x [B, D], y [B])``.

    Raises:
        ValueError: mismatched or empty ``X`` and ``y``, or ``batch_size < 1``.
    """
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y) or len(X) == 0:
        raise ValueError(f"expected non-empty X [N, D] and y [N], got X {tuple(X.shape)} and y {tuple(y.shape)}")
    if batch_size is not None:
        batch_size = integer("batch_size (or None for full batch)", batch_size, minimum=1)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size or len(X), shuffle=shuffle)
