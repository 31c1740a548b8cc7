"""Tests of cover3d.visualize: figure structure, drawn geometry (arrows, grid, folding) and PNG output."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver

from cover3d.metrics import jacobian_determinant
from cover3d.visualize import (
    feature_pca_rgb,
    interactive_slices,
    plot_feature_pca,
    plot_field,
    plot_field_comparison,
    plot_jacobian,
    plot_orthogonal_slices,
)

SHAPE = (12, 16, 20)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def constant_field(values=(0.5, 2.0, -1.0)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE).clone()


def coords() -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij"))


def save_png(fig: Figure, path) -> None:
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_orthogonal_slices_of_both_views(tmp_path):
    view_a = torch.rand(1, 1, *SHAPE)
    view_b = np.random.rand(*SHAPE).astype(np.float32)
    fig = plot_orthogonal_slices({"view a": view_a, "view b": view_b}, slice_indices=(3, 4, 5))
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    first = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(first, view_a[0, 0, 3].numpy())  # axis 0 plane: rows = axis 1, columns = axis 2
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), view_b[:, 4, :])
    assert fig.axes[2].images[0].get_array().shape == (SHAPE[0], SHAPE[1])
    save_png(fig, tmp_path / "slices.png")
    assert len(plot_orthogonal_slices(view_b).axes) == 3
    with pytest.raises(ValueError, match="outside"):
        plot_orthogonal_slices(view_b, slice_indices=(0, 0, SHAPE[2]))
    with pytest.raises(ValueError, match="same shape|share one shape"):
        plot_orthogonal_slices({"a": view_b, "b": view_b[:-1]})
    with pytest.raises(ValueError, match="3D volume"):
        plot_orthogonal_slices(np.zeros((2, *SHAPE)))


def test_plot_field_arrows_and_grid_follow_the_field(tmp_path):
    field = constant_field((0.5, 2.0, -1.0))
    fig = plot_field(field, axis=0, slice_index=6, image=torch.rand(*SHAPE), step=4)
    assert len(fig.axes) == 8  # 6 panels + 2 colorbars
    quiver = next(c for c in fig.axes[0].collections if isinstance(c, Quiver))
    # axis 0 plane: arrows' x = column axis 2, y = row axis 1 (drawn downwards).
    np.testing.assert_allclose(quiver.U, -1.0)
    np.testing.assert_allclose(quiver.V, 2.0)
    assert quiver.X.min() == 2 and quiver.Y.min() == 2  # arrows start at voxel centres every step voxels
    assert quiver.scale == 1.0 and quiver.scale_units == "xy"
    # Deformed grid: the first row line (row 0) is moved by the in-plane displacement.
    row_line = fig.axes[1].lines[0]
    np.testing.assert_allclose(row_line.get_xdata(), np.arange(SHAPE[2]) - 1.0)
    np.testing.assert_allclose(row_line.get_ydata(), np.full(SHAPE[2], 2.0))
    n_row_lines = len(range(0, SHAPE[1], 4))
    np.testing.assert_allclose(fig.axes[1].lines[n_row_lines].get_xdata(), np.full(SHAPE[1], -1.0))
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), np.linalg.norm([0.5, 2.0, -1.0]), rtol=1e-6)
    for channel, value in enumerate((0.5, 2.0, -1.0)):
        np.testing.assert_allclose(fig.axes[3 + channel].images[0].get_array(), value)
    save_png(fig, tmp_path / "field.png")

    side = plot_field(field[0].numpy(), axis=2, arrow_scale=2.0)  # plane of axes (0, 1), no background image
    quiver = next(c for c in side.axes[0].collections if isinstance(c, Quiver))
    np.testing.assert_allclose(quiver.U, 2.0)  # column axis 1
    np.testing.assert_allclose(quiver.V, 0.5)  # row axis 0
    assert quiver.scale == 0.5
    with pytest.raises(ValueError, match="axis"):
        plot_field(field, axis=3)
    with pytest.raises(ValueError, match="field"):
        plot_field(torch.zeros(2, 3, *SHAPE))
    with pytest.raises(ValueError, match="image"):
        plot_field(field, image=torch.zeros(4, 4, 4))


def test_plot_field_comparison_shows_epe(tmp_path):
    target = torch.zeros(1, 3, *SHAPE)
    pred = target.clone()
    pred[:, 1, :, :8] = 3.0
    mask = np.ones(SHAPE, np.float32)
    mask[:, :, :2] = 0
    fig = plot_field_comparison(pred, target, axis=0, slice_index=5, mask=mask, spacing=(1.0, 2.0, 1.0))
    assert len(fig.axes) == 5  # 3 panels + 2 colorbars
    error = fig.axes[2].images[0].get_array()
    assert error.mask[:, :2].all() and not error.mask[:, 2:].any()
    np.testing.assert_allclose(error.data[:8, 2:], 6.0)  # 3 voxels along axis 1 at 2 mm
    np.testing.assert_allclose(error.data[8:, 2:], 0.0)
    assert "mm" in fig.axes[2].get_title()
    save_png(fig, tmp_path / "comparison.png")
    with pytest.raises(ValueError, match="same shape"):
        plot_field_comparison(pred, target[..., :-1])


def test_plot_jacobian_highlights_folding(tmp_path):
    grid = coords()
    field = np.zeros((3, *SHAPE), np.float32)
    region = np.zeros(SHAPE, bool)
    region[4:8, 5:11, :] = True
    field[2] = np.where(region, -2.0 * (grid[2] - 9.5), 0.0)  # det = -1 inside the region, 1 elsewhere
    fig = plot_jacobian(field, axis=0, slice_index=6)
    assert len(fig.axes) == 3  # map, histogram, colorbar
    det_image, fold_image = fig.axes[0].images
    np.testing.assert_allclose(det_image.get_array().data, jacobian_determinant(torch.from_numpy(field[None]))[0, 0, 6])
    np.testing.assert_array_equal(~fold_image.get_array().mask, region[6])
    assert f"{100 * region.mean():.3g}%" in fig.axes[0].get_title()
    save_png(fig, tmp_path / "jacobian.png")
    unfolded = plot_jacobian(torch.zeros(1, 3, *SHAPE), axis=1, mask=torch.ones(*SHAPE))
    assert unfolded.axes[0].images[1].get_array().mask.all()


def test_feature_pca_rgb_and_plot(tmp_path):
    grid = coords()
    rng = np.random.default_rng(0)
    # Strong signal along axis 0, weaker along axis 2, plus small noise channels.
    features = np.concatenate([10 * grid[:1], 3 * grid[2:], 0.1 * rng.standard_normal((4, *SHAPE))]).astype(np.float32)
    rgb_a, rgb_b = feature_pca_rgb([features, torch.from_numpy(features[:, ::2, ::2, ::2].copy())])
    assert rgb_a.shape == (*SHAPE, 3) and rgb_b.shape == (6, 8, 10, 3)
    assert rgb_a.min() >= 0 and rgb_a.max() <= 1
    assert abs(np.corrcoef(rgb_a[..., 0].ravel(), grid[0].ravel())[0, 1]) > 0.99  # red = first component = axis 0
    assert abs(np.corrcoef(rgb_a[..., 1].ravel(), grid[2].ravel())[0, 1]) > 0.99  # green = axis 2
    np.testing.assert_allclose(rgb_b, rgb_a[::2, ::2, ::2], atol=1e-6)  # one shared basis and scaling
    fig = plot_feature_pca({"view a": features, "view b": features[None]}, slice_indices=(1, 2, 3))
    assert len(fig.axes) == 6
    expected = feature_pca_rgb([features, features])[0][1]  # the figure's PCA is fitted on both entries
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), expected)
    save_png(fig, tmp_path / "pca.png")
    with pytest.raises(ValueError, match="C >= 3"):
        plot_feature_pca(features[:2])


def test_interactive_slices_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails as if not installed
    field = constant_field()
    fig = interactive_slices(plot_field, field, axis=1, slice_index=3)
    assert isinstance(fig, Figure) and "axis 1 = 3" in fig.axes[0].get_title()
    assert isinstance(interactive_slices(plot_orthogonal_slices, torch.rand(*SHAPE)), Figure)
    with pytest.raises(ValueError, match="slice"):
        interactive_slices(feature_pca_rgb, field)


def test_interactive_slices_with_ipywidgets():
    ipywidgets = pytest.importorskip("ipywidgets")
    calls = []

    def spy(ddf, axis=0, slice_index=None):
        calls.append((axis, slice_index))
        return plot_field(ddf, axis, slice_index)

    box = interactive_slices(spy, constant_field(), axis=1)
    assert isinstance(box, ipywidgets.VBox)
    axis_choice, index, _ = box.children
    assert calls == [(1, SHAPE[1] // 2)] and index.max == SHAPE[1] - 1
    axis_choice.value = 2
    assert index.max == SHAPE[2] - 1 and calls[-1][0] == 2
    index.value = 4
    assert calls[-1] == (2, 4)
