"""Does a downstream network, and its preprocessing, match how pretrained weights were made?

Compares against the ``pretraining`` / ``preprocessing`` blocks of the pretraining bundle's ``models/metadata.json``
(see :func:`cover3d.networks.pretraining_metadata`). A state dict cannot tell GroupNorm from InstanceNorm (both
store one weight and bias per channel), nor the spacing the weights were trained at: only the metadata can.
Each function returns one sentence per difference (empty when everything matches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

__all__ = ["backbone_widths", "layout_differences", "preprocessing_differences"]

# normalisation layer types a U-Net may use (their per-channel affine parameters all load into each other)
NORM_TYPES = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


def backbone_widths(state: Mapping, prefix: str = "") -> list[int] | None:
    """Encoder widths at strides 1..16 of a ``BasicUNet``-layout state dict (``UNetBackbone``, ``BasicUNet``) whose
    U-Net keys start with ``prefix``; None when the keys are not of that layout."""
    keys = [f"{prefix}conv_0.conv_0.conv.weight"] + [f"{prefix}down_{i}.convs.conv_0.conv.weight" for i in range(1, 5)]
    if not all(k in state for k in keys):
        return None
    return [int(state[k].shape[0]) for k in keys]


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.GroupNorm):
        return f"GroupNorm({module.num_groups} groups)"
    return type(module).__name__


def layout_differences(
    modules: Sequence[tuple[str, nn.Module]], widths: list[int] | None, pretraining: Mapping
) -> list[str]:
    """Differences between a backbone's layers and the pretrained ``BasicUNet`` arguments
    (``pretraining["basic_unet"]`` and ``["norm_channels_per_group"]``, written by pretraining): widths,
    normalisation type and groups per layer, LeakyReLU slope.

    Args:
        modules: ``(name, module)`` of the target backbone (``named_modules()`` of the U-Net part).
        widths: the target's encoder widths (:func:`backbone_widths`), None when unknown.
        pretraining: the metadata's ``pretraining`` block.
    """
    layout = pretraining.get("basic_unet")
    if not isinstance(layout, Mapping):
        recorded = pretraining.get("norm", "not recorded")
        return [f"the pretraining metadata records no 'basic_unet' layout (weights made before cover3d's backbone "
                f"became MONAI's BasicUNet; norm: {recorded}): normalisation and activation cannot be checked, "
                "re-run the pretraining to get weights that load completely into BasicUNet"]
    problems = []
    pretrained_widths = list(layout.get("features", []))[:5]
    if widths is not None and pretrained_widths and list(widths) != pretrained_widths:
        problems.append(f"backbone widths differ: {pretrained_widths} pretrained vs {list(widths)} in this network "
                        f"(BasicUNet features={list(layout['features'])})")
    norm_name = layout["norm"][0]
    norms = [m for _, m in modules if isinstance(m, NORM_TYPES)]
    if norm_name == "group":
        per_group = int(pretraining.get("norm_channels_per_group", 8))
        wrong = sorted({_describe(m) for m in norms
                        if not isinstance(m, nn.GroupNorm) or m.num_groups != max(1, m.num_channels // per_group)})
        if wrong:
            problems.append(
                f"normalisation differs: the weights were trained with GroupNorm of {per_group} channels per group in "
                f"every layer, this network uses {', '.join(wrong)}; its features will not be the pretrained ones. "
                f"Build it with norm=('group', {{'num_groups': 1}}), then cover3d.networks.group_norm_per_width(net, {per_group})"
            )
    slope = dict(layout["act"][1]).get("negative_slope") if len(layout.get("act", [])) > 1 else None
    slopes = sorted({m.negative_slope for _, m in modules if isinstance(m, nn.LeakyReLU)})
    if slope is not None and slopes and slopes != [slope]:
        problems.append(f"activation differs: LeakyReLU(negative_slope={slope}) pretrained, this network uses "
                        f"negative_slope={slopes}; build it with act=('LeakyReLU', {{'negative_slope': {slope}}})")
    return problems


def _preset_name(preset: str) -> str:
    return str(preset).rsplit(".", 1)[-1]


def _same(a, b) -> bool:
    try:
        return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))
    except (TypeError, ValueError):
        return a == b


def preprocessing_differences(pretrained: Mapping, downstream: Mapping) -> list[str]:
    """Differences between the pretraining's ``preprocessing`` block and the downstream one, key by key.

    Both hold (any of) ``spacing_mm`` (3 floats), ``preset`` (e.g. ``"cover3d.transforms.ct_preprocessing"``: the
    modality) and ``preset_args`` (e.g. ``{"hu_window": [-1000, 1000]}``, compared for the arguments both give);
    keys that only one side gives are not compared.
    """
    problems = []
    if "spacing_mm" in pretrained and "spacing_mm" in downstream:
        if not _same(pretrained["spacing_mm"], downstream["spacing_mm"]):
            problems.append(f"voxel spacing differs: {list(pretrained['spacing_mm'])} mm pretrained vs "
                            f"{list(downstream['spacing_mm'])} mm downstream")
    if "preset" in pretrained and "preset" in downstream:
        if _preset_name(pretrained["preset"]) != _preset_name(downstream["preset"]):
            problems.append(f"intensity preset (modality) differs: {_preset_name(pretrained['preset'])} pretrained "
                            f"vs {_preset_name(downstream['preset'])} downstream")
    mine, theirs = dict(downstream.get("preset_args") or {}), dict(pretrained.get("preset_args") or {})
    for key in sorted(set(mine) & set(theirs) - {"pixdim"}):
        if not _same(theirs[key], mine[key]):
            problems.append(f"preprocessing argument {key} differs: {theirs[key]} pretrained vs {mine[key]} downstream")
    return problems
