"""Inverse consistency of a forward/backward pair of fields ``psi_ab`` and ``psi_ba``.

With backward warping (``x_b = warp(x_a, psi_ab)``, ``x_a = warp(x_b, psi_ba)``), voxel ``p`` of view b comes from
``q = p + psi_ab(p)`` in view a, which must come back to ``p``: the residual
``r(p) = psi_ab(p) + psi_ba(p + psi_ab(p))`` is the composed field :func:`cover3d.fields.compose_fields` ``(psi_ba,
psi_ab)`` and is 0 for an exact inverse pair. Fields ``(B, N, *S)`` in voxels; ``psi_ba`` is sampled with border
padding where ``q`` leaves the volume, so pass the validity mask of view b to ignore those voxels.
"""

from __future__ import annotations

import torch

from cover3d.fields import compose_fields
from cover3d.metrics.masked_reduction import Spacing, field_in_mm, masked_mean, valid_voxels

__all__ = ["inverse_consistency_error", "inverse_consistency_map"]


def inverse_consistency_map(psi_ab: torch.Tensor, psi_ba: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Per-voxel ``|psi_ab(p) + psi_ba(p + psi_ab(p))|``, ``(B, 1, *S)``, in voxels or mm (with ``spacing``, mm per voxel per axis)."""
    if psi_ab.shape != psi_ba.shape:
        raise ValueError(
            f"psi_ab and psi_ba must have the same shape, got {tuple(psi_ab.shape)} and {tuple(psi_ba.shape)}"
        )
    residual = compose_fields(psi_ba, psi_ab)
    return torch.linalg.vector_norm(field_in_mm(residual, spacing), dim=1, keepdim=True)


def inverse_consistency_error(
    psi_ab: torch.Tensor, psi_ba: torch.Tensor, mask: torch.Tensor | None = None, spacing: Spacing = None
) -> torch.Tensor:
    """Mean inverse-consistency residual over the valid voxels (``mask`` ``(B, 1, *S)`` on view b's grid): ``(B,)``."""
    residual = inverse_consistency_map(psi_ab, psi_ba, spacing)
    return masked_mean(residual, valid_voxels(residual, mask))
