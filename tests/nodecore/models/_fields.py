"""Fields with closed forms for the SDE tests: a fixed linear drift and a state-independent diffusion."""

from __future__ import annotations

from torch import Tensor, nn


class Linear(nn.Module):
    """``x -> x A^T`` with a fixed matrix (a linear drift, for closed forms)."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.T


class Constant(nn.Module):
    """A state-independent diffusion: ``value`` broadcast over the batch (``[D]`` diagonal, ``[D, m]`` else)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.value.expand(x.shape[0], *self.value.shape)
