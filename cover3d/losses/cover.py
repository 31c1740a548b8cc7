"""COVER losses: vector regression (L_vec), feature consistency (L_con) and their weighted sum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiffusionLoss
from torch import nn
from torch.profiler import record_function

from cover3d.fields import downsample_field, warp

__all__ = ["masked_mean", "VectorLoss", "ContrastiveLoss", "CoverLoss", "downsample_mask", "spatially_centred"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, 1, *S)`` over voxels where ``mask`` ``(B, 1, *S)`` is 1 (0 when nothing is valid)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A coarse voxel is valid only when all ``factor^3`` fine voxels it covers are valid."""
    if factor == 1:
        return mask
    return (F.avg_pool3d(mask.float(), factor, factor) > 0.999).to(mask.dtype)


class VectorLoss(nn.Module):
    """``L_vec``: masked mean over valid voxels of ``||psi_true - psi_pred||_1`` (voxels).

    ``forward(pred (B,3,*S), target (B,3,*S), mask (B,1,*S)) -> scalar``.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean((pred.float() - target.float()).abs().sum(1, keepdim=True), mask)


def spatially_centred(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``features`` ``(B, C, *S)`` minus their per-sample, per-channel mean over the voxels where ``mask`` is 1."""
    weights = mask.to(features.dtype)
    mean = (features * weights).sum(dim=(2, 3, 4), keepdim=True) / weights.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1.0)
    return features - mean


class ContrastiveLoss(nn.Module):
    """``L_con``: masked mean of ``1 - cos(f_b(p), warp(f_a, psi_true)(p))`` on full-resolution features.

    Args:
        centred: compare the features after removing each view's mean over the valid voxels
            (:func:`spatially_centred`), so a direction shared by all voxels earns nothing: a collapse guard.

    ``forward(features_a (B,C,*S), features_b (B,C,*S), ddf (B,3,*S) voxels, mask (B,1,*S)) -> scalar``.
    """

    def __init__(self, centred: bool = False) -> None:
        super().__init__()
        self.centred = centred

    def forward(
        self, features_a: torch.Tensor, features_b: torch.Tensor, ddf: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        with record_function("cover3d.loss.warp"):  # a torch.profiler range (benchmarks/gpu_check.py)
            aligned, features_b = warp(features_a.float(), ddf), features_b.float()
        if self.centred:
            aligned, features_b = spatially_centred(aligned, mask), spatially_centred(features_b, mask)
        cos = F.cosine_similarity(features_b, aligned, dim=1, eps=1e-6).unsqueeze(1)
        return masked_mean(1.0 - cos, mask)


class CoverLoss(nn.Module):
    """``L = vec_weight * L_vec + con_weight * L_con [+ per-level L_vec] [+ smoothness]``.

    Args:
        vec_weight: weight of ``L_vec`` on the full-resolution field.
        con_weight: weight of ``L_con`` on the finest backbone features.
        level_weights: optional weights of ``L_vec`` on the coarser pyramid levels, coarse to fine, excluding the
            full-resolution level (e.g. ``(0.1, 0.1, 0.2, 0.5)``); the true field is average-pooled to each level
            and divided by its stride, and a coarse voxel counts only when all voxels it covers are valid.
        smooth_weight: weight of MONAI ``DiffusionLoss`` (gradient smoothness) on the predicted field.
        con_centred: ``L_con`` on spatially centred features (see :class:`ContrastiveLoss`).

    ``forward(output, ddf, mask)`` takes :class:`~cover3d.networks.nets.CoverNet`'s training output dict, the true
    field ``(B,3,*S)`` (voxels) and the validity mask ``(B,1,*S)``; it returns a dict of scalars: ``loss`` (the
    total to back-propagate), ``loss_vec``, ``loss_con`` and, when used, ``loss_levels`` and ``loss_smooth``.
    """

    batch_keys = ("ddf", "mask")  # the batch entries CoverTrainer passes to forward

    def __init__(
        self,
        vec_weight: float = 1.0,
        con_weight: float = 1.0,
        level_weights: Sequence[float] | None = None,
        smooth_weight: float = 0.0,
        con_centred: bool = False,
    ) -> None:
        super().__init__()
        self.vec_weight = vec_weight
        self.con_weight = con_weight
        self.level_weights = tuple(level_weights) if level_weights else ()
        self.smooth_weight = smooth_weight
        self.vector_loss = VectorLoss()
        self.contrastive_loss = ContrastiveLoss(centred=con_centred)
        self.smooth_loss = DiffusionLoss()

    def forward(self, output: dict, ddf: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {
            "loss_vec": self.vector_loss(output["ddf"], ddf, mask),
            "loss_con": self.contrastive_loss(output["features_a"][-1], output["features_b"][-1], ddf, mask),
        }
        total = self.vec_weight * terms["loss_vec"] + self.con_weight * terms["loss_con"]
        if self.level_weights:
            coarse = output["level_ddfs"][:-1]
            if len(self.level_weights) != len(coarse):
                raise ValueError(f"level_weights needs {len(coarse)} entries (coarse levels), got {len(self.level_weights)}")
            level_loss = ddf.new_zeros(())
            for weight, pred in zip(self.level_weights, coarse):
                factor = ddf.shape[-1] // pred.shape[-1]
                level_loss = level_loss + weight * self.vector_loss(
                    pred, downsample_field(ddf, factor), downsample_mask(mask, factor)
                )
            terms["loss_levels"] = level_loss
            total = total + level_loss
        if self.smooth_weight:
            terms["loss_smooth"] = self.smooth_loss(output["ddf"].float())
            total = total + self.smooth_weight * terms["loss_smooth"]
        terms["loss"] = total
        return terms
