"""Input conversion and plane slicing shared by the plotting functions.

Plane convention (all of :mod:`cover3d.visualize`): a plane is given by ``axis`` (the tensor spatial axis 0, 1 or
2 of ``(D, H, W)`` that is held fixed) and ``slice_index`` (the index along it; ``None`` = the middle,
``size // 2``). The two remaining axes, in increasing order, are the image rows (drawn top to bottom) and
columns (left to right). Three-plane plots take ``slice_indices = (i0, i1, i2)``: plane ``a`` is
``axis=a, slice_index=slice_indices[a]``, so the three planes cross at voxel ``(i0, i1, i2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["ArrayLike", "as_features", "as_field", "as_volume", "in_plane_axes", "plane", "resolve_index", "to_numpy"]

ArrayLike = np.ndarray | torch.Tensor


def to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (torch tensor on any device, or array-like) as a float32 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}") from err


def _drop_leading_ones(x: np.ndarray, ndim: int) -> np.ndarray:
    while x.ndim > ndim and x.shape[0] == 1:
        x = x[0]
    return x


def as_volume(x: ArrayLike, name: str = "image") -> np.ndarray:
    """Scalar volume ``(D, H, W)``; leading size-1 dims (``(1, D, H, W)``, ``(1, 1, D, H, W)``) are dropped."""
    out = _drop_leading_ones(to_numpy(x, name), 3)
    if out.ndim != 3:
        raise ValueError(
            f"{name} must be a 3D volume (D, H, W), optionally with leading size-1 dims, got {np.shape(x)}"
        )
    return out


def as_field(x: ArrayLike, name: str = "ddf") -> np.ndarray:
    """Displacement field ``(3, D, H, W)`` in voxels; a leading batch dim of size 1 is dropped."""
    out = _drop_leading_ones(to_numpy(x, name), 4)
    if out.ndim != 4 or out.shape[0] != 3:
        raise ValueError(f"{name} must be a field (3, D, H, W) or (1, 3, D, H, W), got {tuple(np.shape(x))}")
    return out


def as_features(x: ArrayLike, name: str = "features") -> np.ndarray:
    """Voxel features ``(C, D, H, W)`` with ``C >= 3``; a leading batch dim of size 1 is dropped."""
    out = _drop_leading_ones(to_numpy(x, name), 4)
    if out.ndim != 4 or out.shape[0] < 3:
        raise ValueError(
            f"{name} must be voxel features (C, D, H, W) or (1, C, D, H, W) with C >= 3, got {tuple(np.shape(x))}"
        )
    return out


def in_plane_axes(axis: int) -> tuple[int, int]:
    """Spatial axes ``(row_axis, column_axis)`` of the plane orthogonal to ``axis``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (spatial axis of (D, H, W) held fixed), got {axis}")
    rows, cols = (a for a in range(3) if a != axis)
    return rows, cols


def resolve_index(shape: Sequence[int], axis: int, slice_index: int | None) -> int:
    """``slice_index`` checked against ``shape[axis]``; ``None`` gives the middle slice."""
    in_plane_axes(axis)  # validates axis
    size = shape[axis]
    index = size // 2 if slice_index is None else int(slice_index)
    if not 0 <= index < size:
        raise ValueError(f"slice_index {slice_index} is outside [0, {size - 1}] along axis {axis}")
    return index


def plane(volume: np.ndarray, axis: int, slice_index: int | None) -> np.ndarray:
    """The ``(rows, columns, ...)`` plane of ``volume`` ``(D, H, W, ...)`` at ``slice_index`` along ``axis``."""
    return np.take(volume, resolve_index(volume.shape, axis, slice_index), axis=axis)
