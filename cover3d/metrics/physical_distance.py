"""Hausdorff distance in millimetres: MONAI's metric with the voxel spacing taken from each label's own affine."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.metrics import HausdorffDistanceMetric

__all__ = ["PhysicalHausdorffDistanceMetric"]


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """:class:`monai.metrics.HausdorffDistanceMetric` (same arguments) in world units of the images, e.g. mm.

    MONAI's metric takes ``spacing`` as a call argument, which MONAI's ignite handlers never pass (distances
    come out in voxels); this subclass reads it from ``y`` when ``y`` is a ``MetaTensor`` (its ``pixdim``, one
    sample at a time). Without a ``MetaTensor`` or an explicit ``spacing`` it raises rather than returning
    voxel distances. Inputs as in MONAI: one-hot ``(B, C, *S)``; output ``(B, C)`` (``C - 1`` without background).

    Where a class is empty in exactly one of prediction and label (a missed or a hallucinated structure), MONAI gives
    NaN, which its mean then skips (and reports as 0 when every case is NaN), so a model that predicts nothing would
    look perfect. Here such a case scores the diagonal of the image extent (the largest possible distance), and a
    class empty in both scores 0.
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        if kwargs.get("spacing") is None:
            if not isinstance(y, MetaTensor):
                raise ValueError("PhysicalHausdorffDistanceMetric needs y as a MetaTensor (with an affine) or spacing=")
            pixdim = y.pixdim
            per_sample = pixdim if y.is_batch else [pixdim] * y.shape[0]
            kwargs["spacing"] = [[float(s) for s in spacing] for spacing in per_sample]
        distance = super()._compute_tensor(y_pred, y, **kwargs)
        if not self.include_background:
            y_pred, y = y_pred[:, 1:], y[:, 1:]
        spatial = tuple(range(2, y.ndim))
        pred_empty, label_empty = (torch.as_tensor(v).sum(dim=spatial) == 0 for v in (y_pred, y))
        spacing = torch.as_tensor(kwargs["spacing"], dtype=torch.float32, device=distance.device).reshape(-1, len(spatial))
        extent = torch.as_tensor(y.shape[2:], dtype=torch.float32, device=distance.device) * spacing
        diagonal = extent.norm(dim=1, keepdim=True).expand_as(distance)
        distance = torch.where((pred_empty ^ label_empty).to(distance.device), diagonal.to(distance.dtype), distance)
        return torch.where((pred_empty & label_empty).to(distance.device), torch.zeros_like(distance), distance)
