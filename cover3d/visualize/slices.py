"""Three orthogonal planes of scalar volumes (e.g. both views of a pair) and PCA-RGB of voxel features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from cover3d.visualize.arrays import ArrayLike, as_features, as_volume, in_plane_axes, plane, resolve_index

__all__ = ["feature_pca_rgb", "plot_feature_pca", "plot_orthogonal_slices"]


def _named(volumes: ArrayLike | Mapping[str, ArrayLike], default: str) -> dict[str, ArrayLike]:
    return dict(volumes) if isinstance(volumes, Mapping) else {default: volumes}


def _resolve_indices(shape: Sequence[int], slice_indices: Sequence[int] | None) -> tuple[int, int, int]:
    if slice_indices is not None and len(slice_indices) != 3:
        raise ValueError(f"slice_indices must be 3 indices (one per spatial axis), got {slice_indices}")
    chosen = [None] * 3 if slice_indices is None else list(slice_indices)
    return tuple(resolve_index(shape, axis, chosen[axis]) for axis in range(3))  # type: ignore[return-value]


def _draw_row(row: Sequence, name: str, volume: np.ndarray, indices: tuple[int, int, int], **imshow) -> None:
    """Draw the three planes of ``volume`` ``(D, H, W[, 3])`` through ``indices`` into the 3 axes ``row``, with crosshairs."""
    for axis, ax in enumerate(row):
        r, c = in_plane_axes(axis)
        ax.imshow(plane(volume, axis, indices[axis]), interpolation="nearest", **imshow)
        ax.axhline(indices[r], color="tab:orange", lw=0.6, ls="--")
        ax.axvline(indices[c], color="tab:orange", lw=0.6, ls="--")
        ax.set_title(f"{name}: axis {axis} = {indices[axis]}", fontsize=9)
        ax.set_ylabel(f"axis {r}", fontsize=8)
        ax.set_xlabel(f"axis {c}", fontsize=8)
        ax.tick_params(labelsize=7)


def plot_orthogonal_slices(
    volumes: ArrayLike | Mapping[str, ArrayLike],
    slice_indices: Sequence[int] | None = None,
    cmap: str = "gray",
) -> Figure:
    """Three orthogonal planes through ``slice_indices`` of each volume (one row per volume, 3 axes each).

    ``volumes``: one ``(D, H, W)`` volume (leading size-1 dims allowed) or a mapping name -> volume, e.g.
    ``{"view a": x_a, "view b": x_b}``; all must have the same shape. Each row uses its volume's min/max.
    """
    named = {name: as_volume(v, name) for name, v in _named(volumes, "image").items()}
    shapes = {v.shape for v in named.values()}
    if len(shapes) != 1:
        raise ValueError(f"volumes must share one shape, got {sorted(shapes)}")
    indices = _resolve_indices(shapes.pop(), slice_indices)
    fig = Figure(figsize=(10, 3.4 * len(named)), layout="constrained")
    for row, (name, volume) in zip(fig.subplots(len(named), 3, squeeze=False), named.items()):
        _draw_row(row, name, volume, indices, cmap=cmap, vmin=float(volume.min()), vmax=float(volume.max()))
    return fig


def feature_pca_rgb(features: Sequence[ArrayLike]) -> list[np.ndarray]:
    """First 3 principal components of voxel features as RGB: each ``(C, D, H, W)`` -> ``(D, H, W, 3)`` in [0, 1].

    One PCA basis is fitted on the voxels of all given volumes together (so colours are comparable across
    e.g. both views, which may differ in size). Component signs are fixed so that each component's largest
    loading is positive; each component is mapped to [0, 1] between its pooled 1st and 99th percentiles.
    """
    arrays = [as_features(f, f"features[{i}]") for i, f in enumerate(features)]
    if not arrays or len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(
            f"features must be a non-empty list of (C, D, H, W) arrays with one C, got {[a.shape for a in arrays]}"
        )
    voxels = [a.reshape(a.shape[0], -1).T.astype(np.float64) for a in arrays]
    pooled = np.concatenate(voxels)
    centre = pooled.mean(0)
    _, vectors = np.linalg.eigh(np.cov(pooled - centre, rowvar=False))
    basis = vectors[:, ::-1][:, :3]
    basis *= np.sign(basis[np.abs(basis).argmax(0), range(3)])
    projected = [(v - centre) @ basis for v in voxels]
    low, high = np.percentile(np.concatenate(projected), [1, 99], axis=0)
    scale = np.where(high > low, high - low, 1.0)
    return [
        np.clip((p - low) / scale, 0, 1).reshape(*a.shape[1:], 3).astype(np.float32) for p, a in zip(projected, arrays)
    ]


def plot_feature_pca(
    features: ArrayLike | Mapping[str, ArrayLike], slice_indices: Sequence[int] | None = None
) -> Figure:
    """PCA-RGB (see :func:`feature_pca_rgb`, one shared basis) of voxel features on three orthogonal planes.

    ``features``: one ``(C, D, H, W)`` array (a leading batch dim of size 1 is allowed) or a mapping name ->
    array, e.g. ``{"view a": f_a, "view b": f_b}``; one row (3 axes) per entry. ``slice_indices`` index the
    first entry's grid and are used for every entry (entries of another size get their own middle planes).
    """
    named = _named(features, "features")
    rgb = dict(zip(named, feature_pca_rgb(list(named.values()))))
    first = next(iter(rgb.values())).shape[:3]
    fig = Figure(figsize=(10, 3.4 * len(rgb)), layout="constrained")
    for row, (name, volume) in zip(fig.subplots(len(rgb), 3, squeeze=False), rgb.items()):
        indices = _resolve_indices(volume.shape[:3], slice_indices if volume.shape[:3] == first else None)
        _draw_row(row, name, volume, indices)
    return fig
