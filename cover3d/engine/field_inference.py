"""Predicting a displacement field for a pair of whole volumes and saving it for ITK-based tools.

Used by the pretraining bundles' ``inference.json``. Two modes: two volumes (``image_b`` defines the grid, view a
is resampled onto it), or one volume and a seeded random deformation (the true field is saved too).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import ResampleToMatch
from monai.utils import convert_to_tensor

from cover3d.data.field_io import write_displacement_field
from cover3d.data.readers import volume_suffix
from cover3d.engine.outputs import refuse_existing
from cover3d.errors import InputFileNotFoundError, InputValueError
from cover3d.fields import warp
from cover3d.metrics import endpoint_error, folding_fraction, foreground_overlap, global_ncc, mutual_information
from cover3d.transforms import RandDeformationField, fraction_within_reach

__all__ = ["MIN_FOREGROUND_OVERLAP", "inference_pair", "predict_field", "save_field_prediction", "similarity_report"]

logger = logging.getLogger(__name__)

# below this foreground overlap coefficient two volumes are too far apart for a field between them to mean much
MIN_FOREGROUND_OVERLAP = 0.5
# foreground: preprocessed intensity (in [0, 1]) above this
FOREGROUND_THRESHOLD = 0.05


@torch.no_grad()
def predict_field(
    network: torch.nn.Module, view_a: torch.Tensor, view_b: torch.Tensor, divisor: int = 16, amp: bool = False
) -> torch.Tensor:
    """Field ``(B, 3, *S)`` (voxels, ``view_b ~ warp(view_a, field)``) predicted by a ``CoverNet`` for views
    ``(B, C, *S)`` of any size: both are zero-padded at the far end of each axis to a multiple of ``divisor`` (the
    network needs sizes divisible by 16), the whole padded volume goes through one eval-mode forward, and the field
    is cropped back (padding at the far end leaves the indices, hence the field values, of the volume unchanged)."""
    if view_a.shape != view_b.shape or view_a.ndim != 5:
        shapes = f"{tuple(view_a.shape)} and {tuple(view_b.shape)}"
        raise ValueError(f"views must be (B, C, D, H, W) of one shape, got {shapes}")
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    size = view_a.shape[2:]
    pad = [p for n in reversed(size) for p in (0, -n % divisor)]  # F.pad order: last axis first
    views = [convert_to_tensor(v, dtype=torch.float32, track_meta=False) for v in (view_a, view_b)]
    inputs = F.pad(torch.cat(views, 1), pad).to(device)
    with torch.autocast(device.type, enabled=amp):
        field = network(inputs).float()
    network.train(was_training)
    return field[..., : size[0], : size[1], : size[2]]


def _name(path: str | os.PathLike) -> str:
    file = Path(path).name
    suffix = volume_suffix(file) or Path(file).suffix
    return file[: len(file) - len(suffix)]


def inference_pair(
    preprocessing: Callable[[dict], dict],
    image_a: str | os.PathLike | None,
    image_b: str | os.PathLike | None = None,
    deformation: RandDeformationField | None = None,
    seed: int = 0,
) -> dict:
    """Preprocessed views for :func:`save_field_prediction`: ``image`` (view a) and ``image_b`` (C, *S) MetaTensors
    on one grid, ``name``; with a random deformation also ``ddf`` (3, *S) (the true field, voxels), with two
    volumes ``moving_foreground``: view a's foreground voxel count before resampling (see :func:`similarity_report`).

    Two volumes: ``image_b`` is preprocessed and defines the grid (the field lives on the fixed view's grid);
    ``image_a`` is preprocessed and resampled onto it by world coordinates (linear, zeros outside). One volume
    (``image_b`` None): view a is the preprocessed ``image_a``, the field a copy of ``deformation`` (None: default
    :class:`RandDeformationField`) seeded with ``seed`` draws on its grid, and view b = ``warp(view a, field)``.

    Raises:
        ValueError: ``image_a`` is not given.
        FileNotFoundError: an input file does not exist.
    """
    if not image_a:
        raise InputValueError(
            "inference needs a volume: pass --image_a path (and --image_b path for a pair of volumes)"
        )
    for path in (image_a, image_b):
        if path and not os.path.exists(path):
            raise InputFileNotFoundError(f"input volume not found: {path}")
    view_a = preprocessing({"image": str(image_a)})["image"]
    if image_b:
        view_b = preprocessing({"image": str(image_b)})["image"]
        foreground = int((view_a > FOREGROUND_THRESHOLD).sum())  # before the part outside b's grid is cut off
        view_a = ResampleToMatch(mode="bilinear", padding_mode="zeros")(view_a, view_b)
        name = f"{_name(image_a)}_to_{_name(image_b)}"
        return {"image": view_a, "image_b": view_b, "name": name, "moving_foreground": foreground}
    generator = copy.deepcopy(deformation) if deformation is not None else RandDeformationField()
    generator.set_random_state(seed=seed)
    ddf = generator(view_a.shape[1:], device=view_a.device)
    view_b = MetaTensor(warp(view_a.as_tensor()[None], ddf[None])[0], affine=view_a.affine)
    return {"image": view_a, "image_b": view_b, "ddf": ddf, "name": f"{_name(image_a)}_random{seed}"}


def _write_volume(volume: torch.Tensor, affine: torch.Tensor, path: Path) -> None:
    writer = NibabelWriter()
    writer.set_data_array(volume.detach().cpu().float(), channel_dim=0)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(str(path))


def similarity_report(
    moving: torch.Tensor,
    warped: torch.Tensor,
    fixed: torch.Tensor,
    moving_foreground: int | None = None,
    min_overlap: float = MIN_FOREGROUND_OVERLAP,
) -> dict:
    """``similarity`` (global NCC and mutual information of the fixed view with the moving view before and after
    warping), ``foreground_overlap`` of the moving and fixed views (``moving_foreground``: the moving view's
    foreground voxel count before it was resampled onto the fixed grid, see :func:`foreground_overlap`), and
    ``warnings``: one when the overlap is below ``min_overlap`` (the volumes are far apart in world coordinates or
    show different anatomy) and one per measure that the warp made worse. Views ``(C, *S)`` on one grid,
    intensities in [0, 1]."""
    similarity = {
        "ncc_before": global_ncc(moving, fixed), "ncc_after": global_ncc(warped, fixed),
        "mi_before": mutual_information(moving, fixed), "mi_after": mutual_information(warped, fixed),
    }  # fmt: skip
    overlap = foreground_overlap(moving, fixed, FOREGROUND_THRESHOLD, moving_foreground)
    warnings = []
    if overlap < min_overlap:
        warnings.append(f"the volumes barely overlap: {overlap:.0%} of the smaller foreground (intensity > "
                        f"{FOREGROUND_THRESHOLD}) lies in the other's (below {min_overlap:.0%}); check that they show "
                        "the same anatomy in the same world coordinates")
    for key, label in (("ncc", "NCC"), ("mi", "mutual information")):
        before, after = similarity[f"{key}_before"], similarity[f"{key}_after"]
        if after < before:
            warnings.append(f"the warp made the volumes less similar: {label} {before:.3f} before, {after:.3f} after")
    return {"similarity": similarity, "foreground_overlap": overlap, "warnings": warnings}


def save_field_prediction(
    network: torch.nn.Module, pair: Mapping, output_dir: str | os.PathLike, amp: bool = False, overwrite: bool = False
) -> dict[str, str]:
    """Predict the field of an :func:`inference_pair` and write into ``output_dir`` (created), prefixed ``<name>_``
    (refused, before the prediction, when one of these files exists and ``overwrite`` is not True):

    - ``field.nii.gz``: predicted field as an ITK displacement field (LPS mm, see :mod:`cover3d.data.field_io`);
    - ``warped.nii.gz``: view a warped by it onto view b's grid (``warp(view a, field)``, should resemble view b);
    - ``fixed.nii.gz`` / ``moving.nii.gz``: the preprocessed views b and a (a on b's grid), the network inputs;
    - random deformation only: ``true_field.nii.gz`` (ITK, as above);
    - ``summary.json``: name, mode, grid, mean |field| (mm) and folding fraction, the :func:`similarity_report`
      (NCC and mutual information before / after warping, foreground overlap, warnings, also logged), and for a
      random deformation the mean end-point error (voxels) of the prediction and of the zero field over the voxels
      whose target ``p + psi(p)`` is inside the volume, and the fraction of those within the network's reach.

    Returns a dict of the written paths (keys as above without suffix, plus ``summary``), each also logged.
    """
    output_dir = Path(output_dir)
    prefix = output_dir / str(pair["name"])
    volumes = ("field", "warped", "fixed", "moving") + (("true_field",) if "ddf" in pair else ())
    paths = {key: Path(f"{prefix}_{key}.nii.gz") for key in volumes}
    paths["summary"] = Path(f"{prefix}_summary.json")
    refuse_existing(paths.values(), overwrite, "predictions_dir")
    view_a, view_b = pair["image"], pair["image_b"]
    affine = view_b.affine
    field = predict_field(network, view_a[None], view_b[None], amp=amp)[0].cpu()
    warped = warp(view_a.as_tensor()[None].float().cpu(), field[None])[0]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_displacement_field(field, affine, paths["field"])
    for key, volume in (("warped", warped), ("fixed", view_b), ("moving", view_a)):
        _write_volume(torch.as_tensor(volume), affine, paths[key])
    spacing = torch.linalg.vector_norm(torch.as_tensor(affine, dtype=torch.float64)[:3, :3], dim=0)
    summary = {
        "name": pair["name"],
        "mode": "random deformation" if "ddf" in pair else "two volumes",
        "shape": list(field.shape[1:]),
        "spacing_mm": spacing.tolist(),
        "mean_displacement_mm": float(torch.linalg.vector_norm(field * spacing.float().view(3, 1, 1, 1), dim=0).mean()),
        "folding_fraction": float(folding_fraction(field[None])[0]),
    }
    moving, fixed = view_a.as_tensor().float().cpu(), torch.as_tensor(view_b).float().cpu()
    summary.update(similarity_report(moving, warped, fixed, pair.get("moving_foreground")))
    if "ddf" in pair:
        true = torch.as_tensor(pair["ddf"]).float().cpu()
        write_displacement_field(true, affine, paths["true_field"])
        inside = (warp(torch.ones_like(warped[:1])[None], true[None]) > 0.999).float()  # p + psi(p) inside the volume
        summary["epe"] = float(endpoint_error(field[None], true[None], inside)[0])
        summary["epe_identity"] = float(endpoint_error(torch.zeros_like(true)[None], true[None], inside)[0])
        summary["within_reach"] = fraction_within_reach(true, inside[0], network.reach)
    paths["summary"].write_text(json.dumps(summary, indent=2))
    logger.info(f"field prediction for {pair['name']}: {json.dumps(summary)}")
    for path in paths.values():
        logger.info(f"wrote {path.resolve()}")
    similarity = summary["similarity"]
    logger.info(f"{pair['name']}: NCC {similarity['ncc_before']:.3f} -> {similarity['ncc_after']:.3f}, mutual "
                f"information {similarity['mi_before']:.3f} -> {similarity['mi_after']:.3f} nats (before -> after "
                f"warping), foreground overlap {summary['foreground_overlap']:.0%}")
    for warning in summary["warnings"]:
        logger.warning(f"{pair['name']}: {warning}")
    return {key: str(path) for key, path in paths.items()}
