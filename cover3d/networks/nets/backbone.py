"""3D U-Net backbone that returns its multi-scale decoder features: MONAI's ``BasicUNet`` without the final 1x1x1
convolution, so its weights load, every tensor of them, into ``monai.networks.nets.BasicUNet``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet

__all__ = ["UNetBackbone", "basic_unet_kwargs"]


def basic_unet_kwargs(
    channels: Sequence[int],
    in_channels: int = 1,
    norm_groups: int = 4,
    negative_slope: float = 0.2,
    upsample: str = "deconv",
    spatial_dims: int = 3,
) -> dict:
    """Arguments of ``monai.networks.nets.BasicUNet`` (all but ``out_channels``) whose layers are those of
    ``UNetBackbone(spatial_dims, in_channels, channels, norm_groups, negative_slope, upsample)``.

    JSON-serialisable (lists, no tuples): pretraining writes it into ``models/metadata.json``
    (``pretraining.basic_unet``), so ``BasicUNet(out_channels=n, **kwargs)`` rebuilds the pretrained network.
    """
    channels = [int(c) for c in channels]
    return {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "features": [*channels, channels[0]],
        "norm": ["group", {"num_groups": norm_groups}],
        "act": ["LeakyReLU", {"negative_slope": negative_slope, "inplace": True}],
        "bias": True,
        "upsample": upsample,
    }


class UNetBackbone(BasicUNet):
    """``monai.networks.nets.BasicUNet`` (GroupNorm, LeakyReLU) returning features at strides 16, 8, 4, 2, 1.

    The layers and state-dict names are exactly those of ``BasicUNet(**basic_unet_kwargs(channels, ...))``
    (``features = (*channels, channels[0])``) minus its ``final_conv``: pretrained backbone weights load completely
    into that MONAI network, whose ``final_conv`` is then the only new layer. COVER needs every decoder scale,
    so ``forward`` returns all of them instead of ``BasicUNet``'s logits.

    Args:
        spatial_dims: 3 for volumes (2 works too).
        in_channels: input channels.
        channels: encoder widths at strides 1, 2, 4, 8, 16 (the decoder mirrors them), each divisible by
            ``norm_groups``.
        norm_groups: number of GroupNorm groups, the same for every layer (as ``BasicUNet`` takes one norm).
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
        norm_groups: int = 4,
        negative_slope: float = 0.2,
        upsample: str = "deconv",
    ) -> None:
        if len(channels) != 5:
            raise ValueError(f"channels must list 5 widths (strides 1..16), got {tuple(channels)}")
        if any(int(c) % norm_groups for c in channels):
            raise ValueError(
                f"every width of channels={tuple(channels)} must be divisible by norm_groups={norm_groups}"
            )
        kwargs = basic_unet_kwargs(channels, in_channels, norm_groups, negative_slope, upsample, spatial_dims)
        super().__init__(out_channels=1, **kwargs)
        del self.final_conv  # the backbone ends at the decoder's full-resolution feature
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)
        self.norm_groups = norm_groups
        self.negative_slope = negative_slope
        self.upsample = upsample

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the returned features, coarse to fine."""
        return tuple(reversed(self.channels))

    def basic_unet_kwargs(self) -> dict:
        """``BasicUNet`` arguments (all but ``out_channels``) of the MONAI network these weights load into."""
        return basic_unet_kwargs(
            self.channels, self.in_channels, self.norm_groups, self.negative_slope, self.upsample, self.spatial_dims
        )

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
