"""Volume checks: shared by ``CheckVolumed`` (transform chain) and :func:`preflight_check` (whole datalist,
every bad file reported at once before training starts)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import ensure_tuple

from cover3d.data.readers import SimpleITKReader
from cover3d.errors import InputFileNotFoundError, InputValueError

__all__ = [
    "MIN_PATCH_COVERAGE",
    "PreflightReport",
    "label_shape_problem",
    "patch_size_problems",
    "preflight_check",
    "resampled_size",
    "volume_problems",
]

logger = logging.getLogger(__name__)

# an image covering less than this fraction of the training patch on an axis is refused (mostly zero padding)
MIN_PATCH_COVERAGE = 0.5
# RAS axes as the tensor axes (C, X, Y, Z) of an oriented volume are called in messages
RAS_AXIS_NAMES = ("x (L-R)", "y (P-A)", "z (I-S)")
# files named per kind of warning; the others are counted
WARNING_EXAMPLES = 3


@dataclass
class PreflightReport:
    """What :func:`preflight_check` found in a datalist it did not refuse.

    Attributes:
        volumes: distinct files (or multi-file values) checked.
        warnings: kind of warning -> ``"<file>: <detail>"`` for every file with that warning (a kind is one
            sentence shared by its files, e.g. the axis a volume is smaller than the patch on).
    """

    volumes: int = 0
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def add_warning(self, kind: str, file_detail: str) -> None:
        self.warnings.setdefault(kind, []).append(file_detail)

    def warning_lines(self) -> list[str]:
        """One line per kind: count, the kind, the first ``WARNING_EXAMPLES`` files and how many more."""
        lines = []
        for kind, files in self.warnings.items():
            more = f" and {len(files) - WARNING_EXAMPLES} more" if len(files) > WARNING_EXAMPLES else ""
            lines.append(f"{len(files)} volume(s) {kind}: e.g. {'; '.join(files[:WARNING_EXAMPLES])}{more}")
        return lines

    def summary(self, errors: int = 0) -> str:
        """``pre-flight check: N volumes checked, K warnings of M kinds, E errors``."""
        count = sum(len(files) for files in self.warnings.values())
        return (f"pre-flight check: {self.volumes} volumes checked, {count} warnings of {len(self.warnings)} "
                f"kinds, {errors} errors")


def volume_problems(volume: torch.Tensor, name: str, channels: int = 1, is_label: bool = False) -> list[str]:
    """Problems of one channel-first volume (C, X, Y, Z), each as ``"<name>: <problem>"``; empty if it is valid.

    Checks: 3 spatial dimensions, ``channels`` channels, at least one voxel, only finite values and, for
    images (not labels), not a constant volume (which intensity normalisation cannot scale).
    """
    volume = torch.as_tensor(volume)
    shape = tuple(volume.shape)
    problems = []
    if volume.ndim != 4:
        problems.append(f"has {volume.ndim - 1} spatial dimensions, expected 3 (channel-first shape {shape})")
    elif shape[0] != channels:
        problems.append(
            f"has {shape[0]} channels, expected {channels} (channel-first shape {shape}; "
            "a 4D file such as a time series or a multi-channel image gives one channel per volume)"
        )
    if volume.numel() == 0:
        return [f"{name}: {p}" for p in problems + [f"is empty (shape {shape})"]]
    if volume.is_floating_point():
        non_finite = int((~torch.isfinite(volume)).sum())
        if non_finite:
            problems.append(f"has {non_finite} non-finite (NaN/Inf) values out of {volume.numel()}")
    if not is_label and not problems and bool(volume.min() == volume.max()):
        problems.append(f"is constant (every voxel is {volume.min().item()})")
    return [f"{name}: {p}" for p in problems]


def label_shape_problem(image: torch.Tensor, image_name: str, label: torch.Tensor, label_name: str) -> str | None:
    """A message naming both files when the label's spatial shape differs from the image's, else None."""
    image_shape, label_shape = tuple(image.shape[1:]), tuple(label.shape[1:])
    if image_shape == label_shape:
        return None
    return (
        f"{label_name}: label spatial shape {label_shape} differs from image {image_name} spatial shape {image_shape}"
    )


def patch_size_problems(patch_size: Sequence[int], divisor: int = 16, name: str = "patch_size") -> list[str]:
    """Problems of a training patch size (or another network input size, called ``name`` in the messages): 3
    positive sizes, each divisible by ``divisor`` (the U-Net halves it 4 times); empty when valid."""
    sizes = [int(p) for p in ensure_tuple(patch_size)]
    if len(sizes) != 3 or min(sizes) <= 0:
        return [f"{name} {sizes} must be 3 positive sizes"]
    if any(p % divisor for p in sizes):
        fixed = [max(divisor, round(p / divisor) * divisor) for p in sizes]
        return [f"{name} {sizes} is not divisible by {divisor} on every axis (the U-Net halves it 4 times); "
                f"use e.g. {fixed}"]
    return []


def resampled_size(volume: torch.Tensor, pixdim: Sequence[float] | None = None) -> list[int]:
    """Voxels per RAS axis of ``volume`` (C, X, Y, Z) once oriented to RAS and resampled to ``pixdim`` mm (None: its
    own spacing), from its affine (MetaTensor ``affine``; identity without one), before any foreground crop."""
    affine = np.asarray(getattr(volume, "affine", np.eye(4)), dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(affine, axis=0)
    ras_axis = np.abs(affine).argmax(axis=0)  # the RAS axis each file axis becomes after orientation
    extent_mm = np.zeros(3)
    extent_mm[ras_axis] = np.asarray(volume.shape[1:], dtype=np.float64) * spacing
    target = np.asarray(pixdim, dtype=np.float64) if pixdim is not None else spacing[np.argsort(ras_axis)]
    return np.floor(extent_mm / target + 1e-6).astype(int).tolist()


def preflight_check(
    datalist: Sequence[dict],
    keys: KeysCollection,
    label_keys: KeysCollection = (),
    channels: int = 1,
    reader: ImageReader | str | None = None,
    patch_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
) -> PreflightReport:
    """Open every file of ``datalist`` once and apply the checks of ``CheckVolumed`` (and the patch checks).

    Args:
        datalist: entries such as ``load_datalist`` returns, e.g. ``[{"image": path, "label": path}, ...]``;
            a value may be a list of paths (stacked as channels, as ``LoadImage`` does). A file listed several
            times (e.g. in both the training and the validation list) is opened and reported once.
        keys: image keys, each with ``channels`` channels.
        label_keys: label keys, one channel, same spatial shape as the first image key.
        channels: expected channel count of each image.
        reader: reader passed to ``LoadImage``; default: ``NibabelReader`` for NIfTI, ``SimpleITKReader``
            for NRRD/MHA/MHD files and DICOM folders (as the cover3d presets load them).
        patch_size: training patch; when given it must be divisible by 16, and every image must cover at least
            ``MIN_PATCH_COVERAGE`` of it on each RAS axis at ``pixdim`` (before any foreground crop); an image
            smaller than the patch but not that small is a warning (its patches are partly padding).
        pixdim: training voxel spacing in mm (None: each image's own spacing).

    Returns:
        the :class:`PreflightReport`; its warnings are logged grouped, one line per kind with a count and the first
        files, followed by its summary line (``N volumes checked, K warnings of M kinds, 0 errors``).

    Raises:
        InputFileNotFoundError: when the only problems are missing files (all listed).
        InputValueError: listing every problem — bad patch size, missing key, missing or unreadable file, not
            3D, wrong channel count, empty, NaN/Inf values, constant image, much smaller than the patch, label/image
            shape mismatch — each with its file. One problem gives a one-line message.
    """
    loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)
    if reader is None:
        loader.register(SimpleITKReader())
    image_keys, label_keys = ensure_tuple(keys), ensure_tuple(label_keys)
    problems: list[str] = patch_size_problems(patch_size) if patch_size is not None else []
    missing: list[str] = []
    # files already checked -> shape-only (meta device) stand-in of the volume, None when missing or unreadable
    opened: dict[tuple[str, ...], torch.Tensor | None] = {}
    report = PreflightReport()
    for index, entry in enumerate(datalist):
        volumes: dict[Hashable, tuple[torch.Tensor, str]] = {}
        for key in image_keys + label_keys:
            if key not in entry:
                problems.append(f"entry {index} {entry}: no '{key}' key")
                continue
            paths = tuple(str(p) for p in ensure_tuple(entry[key]))
            name = ", ".join(paths)
            if paths not in opened:
                volume = _open_and_check(loader, paths, index, key, key in label_keys, channels, problems, missing)
                if _is_volume(volume) and patch_size is not None and key not in label_keys:
                    _compare_with_patch(volume, name, patch_size, pixdim, problems, report)
                opened[paths] = None if volume is None else torch.empty(volume.shape, device="meta")  # no voxels kept
            if opened[paths] is not None and opened[paths].ndim == 4:
                volumes[key] = (opened[paths], name)
        image_key = next((k for k in image_keys if k in volumes), None)
        for key in (k for k in label_keys if k in volumes and image_key is not None):
            problem = label_shape_problem(*volumes[image_key], *volumes[key])
            problems += [problem] if problem and problem not in problems else []
    report.volumes = len(opened)
    for line in report.warning_lines():
        logger.warning(line)
    if problems or missing:
        error = InputValueError if problems else InputFileNotFoundError
        lines = missing + problems
        if len(lines) == 1:
            raise error(f"pre-flight check: {lines[0]}")
        raise error(
            f"{report.summary(len(lines))} (in {len(datalist)} entries):\n  " + "\n  ".join(lines)
        )
    logger.info(report.summary())
    return report


def _open_and_check(
    loader: LoadImage, paths: tuple[str, ...], index: int, key: Hashable, is_label: bool, channels: int,
    problems: list[str], missing: list[str],
) -> torch.Tensor | None:
    """Load one datalist value and append its problems; the volume, or None when missing or unreadable."""
    name = ", ".join(paths)
    absent = [p for p in paths if not os.path.exists(p)]
    if absent:
        missing += [f"{p}: file not found (entry {index}, key '{key}')" for p in absent]
        return None
    try:
        volume = loader(list(paths) if len(paths) > 1 else paths[0])
    except Exception as e:  # noqa: BLE001 - readers raise many types; each is reported as "unreadable"
        problems.append(f"{name}: unreadable ({_first_line(e)})")
        return None
    problems += volume_problems(volume, name, 1 if is_label else channels, is_label)
    return volume


def _axes(axes: Sequence[int]) -> str:
    """``"RAS axis z (I-S)"`` / ``"RAS axes x (R-L), z (I-S)"``."""
    return f"RAS {'axes' if len(axes) > 1 else 'axis'} {', '.join(RAS_AXIS_NAMES[a] for a in axes)}"


def _compare_with_patch(
    volume: torch.Tensor, name: str, patch_size: Sequence[int], pixdim: Sequence[float] | None, problems: list[str],
    report: PreflightReport,
) -> None:
    """Append a problem when ``volume`` covers less than ``MIN_PATCH_COVERAGE`` of the patch on an axis at the
    training spacing (its patches would be mostly zero padding); add a warning to ``report`` naming the axes when it
    is smaller than the patch."""
    size, patch = resampled_size(volume, pixdim), [int(p) for p in patch_size]
    at = f"{[float(p) for p in pixdim]} mm" if pixdim is not None else "its own spacing"
    much_smaller = [a for a, (s, p) in enumerate(zip(size, patch)) if s < MIN_PATCH_COVERAGE * p]
    smaller = [a for a, (s, p) in enumerate(zip(size, patch)) if s < p]
    if much_smaller:
        problems.append(f"{name}: much smaller than the training patch: {size} voxels at {at} (RAS axes), less than "
                        f"{MIN_PATCH_COVERAGE:.0%} of patch_size {patch} on {_axes(much_smaller)} (patches would be "
                        "mostly zero padding)")
    elif smaller:
        sizes = ", ".join(f"{size[a]} < {patch[a]}" for a in smaller)
        report.add_warning(
            f"smaller than the training patch {patch} on {_axes(smaller)} at {at}: their patches are zero-padded there "
            f"(voxels at the training spacing, RAS axes)",
            f"{Path(name).name} {size} ({sizes})",
        )


def _is_volume(volume: torch.Tensor | None) -> bool:
    """A loaded (C, X, Y, Z) volume with voxels (one whose size can be compared with a patch)."""
    return volume is not None and volume.ndim == 4 and volume.numel() > 0


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
