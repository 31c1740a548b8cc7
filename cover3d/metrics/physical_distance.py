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
        return super()._compute_tensor(y_pred, y, **kwargs)
