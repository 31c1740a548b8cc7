"""VICReg-style variance-covariance regulariser on voxel features: a collapse guard for L_con."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cover3d.losses.sampling import gather_voxels, sample_voxel_indices

__all__ = ["VarianceCovarianceLoss"]


class VarianceCovarianceLoss(nn.Module):
    """``mean_c relu(gamma - std_c) + cov_weight * sum_{i != j} cov_ij^2 / C`` (Bardes et al., VICReg) over
    ``num_samples`` random valid voxels per sample of each view's full-resolution features.

    ``forward(output, mask (B,1,*S)) -> scalar``; ``output`` has ``features_a`` / ``features_b`` (coarse to fine).
    Zero when every channel varies by at least ``gamma`` across voxels and channels are uncorrelated.
    """

    batch_keys = ("mask",)

    def __init__(self, gamma: float = 1.0, cov_weight: float = 1.0, num_samples: int = 1024) -> None:
        super().__init__()
        self.gamma = gamma
        self.cov_weight = cov_weight
        self.num_samples = num_samples

    def forward(self, output: dict, mask: torch.Tensor) -> torch.Tensor:
        losses = []
        for features in (output["features_a"][-1], output["features_b"][-1]):
            vectors = gather_voxels(features.float(), sample_voxel_indices(mask, self.num_samples)).flatten(0, 1)
            vectors = vectors - vectors.mean(0)
            variance = F.relu(self.gamma - torch.sqrt(vectors.var(0) + 1e-4)).mean()
            cov = vectors.T @ vectors / (vectors.shape[0] - 1)
            off_diagonal = cov - torch.diag(torch.diag(cov))
            losses.append(variance + self.cov_weight * off_diagonal.pow(2).sum() / cov.shape[0])
        return torch.stack(losses).mean()
