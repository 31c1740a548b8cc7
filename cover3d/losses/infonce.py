"""Dense voxel InfoNCE on COVER pairs: the binary contrastive baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cover3d.fields import downsample_field, warp
from cover3d.losses.cover import downsample_mask
from cover3d.losses.sampling import gather_voxels, sample_voxel_indices

__all__ = ["VoxelInfoNCELoss"]


class VoxelInfoNCELoss(nn.Module):
    """InfoNCE over ``num_samples`` random valid voxels p of view b per sample: the positive of ``f_b(p)`` is view
    a's feature at ``p + psi(p)`` (true field), the negatives are view a's features at the other sampled voxels'
    correspondences; cosine logits / ``temperature``, symmetric cross-entropy (b -> a and a -> b).

    Args:
        num_samples: voxels per sample (each is the others' negative).
        temperature: softmax temperature of the cosine logits.
        level: backbone level read (index into the coarse-to-fine features; ``-1`` = full resolution); the true
            field and mask are downsampled to it.

    ``forward(output, ddf (B,3,*S) voxels, mask (B,1,*S)) -> scalar``.
    """

    batch_keys = ("ddf", "mask")

    def __init__(self, num_samples: int = 512, temperature: float = 0.1, level: int = -1) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.temperature = temperature
        self.level = level

    def forward(self, output: dict, ddf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features_a, features_b = output["features_a"][self.level].float(), output["features_b"][self.level].float()
        factor = ddf.shape[-1] // features_b.shape[-1]
        ddf, mask = downsample_field(ddf.float(), factor), downsample_mask(mask, factor)
        indices = sample_voxel_indices(mask, self.num_samples)
        queries = F.normalize(gather_voxels(features_b, indices), dim=-1)  # (B, K, C)
        keys = F.normalize(gather_voxels(warp(features_a, ddf), indices), dim=-1)
        logits = queries @ keys.transpose(1, 2) / self.temperature  # (B, K, K), positives on the diagonal
        target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.transpose(1, 2), target))
