"""Displacement fields on one plane: arrows, deformed grid, magnitude/components, prediction vs truth, Jacobian.

Fields are ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` in voxels (cover3d convention: channel ``i`` = displacement
along spatial axis ``i``; view b samples view a at ``p + psi(p)``). The plane is ``(axis, slice_index)`` as
described in :mod:`cover3d.visualize.arrays`. Arrows go from ``p`` to ``p + psi(p)`` (in-plane components only,
true length in voxels times ``arrow_scale``); the deformed grid draws the lines of a regular grid every ``step``
voxels moved by the same map, i.e. where view b's grid samples view a.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cover3d.metrics import endpoint_error_map, jacobian_determinant
from cover3d.metrics.masked_reduction import Spacing
from cover3d.visualize.arrays import ArrayLike, as_field, as_volume, in_plane_axes, plane, resolve_index

__all__ = ["plot_field", "plot_field_comparison", "plot_jacobian"]


def _plane_field(field: np.ndarray, axis: int, slice_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column displacement and magnitude ``(R, C)`` of ``field`` ``(3, D, H, W)`` on one plane."""
    rows, cols = in_plane_axes(axis)
    vectors = plane(np.moveaxis(field, 0, -1), axis, slice_index)
    return vectors[..., rows], vectors[..., cols], np.linalg.norm(vectors, axis=-1)


def _frame(ax: Axes, shape: tuple[int, int], axis: int, title: str) -> None:
    rows, cols = in_plane_axes(axis)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(f"axis {rows}", fontsize=8)
    ax.set_xlabel(f"axis {cols}", fontsize=8)
    ax.tick_params(labelsize=7)


def _draw_arrows(ax: Axes, d_row: np.ndarray, d_col: np.ndarray, step: int, arrow_scale: float, color: str) -> None:
    r, c = np.mgrid[step // 2 : d_row.shape[0] : step, step // 2 : d_row.shape[1] : step]
    ax.quiver(
        c,
        r,
        d_col[r, c],
        d_row[r, c],
        color=color,
        angles="xy",
        scale_units="xy",
        scale=1 / arrow_scale,
        width=0.006,
        headwidth=3.5,
        minlength=0,
    )


def _draw_grid(ax: Axes, d_row: np.ndarray, d_col: np.ndarray, step: int) -> None:
    rows, cols = np.arange(d_row.shape[0]), np.arange(d_row.shape[1])
    for r in range(0, rows.size, step):
        ax.plot(cols + d_col[r], r + d_row[r], color="tab:orange", lw=0.8)
    for c in range(0, cols.size, step):
        ax.plot(c + d_col[:, c], rows + d_row[:, c], color="tab:orange", lw=0.8)


def _check_step(step: int, arrow_scale: float) -> None:
    if step < 1 or arrow_scale <= 0:
        raise ValueError(f"step must be >= 1 and arrow_scale > 0, got step={step}, arrow_scale={arrow_scale}")


def plot_field(
    ddf: ArrayLike,
    axis: int = 0,
    slice_index: int | None = None,
    image: ArrayLike | None = None,
    step: int = 4,
    arrow_scale: float = 1.0,
) -> Figure:
    """One plane of a field: arrows, deformed grid, magnitude, and the 3 components (2 x 3 panels + 2 colorbars).

    ``image`` ``(D, H, W)`` (e.g. view a) is the grey background of the arrow and grid panels; without it the
    magnitude is used. Magnitude ``|psi|`` includes the through-plane component; components share one
    symmetric colour scale. All values in voxels.
    """
    _check_step(step, arrow_scale)
    field = as_field(ddf)
    index = resolve_index(field.shape[1:], axis, slice_index)
    d_row, d_col, magnitude = _plane_field(field, axis, index)
    if image is not None:
        volume = as_volume(image)
        if volume.shape != field.shape[1:]:
            raise ValueError(f"image must have the field's spatial shape {field.shape[1:]}, got {np.shape(image)}")
        background, background_cmap = plane(volume, axis, index), "gray"
    else:
        background, background_cmap = magnitude, "viridis"
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 3)
    where = f"axis {axis} = {index}"
    scale_note = "" if arrow_scale == 1 else f" (x{arrow_scale:g})"
    for ax in axes[0, :2]:
        ax.imshow(background, cmap=background_cmap, interpolation="nearest")
    _draw_arrows(axes[0, 0], d_row, d_col, step, arrow_scale, "tab:red")
    _frame(axes[0, 0], magnitude.shape, axis, f"{where}: arrows p -> p + psi(p){scale_note}")
    _draw_grid(axes[0, 1], d_row, d_col, step)
    _frame(axes[0, 1], magnitude.shape, axis, f"{where}: deformed grid")
    shown = axes[0, 2].imshow(magnitude, cmap="viridis", interpolation="nearest")
    _frame(axes[0, 2], magnitude.shape, axis, f"{where}: |psi| (voxels)")
    fig.colorbar(shown, ax=axes[0, 2], shrink=0.8)
    limit = float(np.abs(field).max()) or 1.0
    components = plane(np.moveaxis(field, 0, -1), axis, index)
    for channel, ax in enumerate(axes[1]):
        shown = ax.imshow(components[..., channel], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        side = "through-plane" if channel == axis else "in-plane"
        _frame(ax, magnitude.shape, axis, f"psi_{channel} (along axis {channel}, {side})")
    fig.colorbar(shown, ax=list(axes[1]), shrink=0.8, label="voxels")
    return fig


def plot_field_comparison(
    pred: ArrayLike,
    target: ArrayLike,
    axis: int = 0,
    slice_index: int | None = None,
    mask: ArrayLike | None = None,
    spacing: Spacing = None,
    step: int = 4,
    arrow_scale: float = 1.0,
) -> Figure:
    """Predicted vs true field on one plane (arrows over magnitude, shared scale) and the end-point error map.

    ``mask`` ``(D, H, W)`` (validity, > 0.5 = valid) greys out invalid voxels of the error map and restricts the
    volume statistics in its title. With ``spacing`` (mm per voxel per axis) the EPE is in mm. 3 panels + 2 colorbars.
    """
    _check_step(step, arrow_scale)
    fields = {"predicted": as_field(pred, "pred"), "true": as_field(target, "target")}
    if fields["predicted"].shape != fields["true"].shape:
        raise ValueError(
            f"pred and target must have the same shape, got {fields['predicted'].shape} and {fields['true'].shape}"
        )
    shape = fields["true"].shape[1:]
    index = resolve_index(shape, axis, slice_index)
    valid = np.ones(shape, bool) if mask is None else as_volume(mask, "mask") > 0.5
    if valid.shape != shape:
        raise ValueError(f"mask must have the field's spatial shape {shape}, got {np.shape(mask)}")
    epe = endpoint_error_map(*(torch.from_numpy(f[None]) for f in fields.values()), spacing=spacing)[0, 0].numpy()
    unit = "voxels" if spacing is None else "mm"
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    axes = fig.subplots(1, 3)
    planes = {name: _plane_field(f, axis, index) for name, f in fields.items()}
    top = max(float(p[2].max()) for p in planes.values()) or 1.0
    for ax, (name, (d_row, d_col, magnitude)) in zip(axes, planes.items()):
        shown = ax.imshow(magnitude, cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
        _draw_arrows(ax, d_row, d_col, step, arrow_scale, "white")
        _frame(ax, magnitude.shape, axis, f"{name} field, axis {axis} = {index}")
    fig.colorbar(shown, ax=list(axes[:2]), shrink=0.8, label="|psi| (voxels)")
    error_plane = np.ma.masked_where(~plane(valid, axis, index), plane(epe, axis, index))
    shown = axes[2].imshow(
        error_plane, cmap=colormaps["magma"].with_extremes(bad="lightgrey"), vmin=0, interpolation="nearest"
    )
    stats = f"mean {epe[valid].mean():.3g}, median {np.median(epe[valid]):.3g}" if valid.any() else "no valid voxels"
    _frame(axes[2], error_plane.shape, axis, f"EPE ({unit}); volume {stats}")
    fig.colorbar(shown, ax=axes[2], shrink=0.8, label=f"EPE ({unit})")
    return fig


def plot_jacobian(
    ddf: ArrayLike, axis: int = 0, slice_index: int | None = None, mask: ArrayLike | None = None
) -> Figure:
    """Jacobian determinant of ``x -> x + psi(x)`` on one plane with folding (det <= 0) in green, and its histogram.

    Colours: blue = compression (det < 1), white = volume-preserving (det = 1), red = expansion (det > 1).
    The histogram covers the whole volume (valid voxels of ``mask`` ``(D, H, W)`` only, if given) with the
    folded voxels in green. 2 panels + 1 colorbar. See :func:`cover3d.metrics.jacobian_determinant`.
    """
    field = as_field(ddf)
    shape = field.shape[1:]
    index = resolve_index(shape, axis, slice_index)
    valid = np.ones(shape, bool) if mask is None else as_volume(mask, "mask") > 0.5
    if valid.shape != shape:
        raise ValueError(f"mask must have the field's spatial shape {shape}, got {np.shape(mask)}")
    det = jacobian_determinant(torch.from_numpy(field[None]))[0, 0].numpy()
    det_plane, valid_plane = plane(det, axis, index), plane(valid, axis, index)
    folded = det[valid] <= 0
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    map_ax, hist_ax = fig.subplots(1, 2)
    top = max(2.0, float(np.percentile(det[valid], 99.5)) if valid.any() else 2.0)
    shown = map_ax.imshow(
        np.ma.masked_where(~valid_plane, det_plane),
        cmap=colormaps["RdBu_r"].with_extremes(bad="lightgrey"),
        norm=TwoSlopeNorm(vcenter=1.0, vmin=0.0, vmax=top),
        interpolation="nearest",
    )
    fold_plane = np.ma.masked_where(~(valid_plane & (det_plane <= 0)), np.ones_like(det_plane))
    map_ax.imshow(fold_plane, cmap=ListedColormap(["lime"]), vmin=0, vmax=1, interpolation="nearest")
    fraction = folded.mean() if folded.size else float("nan")
    _frame(map_ax, det_plane.shape, axis, f"det J, axis {axis} = {index}; folding {100 * fraction:.3g}% of volume")
    map_ax.legend(handles=[Patch(color="lime", label="det <= 0 (folding)")], loc="lower right", fontsize=7)
    fig.colorbar(shown, ax=map_ax, shrink=0.8, label="det J")
    values = det[valid]
    edges = np.linspace(values.min(), values.max(), 81) if values.size and values.max() > values.min() else 80
    hist_ax.hist(values[values > 0], bins=edges, color="tab:blue", label="det > 0")
    hist_ax.hist(values[values <= 0], bins=edges, color="lime", label="det <= 0")
    for x in (0.0, 1.0):
        hist_ax.axvline(x, color="black", lw=0.8, ls="--")
    hist_ax.set_yscale("log")
    hist_ax.set_xlabel("det J", fontsize=8)
    hist_ax.set_ylabel("voxels", fontsize=8)
    hist_ax.set_title("det J over the volume", fontsize=9)
    hist_ax.legend(fontsize=7)
    return fig
