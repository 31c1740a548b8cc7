"""Accuracy of a predicted displacement field against the true one: end-point error (EPE) statistics.

Fields are ``(B, N, *S)`` (``N = 3`` for ``(B, 3, D, H, W)``) in voxels, as in :mod:`cover3d.fields`. With ``spacing``
(mm per voxel along each tensor axis) errors and magnitudes are in mm, otherwise in voxels. ``mask`` ``(B, 1, *S)``
(bool or {0, 1}) restricts every statistic to valid voxels (e.g. the pair's validity mask); an empty mask gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.utils import MetricReduction

from cover3d.fields import check_field
from cover3d.metrics.masked_reduction import Spacing, field_in_mm, masked_mean, masked_median, valid_voxels
from cover3d.metrics.per_sample_metric import PerSampleMetric

__all__ = [
    "BinnedEndpointError",
    "EndPointErrorMetric",
    "binned_endpoint_error",
    "endpoint_error",
    "endpoint_error_map",
    "fraction_within_tolerance",
]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    check_field(pred, "pred")
    check_field(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")


def endpoint_error_map(pred: torch.Tensor, target: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Per-voxel end-point error ``|pred(p) - target(p)|`` (Euclidean), ``(B, 1, *S)``, in voxels or mm (with ``spacing``)."""
    _check_pair(pred, target)
    return torch.linalg.vector_norm(field_in_mm(pred - target, spacing), dim=1, keepdim=True)


def endpoint_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    spacing: Spacing = None,
    statistic: str = "mean",
) -> torch.Tensor:
    """Mean or median (``statistic``) end-point error over the valid voxels of each sample: ``(B,)``, voxels or mm."""
    epe = endpoint_error_map(pred, target, spacing)
    valid = valid_voxels(epe, mask)
    if statistic == "mean":
        return masked_mean(epe, valid)
    if statistic == "median":
        return masked_median(epe, valid)
    raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")


def fraction_within_tolerance(
    pred: torch.Tensor,
    target: torch.Tensor,
    tolerance: float = 1.0,
    mask: torch.Tensor | None = None,
    spacing: Spacing = None,
) -> torch.Tensor:
    """Fraction of valid voxels with EPE <= ``tolerance`` (voxels, or mm with ``spacing``), per sample: ``(B,)``."""
    epe = endpoint_error_map(pred, target, spacing)
    return masked_mean((epe <= tolerance).to(epe.dtype), valid_voxels(epe, mask))


class BinnedEndpointError(NamedTuple):
    """EPE grouped by true displacement magnitude, pooled over the batch's valid voxels.

    ``edges`` ``(K+1,)``; ``mean`` ``(K,)`` mean EPE of the voxels with magnitude in bin ``k`` (NaN when empty);
    ``count`` ``(K,)`` int64 number of those voxels.
    """

    edges: torch.Tensor
    mean: torch.Tensor
    count: torch.Tensor


def binned_endpoint_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    bins: int | Sequence[float] = 10,
    mask: torch.Tensor | None = None,
    spacing: Spacing = None,
) -> BinnedEndpointError:
    """EPE binned by the magnitude ``|target(p)|`` of the true displacement (both in voxels, or mm with ``spacing``).

    ``bins``: an int K gives K equal-width bins from 0 to the largest valid magnitude (so every valid voxel is
    counted), or increasing edges ``(e_0, ..., e_K)``. Bins are ``[e_k, e_{k+1})``, the last one closed; voxels
    outside ``[e_0, e_K]`` are not counted (use ``float("inf")`` as last edge to count everything).
    """
    epe = endpoint_error_map(pred, target, spacing)
    magnitude = torch.linalg.vector_norm(field_in_mm(target, spacing), dim=1, keepdim=True)
    valid = valid_voxels(epe, mask)
    epe, magnitude = epe[valid], magnitude[valid]
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be a positive number of bins or a sequence of edges, got {bins}")
        top = magnitude.max().item() if magnitude.numel() else 0.0
        edges = torch.linspace(0.0, top if top > 0 else 1.0, bins + 1, dtype=epe.dtype, device=epe.device)
    else:
        edges = torch.as_tensor(bins, dtype=epe.dtype, device=epe.device)
        if edges.ndim != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError(f"bins must be at least two strictly increasing edges, got {list(bins)}")
    num_bins = edges.numel() - 1
    index = torch.bucketize(magnitude, edges, right=True) - 1
    index[magnitude == edges[-1]] = num_bins - 1
    inside = (index >= 0) & (index < num_bins)
    count = torch.bincount(index[inside], minlength=num_bins)
    total = torch.bincount(index[inside], weights=epe[inside], minlength=num_bins).to(epe.dtype)
    return BinnedEndpointError(edges, total / count, count)


class EndPointErrorMetric(PerSampleMetric):
    """MONAI cumulative metric for the per-sample mean or median EPE (see :func:`endpoint_error`).

    Call with ``y_pred`` (predicted field) and ``y`` (true field), batch-first ``(B, N, *S)`` or lists of
    ``(N, *S)``, and optionally ``mask=`` ``(B, 1, *S)`` (batch-first input only). Each call buffers ``(B, 1)``
    per-sample values; ``aggregate()`` reduces them (default: mean over samples, see :class:`PerSampleMetric`).
    """

    def __init__(
        self,
        statistic: str = "mean",
        spacing: Spacing = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        if statistic not in ("mean", "median"):
            raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
        self.statistic = statistic
        self.spacing = spacing

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise TypeError("EndPointErrorMetric needs the true field as y (a tensor).")
        return endpoint_error(y_pred, y, mask, self.spacing, self.statistic)[:, None]
