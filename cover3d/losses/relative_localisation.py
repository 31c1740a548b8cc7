"""3D relative localisation: an MLP on pairs of voxel embeddings regresses their normalised offset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cover3d.losses.sampling import gather_voxels, sample_voxel_indices
from cover3d.networks.blocks.heads import RelativePositionHead

__all__ = ["RelativeLocalisationLoss", "voxel_coordinates"]


def voxel_coordinates(indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat voxel ``indices`` ``(B, K)`` of a grid ``shape`` ``(D, H, W)`` -> coordinates ``(B, K, 3)`` (voxels)."""
    coords, rest = [], indices
    for size in reversed(shape):
        coords.append(rest % size)
        rest = torch.div(rest, size, rounding_mode="floor")
    return torch.stack(coords[::-1], dim=-1).float()


class RelativeLocalisationLoss(nn.Module):
    """MSE between a :class:`~cover3d.networks.blocks.RelativePositionHead`'s output on each ordered pair
    ``[e_i, e_j]`` of ``num_samples`` random voxel embeddings of a view and their normalised offset
    ``(p_j - p_i) * spacing / max_axis((S_axis - 1) * spacing_axis)`` (per axis in [-1, 1], in proportion to the
    physical distance when ``spacing`` is anisotropic). Averaged over both views and the chosen levels.

    Args:
        feature_channels: backbone feature channels per level, coarse to fine (``UNetBackbone.feature_channels``).
        levels: indices of the levels read (into ``feature_channels``; ``-1`` = full resolution), one head each.
        num_samples: K voxels per view and sample (``K * (K - 1)`` pairs).
        hidden: width of the heads' hidden layers.
        spacing: voxel size per tensor axis (mm); ``None`` = isotropic.

    ``forward(output) -> scalar``; ``output`` has ``features_a`` / ``features_b`` (lists, coarse to fine).
    """

    batch_keys = ()

    def __init__(
        self,
        feature_channels: Sequence[int],
        levels: Sequence[int] = (-1,),
        num_samples: int = 32,
        hidden: int = 256,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (pairs of voxels), got {num_samples}")
        self.levels = tuple(int(level) for level in levels)
        self.num_samples = num_samples
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
        self.heads = nn.ModuleList(RelativePositionHead(int(feature_channels[level]), hidden) for level in self.levels)

    def normalised_offsets(self, coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Offsets ``(B, K, K, 3)`` between all pairs of ``coords`` ``(B, K, 3)`` (voxels of a grid ``shape``)."""
        spacing = coords.new_tensor(self.spacing)
        extent = ((coords.new_tensor(shape) - 1).clamp_min(1) * spacing).max()
        return (coords[:, None, :, :] - coords[:, :, None, :]) * spacing / extent

    def forward(self, output: dict) -> torch.Tensor:
        losses = []
        for level, head in zip(self.levels, self.heads):
            for features in (output["features_a"][level], output["features_b"][level]):
                shape = features.shape[2:]
                indices = sample_voxel_indices(features.new_ones((features.shape[0], 1, *shape)), self.num_samples)
                embeddings = gather_voxels(features.float(), indices)  # (B, K, C)
                k = embeddings.shape[1]
                pairs = torch.cat(
                    [embeddings[:, :, None, :].expand(-1, -1, k, -1), embeddings[:, None, :, :].expand(-1, k, -1, -1)],
                    dim=-1,
                )  # (B, K, K, 2C): [e_i, e_j]
                target = self.normalised_offsets(voxel_coordinates(indices, shape), shape)
                off_diagonal = ~torch.eye(k, dtype=torch.bool, device=features.device)
                losses.append((head(pairs) - target).pow(2)[:, off_diagonal].mean())
        return torch.stack(losses).mean()
