"""COVER backbone built from nnU-Net's own network classes (``dynamic_network_architectures``), so the pretrained
weights load, under nnU-Net's key names, into the network ``nnUNetv2_train`` builds from a plans file.

``dynamic_network_architectures`` comes with the optional extra ``[nnunet]`` (``pip install "cover3d[nnunet]"``) and
is imported only when a backbone is built.
"""

from __future__ import annotations

import importlib
import pydoc
from collections.abc import Sequence

import torch
from torch import nn

from cover3d.errors import InputValueError

__all__ = ["NnUNetBackbone", "nnunet_arch_kwargs"]

ARCHITECTURES = {
    "PlainConvUNet": ("dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"),
    "ResidualEncoderUNet": ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", "n_blocks_per_stage"),
}
NORMS = {
    "instance": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "batch": "torch.nn.modules.batchnorm.BatchNorm3d",
}
# arch_kwargs entries that nnU-Net's plans hold as dotted names (its get_network_from_plans resolves them)
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _per_axis(value: int | Sequence[int], name: str, stage: int) -> list[int]:
    """``value`` as one entry per spatial axis (3)."""
    values = [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]
    if len(values) != 3:
        raise InputValueError(f"{name}[{stage}] must be an int or 3 ints (one per axis), got {value}")
    return values


def nnunet_arch_kwargs(
    architecture: str = "PlainConvUNet",
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
    strides: Sequence[int | Sequence[int]] = (1, 2, 2, 2, 2),
    blocks_per_stage: int | Sequence[int] = 2,
    decoder_blocks_per_stage: int | Sequence[int] = 2,
    norm: str = "instance",
    negative_slope: float = 0.01,
) -> tuple[str, dict]:
    """``(arch_class_name, arch_kwargs)`` exactly as a configuration of an nnU-Net v2 plans file holds them (JSON;
    ``conv_op``/``norm_op``/``nonlin`` as dotted names, see :data:`REQUIRES_IMPORT`).

    Args:
        architecture: ``"PlainConvUNet"`` or ``"ResidualEncoderUNet"`` (nnU-Net's ResEnc presets).
        channels: widths of the stages at strides 1, 2, 4, ... (one stage per pyramid level).
        kernel_sizes: one int for all, or one entry (int or 3 ints) per stage.
        strides: per stage, 1 for the first and 2 for every other one on every axis: the vector pyramid needs its
            levels exactly x2 apart.
        blocks_per_stage: convolutions (PlainConvUNet) or residual blocks (ResidualEncoderUNet) per encoder stage.
        decoder_blocks_per_stage: convolutions per decoder stage.
        norm: ``"instance"`` (nnU-Net's default, affine) or ``"batch"``.
        negative_slope: LeakyReLU slope (nnU-Net's default 0.01).
    """
    if architecture not in ARCHITECTURES:
        raise InputValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    if norm not in NORMS:
        raise InputValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    n_stages = len(channels)
    if n_stages < 2:
        raise InputValueError(f"channels must list at least 2 stage widths, got {list(channels)}")
    kernel_list = [kernel_sizes] * n_stages if isinstance(kernel_sizes, int) else list(kernel_sizes)
    for name, values in (("kernel_sizes", kernel_list), ("strides", list(strides))):
        if len(values) != n_stages:
            raise InputValueError(f"{name} needs one entry per stage ({n_stages}, as channels), got {values}")
    stride_list = [_per_axis(s, "strides", i) for i, s in enumerate(strides)]
    for stage, stride in enumerate(stride_list):
        if stride != [1 if stage == 0 else 2] * 3:
            raise InputValueError(f"strides[{stage}] = {stride}: the vector pyramid needs stride 1 at stage 0 and 2 on "
                                  "every axis at the other stages (levels x2 apart)")
    class_name, blocks_key = ARCHITECTURES[architecture]
    blocks = [blocks_per_stage] * n_stages if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
    decoder = (
        [decoder_blocks_per_stage] * (n_stages - 1)
        if isinstance(decoder_blocks_per_stage, int)
        else list(decoder_blocks_per_stage)
    )
    kwargs = {
        "n_stages": n_stages,
        "features_per_stage": [int(c) for c in channels],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [_per_axis(k, "kernel_sizes", i) for i, k in enumerate(kernel_list)],
        "strides": stride_list,
        blocks_key: [int(b) for b in blocks],
        "n_conv_per_stage_decoder": [int(b) for b in decoder],
        "conv_bias": True,
        "norm_op": NORMS[norm],
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"negative_slope": float(negative_slope), "inplace": True},
    }
    return class_name, kwargs


def build_nnunet_network(arch_class_name: str, arch_kwargs: dict, in_channels: int, num_classes: int) -> nn.Module:
    """The network nnU-Net's ``get_network_from_plans`` builds (same class lookup, import of the dotted names and
    He initialisation), without needing nnunetv2 itself. Raises a one-line error naming the ``[nnunet]`` extra when
    ``dynamic_network_architectures`` is missing."""
    try:
        importlib.import_module("dynamic_network_architectures")
    except ImportError:
        raise InputValueError(
            "the nnU-Net backbone needs dynamic_network_architectures: pip install \"cover3d[nnunet]\""
        ) from None
    network_class = pydoc.locate(arch_class_name)
    if network_class is None:
        raise InputValueError(f"arch_class_name {arch_class_name!r} is not a class of dynamic_network_architectures")
    kwargs = dict(arch_kwargs)
    for key in REQUIRES_IMPORT:
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    network = network_class(input_channels=in_channels, num_classes=num_classes, **kwargs)
    network.apply(network.initialize)
    return network


class NnUNetBackbone(nn.Module):
    """nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet`` returning its features at strides 2^(n-1) .. 1.

    ``encoder`` and ``decoder`` are the modules of the network nnU-Net builds from ``(arch_class_name,
    arch_kwargs)`` (see :func:`nnunet_arch_kwargs`), so the state-dict names are nnU-Net's own (``encoder.stages...``,
    ``decoder.stages...``, ``decoder.transpconvs...``, and ``decoder.encoder...``, nnU-Net's alias of the encoder).
    The decoder's segmentation layers (``decoder.seg_layers``) are removed: nnU-Net never loads them from pretrained
    weights, and unused parameters would stall DDP.

    ``forward`` runs the encoder (skips at every stride) and then the decoder's own transposed convolutions and
    stages in nnU-Net's order (``UNetDecoder.forward`` without its segmentation outputs), returning the bottleneck
    and every decoder stage's output.

    Input ``(B, in_channels, *S)`` with every ``S`` divisible by 2^(n_stages-1). Output: list of n_stages tensors,
    coarse to fine, ``[(B, c_{n-1}, S/2^(n-1)), ..., (B, c_1, S/2), (B, c_0, S)]``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        architecture: str = "PlainConvUNet",
        channels: Sequence[int] = (8, 16, 32, 64, 128),
        kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        strides: Sequence[int | Sequence[int]] = (1, 2, 2, 2, 2),
        blocks_per_stage: int | Sequence[int] = 2,
        decoder_blocks_per_stage: int | Sequence[int] = 2,
        norm: str = "instance",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.arch_class_name, self.arch_kwargs = nnunet_arch_kwargs(
            architecture, channels, kernel_sizes, strides, blocks_per_stage, decoder_blocks_per_stage, norm,
            negative_slope,
        )
        network = build_nnunet_network(self.arch_class_name, self.arch_kwargs, in_channels, num_classes=1)
        del network.decoder.seg_layers
        self.encoder = network.encoder
        self.decoder = network.decoder
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the returned features, coarse to fine."""
        return tuple(reversed(self.channels))

    def nnunet_architecture(self) -> dict:
        """The plans-file entries of this network: ``{"network_class_name": ..., "arch_kwargs": ...,
        "_kw_requires_import": [...]}`` (JSON), as a configuration's ``architecture`` holds them."""
        return {
            "network_class_name": self.arch_class_name,
            "arch_kwargs": self.arch_kwargs,
            "_kw_requires_import": list(REQUIRES_IMPORT),
        }

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        divisor = 2 ** (len(self.channels) - 1)
        if any(s % divisor for s in x.shape[2:]):
            raise ValueError(f"NnUNetBackbone needs spatial sizes divisible by {divisor}, got {tuple(x.shape[2:])}")
        skips = self.encoder(x)
        features = [skips[-1]]
        for stage, (upsample, convs) in enumerate(zip(self.decoder.transpconvs, self.decoder.stages)):
            features.append(convs(torch.cat((upsample(features[-1]), skips[-(stage + 2)]), dim=1)))
        return features
