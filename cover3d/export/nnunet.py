"""Export cover3d weights pretrained with :class:`~cover3d.networks.NnUNetBackbone` for nnU-Net v2 fine-tuning.

Writes what ``nnUNetv2_train DATASET CONFIGURATION FOLD -p PLANS -pretrained_weights FILE`` loads (nnunetv2 2.8.1,
``nnunetv2/run/load_pretrained_weights.py``): a checkpoint whose ``network_weights`` holds every tensor of the
network nnU-Net builds from the plans except the segmentation layers (``.seg_layers.``, which nnU-Net never loads),
under nnU-Net's key names, and a plans file for the user's dataset whose configuration has the pretraining network
as its architecture, the pretraining spacing and the pretraining intensity normalisation.

The plans start from the dataset's own nnU-Net plans (``nnUNetv2_plan_experiment -d ID`` writes them): they carry
what only nnU-Net's fingerprint knows (dataset name, image reader, axis transposition, median shape, foreground
intensities, labels).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from cover3d.errors import InputFileNotFoundError, InputValueError, read_json_object
from cover3d.networks.weights import pretraining_metadata, read_state_dict

__all__ = ["check_checkpoint_matches_plans", "export_nnunet", "nnunet_checkpoint", "nnunet_plans"]

NNUNET_EXTRA_HINT = 'pip install "cover3d[nnunet]"'
# nnU-Net 2.8.1 image readers whose arrays and spacing are the file's axes reversed (z, y, x), nibabel's included
READERS_ZYX = ("SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient")


def _to_nnunet_axes(values: Sequence[float], plans: Mapping, name: str) -> list:
    """Per-axis ``values`` given in the (x, y, z) axes of the file, in the axis order of nnU-Net's arrays: the image
    reader's (z, y, x), then ``transpose_forward``. Anisotropic values need a reader of known order."""
    reader = plans.get("image_reader_writer")
    if reader in READERS_ZYX:
        values = list(values)[::-1]
    elif len(set(values)) > 1:
        raise InputValueError(f"plans image_reader_writer {reader!r}: cannot place the anisotropic pretraining "
                              f"{name} {list(values)} on its axes (known readers: {', '.join(READERS_ZYX)})")
    return [list(values)[axis] for axis in plans.get("transpose_forward", [0, 1, 2])]


def _normalisation(preprocessing: Mapping, channels: int, base_properties: Mapping) -> tuple[list[str], dict]:
    """nnU-Net normalisation schemes and foreground intensity properties reproducing the pretraining intensities.

    CT (``ct_preprocessing``, HU window [lo, hi] -> [0, 1], clipped): ``CTNormalization`` clips to
    ``percentile_00_5``/``percentile_99_5`` and computes ``(x - mean) / std``, so lo, hi, mean = lo, std = hi - lo give
    exactly the pretraining intensities. MRI (``mri_preprocessing``, per-volume 0.5/99.5 percentiles -> [0, 1]):
    nnU-Net has no percentile scheme; ``RescaleTo01Normalization`` (per-volume min/max -> [0, 1]) is the closest.
    """
    preset = str(preprocessing.get("preset", ""))
    name = preset.rsplit(".", 1)[-1]
    if name == "ct_preprocessing":
        low, high = (float(v) for v in preprocessing.get("preset_args", {}).get("hu_window", (-1000.0, 1000.0)))
        window = {"mean": low, "std": high - low, "percentile_00_5": low, "percentile_99_5": high}
        properties = {str(c): {**base_properties.get(str(c), {}), **window} for c in range(channels)}
        return ["CTNormalization"] * channels, properties
    if name == "mri_preprocessing":
        return ["RescaleTo01Normalization"] * channels, dict(base_properties)
    raise InputValueError(f"metadata preprocessing.preset {preset!r}: no nnU-Net normalisation for it "
                          "(known: cover3d.transforms.ct_preprocessing, cover3d.transforms.mri_preprocessing)")


def nnunet_plans(
    base_plans: Mapping,
    dataset_json: Mapping,
    metadata: Mapping,
    plans_name: str = "nnUNetPlans_cover3d",
    configuration: str = "3d_fullres",
    patch_size: Sequence[int] | None = None,
) -> dict:
    """The dataset's plans with one configuration, ``configuration``, set to the pretraining network and preprocessing.

    Args:
        base_plans: the dataset's nnU-Net plans (e.g. ``nnUNetPlans.json``); its ``configuration`` entry is the
            template (batch size, resampling, ...).
        dataset_json: the dataset's ``dataset.json`` (its ``channel_names`` must count the pretraining's input
            channels).
        metadata: the pretraining bundle's ``preprocessing`` and ``pretraining`` blocks (``models/metadata.json``).
        plans_name: name of the new plans (``-p`` / ``-plans_name`` of nnU-Net's commands).
        configuration: configuration written (``3d_fullres``); the others are dropped.
        patch_size: training patch in the (x, y, z) voxels of the pretraining; default the pretraining patch.

    Raises:
        InputValueError: weights of a backbone nnU-Net cannot build, another number of channels, an unknown
            normalisation, a patch not divisible by the network's total stride; the message names the setting.
    """
    pretraining = metadata.get("pretraining", {})
    preprocessing = metadata.get("preprocessing", {})
    architecture = pretraining.get("nnunet")
    if not architecture:
        raise InputValueError(
            f"metadata pretraining.backbone_class is {pretraining.get('backbone_class')!r}: nnU-Net builds only the "
            "network of cover3d.networks.NnUNetBackbone (pretrain with the backbone_nnunet.json overlay)"
        )
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    if channels != int(pretraining.get("in_channels", 1)):
        raise InputValueError(f"dataset.json channel_names has {channels} channel(s), the pretraining "
                              f"in_channels is {pretraining.get('in_channels', 1)}")
    configurations = base_plans.get("configurations", {})
    if configuration not in configurations:
        raise InputValueError(f"plans have no configuration {configuration!r} (they have {sorted(configurations)})")
    divisor = 2 ** (int(architecture["arch_kwargs"]["n_stages"]) - 1)
    patch = [int(p) for p in (patch_size if patch_size is not None else pretraining["patch_size"])]
    if len(patch) != 3 or any(p % divisor for p in patch):
        raise InputValueError(f"patch_size {patch} must be 3 sizes divisible by {divisor} (the network's total stride)")
    spacing = [float(s) for s in _to_nnunet_axes(preprocessing["spacing_mm"], base_plans, "spacing_mm")]
    schemes, intensity_properties = _normalisation(
        preprocessing, channels, base_plans.get("foreground_intensity_properties_per_channel", {})
    )
    config = copy.deepcopy(configurations[configuration])
    config.pop("inherits_from", None)
    shape, shape_spacing = base_plans["original_median_shape_after_transp"], base_plans["original_median_spacing_after_transp"]
    config.update({
        "data_identifier": f"{plans_name}_{configuration}",
        "patch_size": [int(p) for p in _to_nnunet_axes(patch, base_plans, "patch_size")],
        "spacing": spacing,
        "median_image_size_in_voxels": [round(n * s / t) for n, s, t in zip(shape, shape_spacing, spacing)],
        "normalization_schemes": schemes,
        "use_mask_for_norm": [False] * channels,  # cover3d normalises the whole volume
        "architecture": copy.deepcopy(architecture),
    })
    plans = copy.deepcopy(dict(base_plans))
    plans.update({
        "plans_name": plans_name,
        "configurations": {configuration: config},
        "foreground_intensity_properties_per_channel": intensity_properties,
    })
    return plans


def nnunet_checkpoint(state: Mapping[str, torch.Tensor], backbone_key_prefix: str = "backbone.") -> dict:
    """``{"network_weights": ...}``: the backbone's tensors of a ``CoverNet`` state dict (or a backbone's own state
    dict) under nnU-Net's key names, i.e. without ``backbone_key_prefix``."""
    if any(k.startswith(backbone_key_prefix) for k in state):
        state = {k[len(backbone_key_prefix):]: v for k, v in state.items() if k.startswith(backbone_key_prefix)}
    return {"network_weights": {k: v.detach().clone().cpu() for k, v in state.items()}}


def check_checkpoint_matches_plans(
    checkpoint: Mapping, plans: Mapping, configuration: str, dataset_json: Mapping
) -> int:
    """Build the network nnU-Net's trainer builds from ``plans`` (``get_network_from_plans`` with the dataset's
    input channels and segmentation heads) and check that ``checkpoint['network_weights']`` holds each of its
    tensors but the segmentation layers, with its shape, and nothing else; returns the number of tensors.

    Raises:
        InputValueError: naming the first key that is missing, has another shape or is not in the network.
    """
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError:
        raise InputValueError(f"checking the export against nnU-Net needs nnunetv2: {NNUNET_EXTRA_HINT}") from None
    manager = PlansManager(dict(plans))
    config = manager.get_configuration(configuration)
    network = get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, config, dict(dataset_json)),
        manager.get_label_manager(dict(dataset_json)).num_segmentation_heads,
        allow_init=False,
    )
    wanted = {k: v.shape for k, v in network.state_dict().items() if ".seg_layers." not in k}
    weights = checkpoint["network_weights"]
    for key, shape in wanted.items():
        if key not in weights:
            raise InputValueError(f"network_weights lack {key} of the network the plans build "
                                  f"({config.network_arch_class_name.rsplit('.', 1)[-1]}, configuration {configuration})")
        if tuple(weights[key].shape) != tuple(shape):
            raise InputValueError(f"network_weights {key} has shape {tuple(weights[key].shape)}, the network the plans "
                                  f"build has {tuple(shape)} (configuration {configuration})")
    extra = [k for k in weights if k not in wanted]
    if extra:
        raise InputValueError(f"network_weights {extra[0]} is not in the network the plans build (configuration "
                              f"{configuration}; {len(extra)} such key(s))")
    return len(wanted)


def export_nnunet(
    weights: str | Path,
    plans: str | Path,
    out: str | Path,
    metadata: str | Path | None = None,
    dataset_json: str | Path | None = None,
    plans_name: str = "nnUNetPlans_cover3d",
    configuration: str = "3d_fullres",
    patch_size: Sequence[int] | None = None,
) -> tuple[Path, Path]:
    """Write ``OUT/<plans_name>.json`` and ``OUT/<plans_name>_pretrained.pt`` (see :func:`nnunet_plans`,
    :func:`nnunet_checkpoint`), after checking with nnU-Net's own code that the checkpoint loads into the network the
    plans build (:func:`check_checkpoint_matches_plans`). ``metadata`` defaults to the bundle's ``metadata.json`` next
    to the weights, ``dataset_json`` to the ``dataset.json`` next to the plans (nnU-Net copies it there).

    Returns:
        (plans file, checkpoint file).
    """
    metadata_blocks = read_json_object(metadata, "metadata") if metadata else pretraining_metadata(weights)
    if not metadata_blocks:
        raise InputFileNotFoundError(f"no bundle metadata.json next to {weights} (nor one folder up): pass --metadata")
    base_plans = read_json_object(plans, "nnU-Net plans")
    dataset = read_json_object(dataset_json or Path(plans).parent / "dataset.json", "dataset.json")
    new_plans = nnunet_plans(base_plans, dataset, metadata_blocks, plans_name, configuration, patch_size)
    prefix = metadata_blocks.get("pretraining", {}).get("backbone_key_prefix", "backbone.")
    checkpoint = nnunet_checkpoint(read_state_dict(weights), prefix)
    check_checkpoint_matches_plans(checkpoint, new_plans, configuration, dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans_file, checkpoint_file = out / f"{plans_name}.json", out / f"{plans_name}_pretrained.pt"
    plans_file.write_text(json.dumps(new_plans, indent=4))
    torch.save(checkpoint, checkpoint_file)
    return plans_file, checkpoint_file
