"""Random voxel sampling shared by the pretext losses and the representation-health monitor."""

from __future__ import annotations

import torch

__all__ = ["sample_voxel_indices", "gather_voxels"]


def sample_voxel_indices(mask: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` flat voxel indices per sample, drawn uniformly (with replacement) among voxels where ``mask`` > 0.5.

    ``mask`` ``(B, 1, *S)``; a sample without a valid voxel draws from all voxels. Returns ``(B, num)`` int64.
    """
    weights = (mask.flatten(1) > 0.5).float()
    empty = weights.sum(1) == 0
    weights[empty] = 1.0
    return torch.multinomial(weights, num, replacement=True)


def gather_voxels(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Feature vectors ``(B, K, C)`` of ``features`` ``(B, C, *S)`` at flat voxel ``indices`` ``(B, K)``."""
    flat = features.flatten(2)
    return flat.gather(2, indices[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)
