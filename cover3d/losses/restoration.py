"""Restoration (Models Genesis style) baseline: reconstruct the uncorrupted view from its backbone features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cover3d.networks.blocks.heads import ReconstructionHead

__all__ = ["RestorationLoss"]


class RestorationLoss(nn.Module):
    """MSE between ``head(features_<view>[-1])`` and the batch's uncorrupted image ``target_key`` ``(B, C, *S)``.

    The view is corrupted by :func:`~cover3d.transforms.genesis_corruption` after the pair transform, which keeps
    the original under ``target_key``.

    Args:
        in_channels: full-resolution backbone channels (``channels[0]``).
        out_channels: image channels.
        view: ``"a"`` or ``"b"``, the view that was corrupted.
        target_key: batch key of the uncorrupted view.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, view: str = "b", target_key: str = "image_b_clean") -> None:
        super().__init__()
        if view not in ("a", "b"):
            raise ValueError(f"view must be 'a' or 'b', got {view!r}")
        self.view = view
        self.batch_keys = (target_key,)
        self.head = ReconstructionHead(in_channels, out_channels)

    def forward(self, output: dict, **batch: torch.Tensor) -> torch.Tensor:
        target = batch[self.batch_keys[0]]
        return F.mse_loss(self.head(output[f"features_{self.view}"][-1]).float(), target.float())
