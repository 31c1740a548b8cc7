"""Early input validation: clear errors naming the file and the problem, before any resampling or training.

The check functions are shared by :class:`CheckVolumed` (in a transform chain) and
``cover3d.data.preflight_check`` (over a whole datalist before training).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, ensure_tuple

__all__ = ["CheckVolumed", "label_shape_problem", "source_name", "volume_problems"]


def source_name(volume: torch.Tensor, key: Hashable = "") -> str:
    """The file a loaded volume came from (MetaTensor meta ``filename_or_obj``), or a placeholder naming the key."""
    if isinstance(volume, MetaTensor) and ImageMetaKey.FILENAME_OR_OBJ in volume.meta:
        return str(volume.meta[ImageMetaKey.FILENAME_OR_OBJ])
    return f"<'{key}': no file name in meta>"


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
    return f"{label_name}: label spatial shape {label_shape} differs from image {image_name} spatial shape {image_shape}"


class CheckVolumed(MapTransform):
    """Validate freshly loaded volumes; use right after ``LoadImaged(..., ensure_channel_first=True)``.

    Raises one ``ValueError`` listing every problem, each naming its file (from meta ``filename_or_obj``):
    not 3 spatial dimensions, wrong channel count, empty, NaN/Inf values, constant image, or a label whose
    spatial shape differs from the image's. Volumes pass through unchanged.

    Args:
        keys: image keys, each (``channels``, X, Y, Z).
        label_keys: label keys, each (1, X, Y, Z) with the spatial shape of the first image key.
        channels: expected channel count of every image key.
        allow_missing_keys: skip keys absent from the data instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        channels: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        self.image_keys: Sequence[Hashable] = ensure_tuple(keys)
        self.label_keys: Sequence[Hashable] = ensure_tuple(label_keys)
        super().__init__(tuple(self.image_keys) + tuple(self.label_keys), allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        problems = []
        for key in self.key_iterator(d):
            is_label = key in self.label_keys
            channels = 1 if is_label else self.channels
            problems += volume_problems(d[key], source_name(d[key], key), channels, is_label)
        image_key = next((k for k in self.image_keys if k in d), None)
        if image_key is not None:
            image = d[image_key]
            for key in (k for k in self.label_keys if k in d):
                problem = label_shape_problem(image, source_name(image, image_key), d[key], source_name(d[key], key))
                problems += [problem] if problem else []
        if problems:
            raise ValueError("invalid input volume(s):\n  " + "\n  ".join(problems))
        return d
