"""Tests of cover3d.metrics against analytic fields (voxel units, (B, 3, D, H, W))."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cover3d.metrics import (
    EndPointErrorMetric,
    FoldingFractionMetric,
    LogJacobianStdMetric,
    binned_endpoint_error,
    endpoint_error,
    endpoint_error_map,
    folding_fraction,
    fraction_within_tolerance,
    inverse_consistency_error,
    inverse_consistency_map,
    jacobian_determinant,
    log_jacobian_std,
    warp_labels,
    warped_label_dice,
)

SHAPE = (10, 12, 14)


def grid(shape=SHAPE, batch: int = 1) -> torch.Tensor:
    """Voxel coordinates (batch, 3, *shape)."""
    axes = [torch.arange(s, dtype=torch.float32) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None].expand(batch, -1, *shape).clone()


def interior(shape=SHAPE, margin: int = 1, batch: int = 1) -> torch.Tensor:
    mask = torch.zeros(batch, 1, *shape, dtype=torch.bool)
    mask[..., margin:-margin, margin:-margin, margin:-margin] = True
    return mask


def scaling_field(scale: float, shape=SHAPE) -> torch.Tensor:
    """x -> centre + scale (x - centre), as a displacement."""
    coords = grid(shape)
    centre = torch.tensor([(s - 1) / 2 for s in shape]).view(1, 3, 1, 1, 1)
    return (scale - 1) * (coords - centre)


def test_zero_field():
    zero = torch.zeros(2, 3, *SHAPE)
    assert torch.equal(endpoint_error(zero, zero), torch.zeros(2))
    assert torch.equal(endpoint_error(zero, zero, statistic="median"), torch.zeros(2))
    assert torch.equal(jacobian_determinant(zero), torch.ones(2, 1, *SHAPE))
    assert torch.equal(folding_fraction(zero), torch.zeros(2))
    assert torch.equal(log_jacobian_std(zero), torch.zeros(2))


def test_translation_has_unit_determinant():
    shift = torch.zeros(1, 3, *SHAPE)
    shift[:, 0], shift[:, 1], shift[:, 2] = 2.5, -1.25, 0.75
    torch.testing.assert_close(jacobian_determinant(shift), torch.ones(1, 1, *SHAPE))
    assert folding_fraction(shift).item() == 0.0


@pytest.mark.parametrize("scale", [0.6, 1.3])
def test_uniform_scaling_determinant(scale):
    det = jacobian_determinant(scaling_field(scale))
    inside = interior()
    torch.testing.assert_close(det[inside], torch.full_like(det[inside], scale**3))
    # One-sided differences on the faces are exact for a linear field too (documented).
    torch.testing.assert_close(det, torch.full_like(det, scale**3))
    assert log_jacobian_std(scaling_field(scale)).abs().item() < 1e-5


def test_2d_scaling_determinant():
    coords = grid((6, 8))  # (1, 2, 6, 8): a 2D field
    det = jacobian_determinant(0.5 * coords)
    torch.testing.assert_close(det, torch.full_like(det, 1.5**2))


def test_folding_region():
    # psi_2 = -2 (x_2 - c) inside a block of (x_0, x_1): d psi_2 / d x_2 = -2 there -> det = 1 - 2 = -1.
    # J stays triangular everywhere (only row 2 of the gradient is non-zero), so det = 1 elsewhere.
    field = torch.zeros(1, 3, *SHAPE)
    coords = grid()
    region = torch.zeros(1, 1, *SHAPE, dtype=torch.bool)
    region[:, :, 3:6, 4:9, :] = True
    field[:, 2:3] = torch.where(region, -2.0 * (coords[:, 2:3] - 6.5), torch.zeros(()))
    det = jacobian_determinant(field)
    assert torch.equal(det <= 0, region)
    torch.testing.assert_close(det[region], torch.full_like(det[region], -1.0))
    expected = region.float().mean()
    torch.testing.assert_close(folding_fraction(field), expected.reshape(1))
    assert folding_fraction(field, mask=region).item() == 1.0
    assert folding_fraction(field, mask=~region).item() == 0.0
    # log-Jacobian spread ignores folded voxels (det = 1 on all others).
    assert log_jacobian_std(field).item() == 0.0


def test_log_jacobian_std_of_varying_field():
    # psi_0 = a x_0^2 / 2 -> det = 1 + a x_0 (central differences exact for quadratics inside the volume).
    a = 0.05
    coords = grid()
    field = torch.zeros(1, 3, *SHAPE)
    field[:, 0] = a * coords[:, 0] ** 2 / 2
    inside = interior()
    x0 = coords[:, :1][inside].numpy()
    expected = np.std(np.log(1 + a * x0))
    assert log_jacobian_std(field, mask=inside).item() == pytest.approx(expected, rel=1e-4)


def test_endpoint_error_in_mm_with_anisotropic_spacing():
    target = torch.randn(2, 3, *SHAPE)
    offset = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1, 1)
    pred = target + offset
    torch.testing.assert_close(endpoint_error(pred, target), torch.full((2,), math.sqrt(2)))
    spacing = (2.0, 0.5, 1.0)
    expected_mm = math.sqrt(2.0**2 + 0.5**2)
    torch.testing.assert_close(endpoint_error(pred, target, spacing=spacing), torch.full((2,), expected_mm))
    torch.testing.assert_close(
        endpoint_error(pred, target, spacing=spacing, statistic="median"), torch.full((2,), expected_mm)
    )
    per_sample = torch.tensor([[2.0, 0.5, 1.0], [1.0, 3.0, 1.0]])
    torch.testing.assert_close(
        endpoint_error(pred, target, spacing=per_sample), torch.tensor([expected_mm, math.sqrt(1 + 9)])
    )
    with pytest.raises(ValueError, match="spacing"):
        endpoint_error(pred, target, spacing=(1.0, 1.0))


def test_endpoint_error_statistics_with_mask():
    target = torch.zeros(1, 3, *SHAPE)
    pred = torch.zeros(1, 3, *SHAPE)
    pred[:, 0, :5] = 0.5  # first half: EPE 0.5
    pred[:, 0, 5:] = 3.0  # second half: EPE 3
    pred[:, 0, 9] = 1.0  # exactly at the tolerance counts as within
    assert endpoint_error_map(pred, target).shape == (1, 1, *SHAPE)
    assert fraction_within_tolerance(pred, target).item() == pytest.approx(0.6)
    assert fraction_within_tolerance(pred, target, tolerance=0.4).item() == 0.0
    mask = torch.zeros(1, 1, *SHAPE)
    mask[:, :, :5] = 1.0
    assert endpoint_error(pred, target, mask=mask).item() == pytest.approx(0.5)
    assert endpoint_error(pred, target, mask=mask.bool(), statistic="median").item() == pytest.approx(0.5)
    assert fraction_within_tolerance(pred, target, mask=mask).item() == 1.0
    assert math.isnan(endpoint_error(pred, target, mask=torch.zeros_like(mask)).item())
    with pytest.raises(ValueError, match="mask"):
        endpoint_error(pred, target, mask=mask[:, :, :-1])
    with pytest.raises(ValueError, match="statistic"):
        endpoint_error(pred, target, statistic="max")
    with pytest.raises(ValueError, match="same shape"):
        endpoint_error(pred, target[..., :-1])


def test_binned_endpoint_error_counts_and_means():
    torch.manual_seed(0)
    target = 3 * torch.randn(2, 3, *SHAPE)
    pred = target + 0.5 * torch.randn_like(target)
    mask = torch.rand(2, 1, *SHAPE) > 0.3
    binned = binned_endpoint_error(pred, target, bins=5, mask=mask)
    assert binned.edges.shape == (6,) and binned.mean.shape == (5,) and binned.count.shape == (5,)
    assert binned.count.sum().item() == mask.sum().item()
    magnitude = target.norm(dim=1, keepdim=True)[mask]
    assert binned.edges[-1].item() == pytest.approx(magnitude.max().item())
    epe = (pred - target).norm(dim=1, keepdim=True)[mask]
    in_first = magnitude < binned.edges[1]
    assert binned.count[0].item() == in_first.sum().item()
    assert binned.mean[0].item() == pytest.approx(epe[in_first].mean().item(), rel=1e-5)
    # Count-weighted bin means give back the overall mean.
    overall = (binned.mean * binned.count).sum() / binned.count.sum()
    assert overall.item() == pytest.approx(epe.mean().item(), rel=1e-5)

    edges = binned_endpoint_error(pred, target, bins=[0.0, 1.0, 2.0, float("inf")])
    assert edges.count.sum().item() == 2 * math.prod(SHAPE)
    partial = binned_endpoint_error(pred, target, bins=[1.0, 2.0])
    full_magnitude = target.norm(dim=1)
    assert partial.count.item() == ((full_magnitude >= 1) & (full_magnitude <= 2)).sum().item()
    with pytest.raises(ValueError, match="increasing"):
        binned_endpoint_error(pred, target, bins=[1.0, 0.5])


def test_binned_endpoint_error_in_mm():
    target = torch.zeros(1, 3, *SHAPE)
    target[:, 1] = 2.0  # 2 voxels along axis 1 = 1 mm at 0.5 mm spacing
    binned = binned_endpoint_error(target, target, bins=[0.0, 1.5, 3.0], spacing=(1.0, 0.5, 1.0))
    assert binned.count.tolist() == [math.prod(SHAPE), 0]
    assert binned.mean[0].item() == 0.0 and math.isnan(binned.mean[1].item())


def test_inverse_consistency():
    shift = torch.zeros(1, 3, *SHAPE)
    shift[:, 0], shift[:, 2] = 1.3, -0.7
    assert inverse_consistency_error(shift, -shift).item() < 1e-5
    # A translation is not its own inverse: residual = 2 |t|.
    expected = 2 * math.hypot(1.3, 0.7)
    assert inverse_consistency_error(shift, shift).item() == pytest.approx(expected, rel=1e-5)
    assert inverse_consistency_error(shift, shift, spacing=(2.0, 1.0, 1.0)).item() == pytest.approx(
        2 * math.hypot(2.6, 0.7), rel=1e-5
    )
    # Scaling by s and by 1/s about the same centre are inverse (exact under linear interpolation inside).
    inside = interior(margin=3)
    assert inverse_consistency_error(scaling_field(1.2), scaling_field(1 / 1.2), mask=inside).item() < 1e-4


def test_inverse_consistency_map_order():
    # psi_ab = t, psi_ba(x) = A x  ->  r(p) = t + A (p + t); the other order would give A p + t.
    t = torch.tensor([1.0, 0.0, 0.0])
    psi_ab = t.view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE).clone()
    psi_ba = torch.zeros(1, 3, *SHAPE)
    psi_ba[:, 1] = 0.1 * grid()[:, 0]  # psi_ba_1 = 0.1 x_0
    coords = grid()
    expected = torch.stack([torch.ones(SHAPE), 0.1 * (coords[0, 0] + 1.0), torch.zeros(SHAPE)]).norm(dim=0)
    inside = interior(margin=2)
    residual = inverse_consistency_map(psi_ab, psi_ba)
    torch.testing.assert_close(residual[inside], expected[None, None][inside], atol=1e-5, rtol=1e-5)


def box_labels() -> torch.Tensor:
    labels = torch.zeros(1, 1, *SHAPE, dtype=torch.long)
    labels[..., 2:8, 3:9, 4:10] = 1  # 6 x 6 x 6 box
    labels[..., 0:2, 0:2, 0:2] = 2
    return labels


def test_warp_labels_nearest():
    labels = box_labels()
    field = torch.zeros(1, 3, *SHAPE)
    field[:, 1] = 1.2  # rounds to a one-voxel shift
    warped = warp_labels(labels, field)
    assert warped.dtype == labels.dtype
    assert torch.equal(warped[..., :, :-1, :], labels[..., :, 1:, :])
    assert torch.equal(warped[..., :, -1, :], torch.zeros_like(warped[..., :, -1, :]))  # outside -> background


def test_warped_label_dice():
    labels = box_labels()
    dice = warped_label_dice(labels, labels, torch.zeros(1, 3, *SHAPE), num_classes=3)
    torch.testing.assert_close(dice, torch.ones(1, 2))
    assert warped_label_dice(labels, labels, torch.zeros(1, 3, *SHAPE), 3, include_background=True).shape == (1, 3)
    shift = torch.zeros(1, 3, *SHAPE)
    shift[:, 2] = 1.0
    dice = warped_label_dice(labels, labels, shift, num_classes=3)
    assert dice[0, 0].item() == pytest.approx(5 / 6)  # box of side 6 shifted by one voxel
    assert dice[0, 1].item() == pytest.approx(2 / 3)  # 2-voxel cube at the border: half of it leaves the volume
    # Only voxels inside the mask count.
    mask = torch.zeros(1, 1, *SHAPE)
    mask[..., 4:9] = 1.0  # axis-2 slices where the box and its shifted copy agree
    assert warped_label_dice(labels, labels, shift, 3, mask=mask)[0, 0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="classes"):
        warped_label_dice(labels, labels, shift, num_classes=2)


def test_metric_classes_accumulate_like_functions():
    torch.manual_seed(1)
    batches = [(torch.randn(2, 3, *SHAPE), torch.randn(2, 3, *SHAPE), torch.rand(2, 1, *SHAPE) > 0.5) for _ in range(2)]
    preds, targets, masks = (torch.cat(parts) for parts in zip(*batches))

    epe = EndPointErrorMetric(spacing=(1.0, 2.0, 0.5))
    epe_median = EndPointErrorMetric(statistic="median")
    folding, log_std = FoldingFractionMetric(), LogJacobianStdMetric()
    for pred, target, mask in batches:
        assert epe(pred, target, mask=mask).shape == (2, 1)
        epe_median(pred, target)
        folding(pred, mask=mask)
        log_std(pred)
    # aggregate() returns shape (1,), like MONAI's MSEMetric.
    expected = endpoint_error(preds, targets, mask=masks, spacing=(1.0, 2.0, 0.5)).mean()
    torch.testing.assert_close(epe.aggregate(), expected.reshape(1))
    expected = endpoint_error(preds, targets, statistic="median").mean()
    torch.testing.assert_close(epe_median.aggregate(), expected.reshape(1))
    torch.testing.assert_close(folding.aggregate(), folding_fraction(preds, mask=masks).mean().reshape(1))
    assert folding.aggregate().item() > 0  # random fields fold
    torch.testing.assert_close(log_std.aggregate(), log_jacobian_std(preds).mean().reshape(1))
    assert epe.aggregate(reduction="none").shape == (4, 1)

    counted = EndPointErrorMetric(get_not_nans=True)
    counted(preds, targets, mask=torch.zeros_like(masks))
    counted(preds, targets)
    value, not_nans = counted.aggregate()
    torch.testing.assert_close(value, endpoint_error(preds, targets).mean().reshape(1))
    assert not_nans.item() == 4

    epe.reset()
    with pytest.raises(ValueError, match="nothing to aggregate"):
        epe.aggregate()
    with pytest.raises(ValueError, match="statistic"):
        EndPointErrorMetric(statistic="max")


def test_metric_classes_accept_lists_of_channel_first_tensors():
    pred, target = torch.randn(3, 3, *SHAPE), torch.randn(3, 3, *SHAPE)
    metric = EndPointErrorMetric()
    metric(list(pred), list(target))
    torch.testing.assert_close(metric.aggregate(), endpoint_error(pred, target).mean().reshape(1))
