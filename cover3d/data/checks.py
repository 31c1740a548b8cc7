"""Volume checks: shared by ``CheckVolumed`` (transform chain) and :func:`preflight_check` (whole datalist,
every bad file reported at once before training starts)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence

import torch
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import ensure_tuple

from cover3d.data.readers import SimpleITKReader

__all__ = ["label_shape_problem", "preflight_check", "volume_problems"]


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


def preflight_check(
    datalist: Sequence[dict],
    keys: KeysCollection,
    label_keys: KeysCollection = (),
    channels: int = 1,
    reader: ImageReader | str | None = None,
) -> None:
    """Open every file of ``datalist`` once and apply the checks of ``CheckVolumed``.

    Args:
        datalist: entries such as ``load_datalist`` returns, e.g. ``[{"image": path, "label": path}, ...]``;
            a value may be a list of paths (stacked as channels, as ``LoadImage`` does).
        keys: image keys, each with ``channels`` channels.
        label_keys: label keys, one channel, same spatial shape as the first image key.
        channels: expected channel count of each image.
        reader: reader passed to ``LoadImage``; default: ``NibabelReader`` for NIfTI, ``SimpleITKReader``
            for NRRD/MHA/MHD files and DICOM folders (as the cover3d presets load them).

    Raises:
        FileNotFoundError: when the only problems are missing files (all listed).
        ValueError: listing every problem — missing key, missing or unreadable file, not 3D, wrong channel
            count, empty, NaN/Inf values, constant image, label/image shape mismatch — each with its file.
    """
    loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)
    if reader is None:
        loader.register(SimpleITKReader())
    image_keys, label_keys = ensure_tuple(keys), ensure_tuple(label_keys)
    problems: list[str] = []
    missing: list[str] = []
    for index, entry in enumerate(datalist):
        volumes: dict[Hashable, tuple[torch.Tensor, str]] = {}
        for key in image_keys + label_keys:
            if key not in entry:
                problems.append(f"entry {index} {entry}: no '{key}' key")
                continue
            paths = [str(p) for p in ensure_tuple(entry[key])]
            name = ", ".join(paths)
            absent = [p for p in paths if not os.path.exists(p)]
            if absent:
                missing += [f"{p}: file not found (entry {index}, key '{key}')" for p in absent]
                continue
            try:
                volume = loader(paths if len(paths) > 1 else paths[0])
            except Exception as e:  # noqa: BLE001 - readers raise many types; each is reported as "unreadable"
                problems.append(f"{name}: unreadable ({_first_line(e)})")
                continue
            is_label = key in label_keys
            problems += volume_problems(volume, name, 1 if is_label else channels, is_label)
            if volume.ndim == 4:
                volumes[key] = (volume, name)
        image_key = next((k for k in image_keys if k in volumes), None)
        for key in (k for k in label_keys if k in volumes and image_key is not None):
            problem = label_shape_problem(*volumes[image_key], *volumes[key])
            problems += [problem] if problem else []
    if problems or missing:
        error = ValueError if problems else FileNotFoundError
        lines = missing + problems
        raise error(
            f"pre-flight check found {len(lines)} problem(s) in {len(datalist)} entries:\n  " + "\n  ".join(lines)
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
