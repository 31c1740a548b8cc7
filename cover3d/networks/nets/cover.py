"""COVER network: siamese U-Net backbone + 3D vector pyramid predicting the displacement between two views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from cover3d.networks.blocks.pyramid import VectorPyramid
from cover3d.networks.nets.backbone import UNetBackbone

__all__ = ["CoverNet"]


class CoverNet(nn.Module):
    """Shared-weight backbone on both views, vector pyramid on their features.

    Args:
        in_channels: channels of one view.
        channels: backbone widths at strides 1..16 (see :class:`UNetBackbone`).
        radii: VEU radius per pyramid level, coarse (stride 16) to fine (stride 1).
        groups: MVI groups per level, coarse to fine.
        channels_per_group: projected channels per group.
        channels_per_norm_group: backbone GroupNorm group size (see :class:`UNetBackbone`).
        veu_impl: ``"streaming"`` (default; never stores the local cost volume), ``"fused"`` (compiled
            flex_attention; trains on CUDA only) or ``"reference"`` VEU (see :class:`VectorEmbeddingUnit`).
        checkpoint_levels: recompute pyramid levels in the backward pass instead of storing their activations; one
            bool for all levels or one per level, coarse to fine (see :class:`VectorPyramid`).
        checkpoint_backbone: run the backbone once per view under ``torch.utils.checkpoint`` (non-reentrant): only
            the returned features are stored and each view's activations are recomputed in the backward pass, so
            the two views' activations are never held together (one more backbone forward per view). Measured at
            96^3 (widths 32-512, CPU): extra peak memory 0.65x of the plain step for 1.29x its CPU time
            (``benchmarks/pretraining_step.py``).
        projection_gain: initial scale of the pyramid projections' GroupNorm (see :class:`VectorPyramid`).
        backbone: another backbone module to use instead of the ``UNetBackbone`` built from ``channels`` and
            ``channels_per_norm_group`` (which are then unused), e.g. :class:`NnUNetBackbone`. It takes
            ``(B, in_channels, D, H, W)`` and returns one feature per pyramid level, coarse to fine, levels x2 apart,
            with ``feature_channels`` (channels per level, coarse to fine).

    ``forward(x)`` takes ``x`` ``(B, 2 * in_channels, D, H, W)``: view a's channels then view b's (sizes divisible
    by 16). In eval mode it returns the predicted field ``(B, 3, D, H, W)`` in voxels (``x_b ~ warp(x_a, field)``).
    In training mode it returns a dict (like MONAI's DynUNet, whose output also depends on the mode):
    ``ddf`` (that field), ``level_ddfs`` (per level, coarse to fine, voxels of each level), ``features_a`` and
    ``features_b`` (backbone features, coarse to fine).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        radii: Sequence[int] = (2, 2, 2, 1, 1),
        groups: Sequence[int] = (4, 4, 4, 1, 1),
        channels_per_group: int = 8,
        channels_per_norm_group: int = 8,
        veu_impl: str = "streaming",
        checkpoint_levels: bool | Sequence[bool] = False,
        checkpoint_backbone: bool = False,
        projection_gain: float = 3.0,
        backbone: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.checkpoint_backbone = checkpoint_backbone
        self.backbone = backbone if backbone is not None else UNetBackbone(3, in_channels, channels, channels_per_norm_group)
        self.pyramid = VectorPyramid(
            self.backbone.feature_channels, radii, groups, channels_per_group, veu_impl, checkpoint_levels,
            projection_gain,
        )

    @property
    def reach(self) -> int:
        """Largest representable displacement per axis, in full-resolution voxels."""
        return self.pyramid.reach

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict:
        if x.ndim != 5 or x.shape[1] != 2 * self.in_channels:
            raise ValueError(f"CoverNet expects (B, {2 * self.in_channels}, D, H, W) = [view a, view b], got {tuple(x.shape)}")
        view_a, view_b = x.split(self.in_channels, dim=1)
        with record_function("cover3d.backbone"):  # a torch.profiler range (benchmarks/gpu_check.py); ~1 us otherwise
            if self.checkpoint_backbone and torch.is_grad_enabled():
                features_a = checkpoint(self.backbone, view_a, use_reentrant=False)
                features_b = checkpoint(self.backbone, view_b, use_reentrant=False)
            else:
                features = self.backbone(torch.cat([view_a, view_b], dim=0))  # one siamese pass over both views
                features_a = [f[: x.shape[0]] for f in features]
                features_b = [f[x.shape[0] :] for f in features]
        level_ddfs = self.pyramid(features_a, features_b)
        if not self.training:
            return level_ddfs[-1]
        return {"ddf": level_ddfs[-1], "level_ddfs": level_ddfs, "features_a": features_a, "features_b": features_b}
