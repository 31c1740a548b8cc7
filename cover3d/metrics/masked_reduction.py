"""Per-sample reductions of voxel maps restricted to a validity mask, and voxel-to-mm conversion of fields."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Spacing", "field_in_mm", "masked_mean", "masked_median", "valid_voxels"]

#: mm per voxel along the tensor's spatial axes: ``(N,)`` for the whole batch or ``(B, N)``; ``None`` = voxel units.
Spacing = Sequence[float] | torch.Tensor | None


def valid_voxels(values: torch.Tensor, mask: torch.Tensor | None, name: str = "mask") -> torch.Tensor:
    """Boolean ``(B, 1, *S)`` map of the voxels to use: ``mask > 0.5`` (``mask`` is bool or {0, 1}), all voxels if ``None``.

    ``values`` is the ``(B, 1, *S)`` voxel map the mask applies to; a mask of another shape raises ``ValueError``.
    """
    if mask is None:
        return torch.ones_like(values, dtype=torch.bool)
    if mask.shape != values.shape:
        raise ValueError(f"{name} must have shape (B, 1, *spatial) = {tuple(values.shape)}, got {tuple(mask.shape)}")
    return mask > 0.5 if mask.dtype != torch.bool else mask


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, 1, *S)`` over the voxels where ``valid`` is True, per sample: ``(B,)``; NaN if none."""
    total = torch.where(valid, values, torch.zeros_like(values)).flatten(1).sum(1)
    return total / valid.flatten(1).sum(1)


def masked_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median (lower median for even counts, as ``torch.median``) over valid voxels, per sample: ``(B,)``; NaN if none."""
    nan = torch.full_like(values, float("nan"))
    return torch.where(valid, values, nan).flatten(1).nanmedian(dim=1).values


def field_in_mm(ddf: torch.Tensor, spacing: Spacing) -> torch.Tensor:
    """Scale channel ``i`` of ``ddf`` ``(B, N, *S)`` (voxels) by the voxel size along axis ``i``; unchanged if ``spacing`` is None.

    ``spacing``: mm per voxel along the tensor's spatial axes, shape ``(N,)`` for the whole batch or ``(B, N)``.
    """
    if spacing is None:
        return ddf
    n = ddf.shape[1]
    size = torch.as_tensor(spacing, dtype=ddf.dtype, device=ddf.device)
    if size.shape not in ((n,), (ddf.shape[0], n)):
        raise ValueError(
            f"spacing must have shape ({n},) or ({ddf.shape[0]}, {n}) (mm per voxel per axis), got {tuple(size.shape)}"
        )
    return ddf * size.reshape(-1, n, *([1] * (ddf.ndim - 2)))
