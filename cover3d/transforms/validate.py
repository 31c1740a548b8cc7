"""Early input validation in a transform chain: clear errors naming the file and the problem.

The checks themselves live in ``cover3d.data.checks``, shared with ``preflight_check`` (whole datalist).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, ensure_tuple

from cover3d.data.checks import label_shape_problem, volume_problems
from cover3d.errors import InputValueError

__all__ = ["CheckVolumed", "source_name"]


def source_name(volume: torch.Tensor, key: Hashable = "") -> str:
    """The file a loaded volume came from (MetaTensor meta ``filename_or_obj``), or a placeholder naming the key."""
    if isinstance(volume, MetaTensor) and ImageMetaKey.FILENAME_OR_OBJ in volume.meta:
        return str(volume.meta[ImageMetaKey.FILENAME_OR_OBJ])
    return f"<'{key}': no file name in meta>"


class CheckVolumed(MapTransform):
    """Validate freshly loaded volumes; use right after ``LoadImaged(..., ensure_channel_first=True)``.

    Raises one ``InputValueError`` (a ``ValueError``) listing every problem, each naming its file (from meta
    ``filename_or_obj``): not 3 spatial dimensions, wrong channel count, empty, NaN/Inf values, constant image, or
    a label whose spatial shape differs from the image's. Volumes pass through unchanged.

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
            raise InputValueError("invalid input volume(s):\n  " + "\n  ".join(problems))
        return d
