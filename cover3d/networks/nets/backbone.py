"""3D U-Net backbone that returns its multi-scale decoder features: MONAI's ``BasicUNet`` without the final 1x1x1
convolution, so its weights load, every tensor of them, into ``monai.networks.nets.BasicUNet``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

__all__ = ["UNetBackbone", "basic_unet_kwargs", "group_norm_per_width"]


def basic_unet_kwargs(
    channels: Sequence[int],
    in_channels: int = 1,
    negative_slope: float = 0.2,
    upsample: str = "deconv",
    spatial_dims: int = 3,
) -> dict:
    """Arguments of ``monai.networks.nets.BasicUNet`` (all but ``out_channels``) with the layers and state-dict names
    of ``UNetBackbone(spatial_dims, in_channels, channels, negative_slope=..., upsample=...)``. ``BasicUNet`` takes
    one normalisation for every layer, so these ask for GroupNorm with 1 group; :func:`group_norm_per_width` then
    gives each layer the backbone's group count (8 channels per group), after which the two compute the same features.

    JSON-serialisable (lists, no tuples): pretraining writes it into ``models/metadata.json``
    (``pretraining.basic_unet``, with ``pretraining.norm_channels_per_group``).
    """
    channels = [int(c) for c in channels]
    return {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "features": [*channels, channels[0]],
        "norm": ["group", {"num_groups": 1}],
        "act": ["LeakyReLU", {"negative_slope": negative_slope, "inplace": True}],
        "bias": True,
        "upsample": upsample,
    }


def group_norm_per_width(network: nn.Module, channels_per_group: int = 8) -> nn.Module:
    """Give every ``GroupNorm`` of ``network`` ``max(1, channels // channels_per_group)`` groups (the published COVER
    setting: 8 channels per group), in place; returns ``network``. Turns a ``BasicUNet`` built from
    :func:`basic_unet_kwargs` into the pretrained backbone's normalisation. Raises when a width is not divisible by
    its group count."""
    for name, module in network.named_modules():
        if isinstance(module, nn.GroupNorm):
            groups = max(1, module.num_channels // channels_per_group)
            if module.num_channels % groups:
                raise ValueError(f"{name}: {module.num_channels} channels cannot form {groups} GroupNorm groups of "
                                 f"{channels_per_group}; use widths that are multiples of {channels_per_group}")
            module.num_groups = groups
    return network


class UNetBackbone(BasicUNet):
    """``monai.networks.nets.BasicUNet`` (GroupNorm, LeakyReLU) returning features at strides 16, 8, 4, 2, 1.

    The layers and state-dict names are exactly those of ``BasicUNet(**basic_unet_kwargs(channels, ...))``
    (``features = (*channels, channels[0])``) minus its ``final_conv``: pretrained backbone weights load completely
    into that MONAI network, whose ``final_conv`` is then the only new layer, and after
    :func:`group_norm_per_width` it computes the same features. COVER needs every decoder scale, so ``forward``
    returns all of them instead of ``BasicUNet``'s logits.

    Args:
        spatial_dims: 3 for volumes (2 works too).
        in_channels: input channels.
        channels: encoder widths at strides 1, 2, 4, 8, 16 (the decoder mirrors them).
        channels_per_group: GroupNorm group size; groups = max(1, width // channels_per_group) per layer (8, as
            published; a single group count for all widths measurably slowed learning: docs/bundles.md "Using the
            pretrained weights downstream").
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
        if len(channels) != 5:
            raise ValueError(f"channels must list 5 widths (strides 1..16), got {tuple(channels)}")
        kwargs = basic_unet_kwargs(channels, in_channels, negative_slope, upsample, spatial_dims)
        super().__init__(out_channels=1, **kwargs)
        del self.final_conv  # the backbone ends at the decoder's full-resolution feature
        group_norm_per_width(self, channels_per_group)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)
        self.channels_per_group = channels_per_group
        self.negative_slope = negative_slope
        self.upsample = upsample

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the returned features, coarse to fine."""
        return tuple(reversed(self.channels))

    def basic_unet_kwargs(self) -> dict:
        """``BasicUNet`` arguments (all but ``out_channels``) of the MONAI network these weights load into."""
        return basic_unet_kwargs(
            self.channels, self.in_channels, self.negative_slope, self.upsample, self.spatial_dims
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
