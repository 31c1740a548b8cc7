"""Overlap of label maps after warping by a field: nearest-neighbour label warping and per-class Dice.

Dice itself is MONAI's :func:`monai.metrics.compute_dice`; for use in a MONAI evaluator, feed
``one_hot(warp_labels(labels_a, ddf))`` and ``one_hot(labels_b)`` to :class:`monai.metrics.DiceMetric`.
"""

from __future__ import annotations

import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from cover3d.fields import warp
from cover3d.metrics.masked_reduction import valid_voxels

__all__ = ["warp_labels", "warped_label_dice"]


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map ``(B, 1, *S)`` by ``ddf`` ``(B, N, *S)`` (voxels) with nearest-neighbour sampling.

    ``out(p) = labels(round(p + ddf(p)))``; voxels sampled outside the volume get label 0 (background).
    Returns a tensor of ``labels``' dtype.
    """
    if labels.ndim != ddf.ndim or labels.shape[1] != 1:
        raise ValueError(
            f"labels must have shape (B, 1, *spatial) matching ddf {tuple(ddf.shape)}, got {tuple(labels.shape)}"
        )
    # float32 holds integer labels exactly (< 2**24); nearest sampling never mixes values.
    warped = warp(labels.to(torch.float32), ddf.to(torch.float32), mode="nearest", padding_mode="zeros")
    return warped.round().to(labels.dtype)


def warped_label_dice(
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    ddf: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class Dice between ``labels_b`` and ``warp_labels(labels_a, ddf)`` (so ``ddf`` maps view a onto view b).

    Label maps ``(B, 1, *S)`` with integer classes ``0 .. num_classes - 1`` (0 = background). Only voxels with
    ``mask > 0.5`` count when ``mask`` ``(B, 1, *S)`` is given. Returns ``(B, num_classes)``, or
    ``(B, num_classes - 1)`` without background; NaN where a class is absent from ``labels_b`` (MONAI's
    ``ignore_empty``), so averaging with ``nanmean`` skips it.
    """
    if labels_a.shape != labels_b.shape:
        raise ValueError(
            f"labels_a and labels_b must have the same shape, got {tuple(labels_a.shape)} and {tuple(labels_b.shape)}"
        )
    for name, labels in (("labels_a", labels_a), ("labels_b", labels_b)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{name} must hold integer classes in [0, {num_classes - 1}], got values in "
                f"[{labels.min().item()}, {labels.max().item()}]"
            )
    warped = warp_labels(labels_a, ddf)
    valid = valid_voxels(warped, mask).to(torch.float32)
    pred = one_hot(warped.long(), num_classes) * valid
    target = one_hot(labels_b.long(), num_classes) * valid
    return compute_dice(pred, target, include_background=include_background, ignore_empty=True)
