"""Fields for the stage-time tests: dx/dt = cos(t), seen by the field as ``t`` or only through ``DepthCat``."""

from __future__ import annotations

import torch
from torch import nn

from nodecore.fields import DepthCat


class TimeField(nn.Module):
    """dx/dt = cos(t), with ``t`` an argument."""

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(t).expand_as(x)


class ReadsDepth(nn.Module):
    """dx/dt = cos(t) through DepthCat: the time reaches the field only as a concatenated column."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = DepthCat(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.depth(x)[:, -1:]).expand_as(x)
