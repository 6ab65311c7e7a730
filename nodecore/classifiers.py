"""``ODEClassifier``: an optional augmenter, a Neural ODE and a readout, composed for classification."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nodecore._shapes import explained_shapes
from nodecore.errors import InputShapeError
from nodecore.fields import Augmenter
from nodecore.neuralode import NeuralODE, TSpan
from nodecore.stats import SolveStats


class ODEClassifier(nn.Module):
    """``x -> [augmenter] -> NeuralODE -> readout``, called like a :class:`~nodecore.neuralode.NeuralODE`.

    ``model(x, t_span)`` returns ``(t_eval [T], logits [T, B, C])``: the readout applied to every point of
    the state trajectory, so ``logits[-1]`` scores the final state and :func:`nodecore.train`,
    :func:`nodecore.evaluate` and :func:`nodecore.logits` work unchanged. ``model.stats`` are the inner
    solve's, so training reports NFE.

    Example, an augmented Neural ODE for 2-D inputs::

        ODEClassifier(NeuralODE(nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 5))),
                      nn.Linear(5, 2), augmenter=Augmenter(1, 3))

    Args:
        node: the Neural ODE, on the (augmented) state ``[B, D + k]``.
        readout: maps one state ``[B, D + k]`` to class scores ``[B, C]`` (e.g. ``nn.Linear(D + k, C)``).
        augmenter: applied to ``x`` before the solve; None solves from ``x`` itself.
    """

    def __init__(
        self, node: NeuralODE, readout: nn.Module, *, augmenter: Augmenter | nn.Module | None = None
    ) -> None:
        super().__init__()
        if not isinstance(node, NeuralODE):
            raise TypeError(f"node must be a NeuralODE, got {type(node).__name__}")
        self.augmenter = augmenter
        self.node = node
        self.readout = readout

    @property
    def stats(self) -> SolveStats:
        """NFE and step counts of the inner Neural ODE's last forward and backward pass."""
        return self.node.stats

    def states(self, x: Tensor, t_span: TSpan | None = None) -> tuple[Tensor, Tensor]:
        """The hidden trajectory before the readout: ``(t_eval [T], states [T, B, D + k])``.

        Raises:
            InputShapeError: the (augmented) state does not fit the vector field; the message names both shapes.
        """
        if self.augmenter is None:
            return self.node.solve(x, t_span)
        z = self.augmenter(x)
        try:
            return self.node.solve(z, t_span)
        except InputShapeError as err:
            raise InputShapeError(f"{err}; the state is the input x of shape {tuple(x.shape)} after the augmenter, "
                                  f"{self.augmenter}") from err.__cause__

    def forward(self, x: Tensor, t_span: TSpan | None = None) -> tuple[Tensor, Tensor]:
        """Classify ``x [B, D]``: ``(t_eval [T], logits [T, B, C])``; ``logits[-1]`` are the predictions.

        Raises:
            InputShapeError: the state does not fit the vector field, or the readout does not take the state.
        """
        t_eval, states = self.states(x, t_span)
        with explained_shapes("the readout", {"the ODE state": states[0]}, self.readout):
            return t_eval, torch.stack([self.readout(state) for state in states])
