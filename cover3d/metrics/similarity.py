"""Image similarity and overlap of two volumes on one grid: did a predicted warp bring them closer?

Global normalised cross-correlation is one Pearson correlation (MONAI only has a local NCC *loss*); mutual
information reuses MONAI's ``GlobalMutualInformationLoss`` (its negative), which also suits different modalities.
"""

from __future__ import annotations

import torch
from monai.losses import GlobalMutualInformationLoss

__all__ = ["foreground_overlap", "global_ncc", "mutual_information"]


def global_ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the voxel values of ``a`` and ``b`` (same shape, e.g. ``(C, X, Y, Z)``), in [-1, 1];
    0 when either is constant."""
    x, y = a.detach().double().flatten(), b.detach().double().flatten()
    x, y = x - x.mean(), y - y.mean()
    norm = torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y)
    return float((x @ y) / norm) if norm > 0 else 0.0


def mutual_information(a: torch.Tensor, b: torch.Tensor, num_bins: int = 32) -> float:
    """Mutual information (nats, Parzen-window histogram of MONAI's ``GlobalMutualInformationLoss``) of two
    volumes ``(C, X, Y, Z)`` with values in [0, 1] (cover3d's preprocessed intensities)."""
    loss = GlobalMutualInformationLoss(num_bins=num_bins)
    with torch.no_grad():
        return float(-loss(a.detach().float()[None].clamp(0, 1), b.detach().float()[None].clamp(0, 1)))


def foreground_overlap(
    a: torch.Tensor, b: torch.Tensor, threshold: float = 0.05, a_foreground: int | None = None
) -> float:
    """Overlap coefficient ``|A n B| / min(|A|, |B|)`` of the foregrounds (voxels above ``threshold``) of two volumes
    on one grid: 1 when one lies inside the other, near 0 when they barely overlap; 0 when either is empty.

    ``a_foreground``: ``|A|`` counted before ``a`` was resampled onto ``b``'s grid (same voxel size), so the part
    of ``a`` that fell outside that grid counts as not overlapping.
    """
    fa, fb = a.detach() > threshold, b.detach() > threshold
    smaller = min(int(fa.sum()) if a_foreground is None else int(a_foreground), int(fb.sum()))
    return min(1.0, float((fa & fb).sum()) / smaller) if smaller else 0.0
