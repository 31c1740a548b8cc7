"""Segmentation network on the cover3d backbone: the pretrained U-Net (encoder and decoder) plus a 1x1x1 head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from cover3d.networks.nets.backbone import UNetBackbone

__all__ = ["CoverSegNet"]


class CoverSegNet(nn.Module):
    """``UNetBackbone`` + 1x1x1 convolution on its full-resolution feature -> class logits.

    The whole pretrained U-Net is reused (``.backbone``, same state-dict names as in ``CoverNet``); only
    ``.head`` is new. With ``freeze_backbone=True`` the backbone's parameters get ``requires_grad=False`` and its
    forward runs without autograd, so training updates the head alone (a voxel-wise linear probe).

    Args:
        in_channels: image channels.
        out_channels: number of classes (background included).
        channels: backbone widths at strides 1, 2, 4, 8, 16 (must equal the pretrained ones to reuse weights).
        channels_per_group: backbone GroupNorm group size (see :class:`UNetBackbone`).
        negative_slope: backbone LeakyReLU slope.
        upsample: backbone upsampling mode (``"deconv"`` or ``"nontrainable"``).
        freeze_backbone: train the head only.
        spatial_dims: 3 for volumes.

    ``forward(x)``: ``x`` ``(B, in_channels, *S)`` with every ``S`` divisible by 16 -> logits ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        channels_per_group: int = 8,
        negative_slope: float = 0.2,
        upsample: str = "deconv",
        freeze_backbone: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = UNetBackbone(spatial_dims, in_channels, channels, channels_per_group, negative_slope, upsample)
        self.head = Conv[Conv.CONV, spatial_dims](self.backbone.channels[0], out_channels, kernel_size=1)
        self.freeze_backbone = freeze_backbone
        self.backbone.requires_grad_(not freeze_backbone)

    def parameter_groups(self, learning_rate: float, backbone_lr_scale: float = 1.0) -> list[dict]:
        """Optimizer parameter groups: the trainable backbone parameters at ``learning_rate * backbone_lr_scale``
        (none when frozen), the head at ``learning_rate``; a LambdaLR schedule scales both alike."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": backbone, "lr": learning_rate * backbone_lr_scale}] if backbone else []
        return groups + [{"params": list(self.head.parameters()), "lr": learning_rate}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            features = self.backbone(x)[-1]
        return self.head(features)
