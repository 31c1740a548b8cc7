"""Random voxel sampling shared by the pretext losses and the representation-health monitor."""

from __future__ import annotations

import torch

__all__ = ["sample_voxel_indices", "gather_voxels"]


def sample_voxel_indices(mask: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` distinct flat voxel indices per sample, drawn uniformly among voxels where ``mask`` > 0.5 (distinct, so
    a contrastive loss never meets a voxel as its own negative); when fewer are valid, the rest come from the others.

    ``mask`` ``(B, 1, *S)`` with at least ``num`` voxels. Returns ``(B, num)`` int64.
    """
    if mask[0].numel() < num:
        raise ValueError(f"cannot draw {num} distinct voxels from {mask[0].numel()}")
    weights = torch.where(mask.flatten(1) > 0.5, 1.0, 1e-9)
    return torch.multinomial(weights, num, replacement=False)


def gather_voxels(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Feature vectors ``(B, K, C)`` of ``features`` ``(B, C, *S)`` at flat voxel ``indices`` ``(B, K)``."""
    flat = features.flatten(2)
    return flat.gather(2, indices[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)
