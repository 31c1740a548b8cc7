"""Displacement-field conventions used everywhere in cover3d.

A field ("DDF" in MONAI words) is a tensor ``(B, 3, D, H, W)`` in **voxel units**; channel ``i`` is the
displacement along spatial axis ``i`` of the tensor. Warping is **backward**:
``warp(x, psi)(p) = x(p + psi(p))``, done by :class:`monai.networks.blocks.Warp`. Resampling of fields
between pyramid levels uses ``align_corners=False`` (voxel ``i`` of a stride-``s`` level is centred on
full-resolution coordinate ``s * i + (s - 1) / 2``, which is what max-pool / average-pool pyramids produce).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp

__all__ = ["warp", "upsample_field", "downsample_field", "compose_fields", "check_field"]


def check_field(ddf: torch.Tensor, name: str = "ddf") -> None:
    """Raise ``ValueError`` unless ``ddf`` is ``(B, N, *spatial)`` with ``N == len(spatial)`` in (2, 3)."""
    spatial = ddf.ndim - 2
    if spatial not in (2, 3) or ddf.shape[1] != spatial:
        raise ValueError(f"{name} must have shape (B, N, *spatial) with N = number of spatial dims, got {tuple(ddf.shape)}")


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Backward-warp ``image`` ``(B, C, *spatial)`` by ``ddf`` ``(B, N, *spatial)`` (voxels): ``out(p) = image(p + ddf(p))``.

    Samples outside the image are 0 (``padding_mode="zeros"``), so a zero field returns ``image`` exactly.
    """
    check_field(ddf)
    return Warp(mode=mode, padding_mode=padding_mode)(image, ddf.to(image.dtype))


def upsample_field(ddf: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample a field by an integer ``factor``; values are multiplied by ``factor`` (they are voxels of the finer grid)."""
    check_field(ddf)
    mode = "trilinear" if ddf.ndim == 5 else "bilinear"
    return F.interpolate(ddf, scale_factor=factor, mode=mode, align_corners=False) * factor


def downsample_field(ddf: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool a field by an integer ``factor``; values are divided by ``factor`` (voxels of the coarser grid)."""
    check_field(ddf)
    if factor == 1:
        return ddf
    pool = F.avg_pool3d if ddf.ndim == 5 else F.avg_pool2d
    return pool(ddf, kernel_size=factor, stride=factor) / factor


def compose_fields(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Field of "warp by ``first``, then by ``second``": ``warp(warp(x, first), second) == warp(x, result)``.

    ``result(p) = second(p) + first(p + second(p))``. The field itself is sampled with border padding: a
    displacement has no natural zero outside the grid, so the nearest defined value is used.
    """
    check_field(first, "first")
    check_field(second, "second")
    return second + warp(first, second, padding_mode="border")
