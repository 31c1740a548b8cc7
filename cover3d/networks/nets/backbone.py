"""3D U-Net backbone that returns its multi-scale decoder features (the part users take downstream)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

__all__ = ["UNetBackbone"]


class UNetBackbone(nn.Module):
    """U-Net built from MONAI ``BasicUNet`` blocks, returning features at strides 16, 8, 4, 2, 1.

    Written on MONAI's blocks rather than ``BasicUNet`` itself because COVER needs every decoder scale and
    GroupNorm with a fixed number of channels per group (``BasicUNet`` takes one norm for all widths).

    Args:
        spatial_dims: 3 for volumes (2 works too).
        in_channels: input channels.
        channels: encoder widths at strides 1, 2, 4, 8, 16 (the decoder mirrors them).
        channels_per_group: GroupNorm group size; groups = max(1, width // channels_per_group).
        negative_slope: LeakyReLU slope.
        upsample: ``UpCat`` upsampling mode (``"deconv"`` or ``"nontrainable"``).

    Input ``(B, in_channels, *S)`` with every ``S`` divisible by 16. Output: list of 5 tensors, coarse to fine,
    ``[(B, c4, S/16), (B, c3, S/8), (B, c2, S/4), (B, c1, S/2), (B, c0, S)]``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        channels_per_group: int = 8,
        negative_slope: float = 0.2,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels must list 5 widths (strides 1..16), got {tuple(channels)}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)
        act = ("LeakyReLU", {"negative_slope": negative_slope, "inplace": True})

        def norm(width: int) -> tuple:
            return ("group", {"num_groups": max(1, width // channels_per_group)})

        c0, c1, c2, c3, c4 = self.channels
        self.conv_0 = TwoConv(spatial_dims, in_channels, c0, act, norm(c0), bias=True)
        self.down_1 = Down(spatial_dims, c0, c1, act, norm(c1), bias=True)
        self.down_2 = Down(spatial_dims, c1, c2, act, norm(c2), bias=True)
        self.down_3 = Down(spatial_dims, c2, c3, act, norm(c3), bias=True)
        self.down_4 = Down(spatial_dims, c3, c4, act, norm(c4), bias=True)
        self.upcat_4 = UpCat(spatial_dims, c4, c3, c3, act, norm(c3), bias=True, upsample=upsample)
        self.upcat_3 = UpCat(spatial_dims, c3, c2, c2, act, norm(c2), bias=True, upsample=upsample)
        self.upcat_2 = UpCat(spatial_dims, c2, c1, c1, act, norm(c1), bias=True, upsample=upsample)
        self.upcat_1 = UpCat(spatial_dims, c1, c0, c0, act, norm(c0), bias=True, upsample=upsample)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the returned features, coarse to fine."""
        return tuple(reversed(self.channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"UNetBackbone needs spatial sizes divisible by 16, got {tuple(x.shape[2:])}")
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u3 = self.upcat_4(x4, x3)
        u2 = self.upcat_3(u3, x2)
        u1 = self.upcat_2(u2, x1)
        u0 = self.upcat_1(u1, x0)
        return [x4, u3, u2, u1, u0]
