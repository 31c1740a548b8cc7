"""Small heads used only by pretext losses during pretraining (not part of the backbone users take downstream)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RelativePositionHead", "ReconstructionHead"]


class RelativePositionHead(nn.Module):
    """Three-layer MLP on a concatenated pair of embeddings regressing their normalised 3D offset.

    A plain ``nn.Sequential`` because MONAI's ``MLPBlock`` has two layers. ``forward(pairs (..., 2 * in_channels))
    -> (..., 3)`` (offset per axis, unbounded; the target lies in [-1, 1]).
    """

    def __init__(self, in_channels: int, hidden: int = 256, spatial_dims: int = 3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_channels, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, spatial_dims),
        )  # fmt: skip

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.mlp(pairs)


class ReconstructionHead(nn.Module):
    """Light restoration head: a ``1x1x1`` convolution from backbone features ``(B, C, *S)`` to ``(B, out, *S)``."""

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features)
