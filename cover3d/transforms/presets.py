"""CT and MRI preprocessing chains made of MONAI dictionary transforms.

Each preset returns a ``list`` (wrap it in ``Compose``, or append more transforms first). Output per image
key: float32 MetaTensor (channels, X, Y, Z) in [0, 1], RAS orientation, ``pixdim`` mm voxels, cropped to the
image's foreground; label keys are resampled with nearest-neighbour interpolation and cropped alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.utils import ensure_tuple

from cover3d.data.readers import SimpleITKReader
from cover3d.transforms.validate import CheckVolumed

__all__ = ["ct_preprocessing", "mri_preprocessing"]


def ct_preprocessing(
    keys: KeysCollection = ("image",),
    label_keys: KeysCollection = (),
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    hu_window: tuple[float, float] = (-1000.0, 1000.0),
    foreground_hu: float = -500.0,
    margin: int | Sequence[int] = 0,
    channels: int = 1,
) -> list[MapTransform]:
    """Load, check, orient to RAS, resample to ``pixdim`` mm, map the HU window to [0, 1] (clipped), crop.

    Args:
        keys: image keys (CT in Hounsfield units).
        label_keys: label keys, resampled with nearest neighbour and cropped with the images.
        pixdim: output voxel size in mm (x, y, z).
        hu_window: (low, high) HU mapped to 0 and 1; values outside are clipped.
        foreground_hu: voxels above this HU (and above the window's low end) of the first image key define
            the foreground crop box.
        margin: voxels kept around the foreground box (int or one per axis).
        channels: expected channel count of each image (checked right after loading).
    """
    low, high = hu_window
    if not high > low:
        raise ValueError(f"hu_window must be (low, high) with high > low, got {hu_window}")
    if not foreground_hu < high:
        raise ValueError(f"foreground_hu ({foreground_hu}) must be below the top of hu_window {hu_window}")
    keys = ensure_tuple(keys)
    threshold = max(0.0, (foreground_hu - low) / (high - low))  # in the windowed [0, 1] scale
    return [
        *_load_check_resample(keys, ensure_tuple(label_keys), pixdim, channels),
        ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        *_crop_to_float(keys, ensure_tuple(label_keys), threshold, margin),
    ]


def mri_preprocessing(
    keys: KeysCollection = ("image",),
    label_keys: KeysCollection = (),
    pixdim: Sequence[float] = (1.0, 1.0, 1.0),
    percentiles: tuple[float, float] = (0.5, 99.5),
    foreground_threshold: float = 0.05,
    margin: int | Sequence[int] = 0,
    channels: int = 1,
) -> list[MapTransform]:
    """Load, check, orient to RAS, resample to ``pixdim`` mm, map intensity percentiles to [0, 1] (clipped), crop.

    Args:
        keys: image keys (MRI, any intensity unit).
        label_keys: label keys, resampled with nearest neighbour and cropped with the images.
        pixdim: output voxel size in mm (x, y, z).
        percentiles: (low, high) percentiles of each channel mapped to 0 and 1; values outside are clipped.
        foreground_threshold: voxels above this normalised intensity (in [0, 1)) of the first image key
            define the foreground crop box.
        margin: voxels kept around the foreground box (int or one per axis).
        channels: expected channel count of each image (checked right after loading).
    """
    low, high = percentiles
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles}")
    if not 0.0 <= foreground_threshold < 1.0:
        raise ValueError(f"foreground_threshold must be in [0, 1), got {foreground_threshold}")
    keys = ensure_tuple(keys)
    return [
        *_load_check_resample(keys, ensure_tuple(label_keys), pixdim, channels),
        ScaleIntensityRangePercentilesd(
            keys, lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
        ),
        *_crop_to_float(keys, ensure_tuple(label_keys), foreground_threshold, margin),
    ]


def _load_check_resample(keys: tuple, label_keys: tuple, pixdim: Sequence[float], channels: int) -> list[MapTransform]:
    """Load (NibabelReader for NIfTI, SimpleITKReader for NRRD/MHA/MHD/DICOM), check, orient to RAS, resample."""
    all_keys = keys + label_keys
    load = LoadImaged(all_keys, image_only=True, ensure_channel_first=True)
    load.register(SimpleITKReader())  # tried first, but claims only non-NIfTI files (see verify_suffix)
    modes = ("bilinear",) * len(keys) + ("nearest",) * len(label_keys)
    return [
        load,
        CheckVolumed(keys, label_keys=label_keys, channels=channels),
        Orientationd(all_keys, axcodes="RAS"),
        Spacingd(all_keys, pixdim=pixdim, mode=modes, dtype=np.float32),
    ]


def _crop_to_float(keys: tuple, label_keys: tuple, threshold: float, margin: int | Sequence[int]) -> list[MapTransform]:
    """Crop all keys to the box of first-image voxels above ``threshold`` (+ margin); cast to float32.

    The box is not stored in the item (``*_coord_key=None``): items built without this crop, such as
    inter-subject pseudo-pairs, must batch with the preprocessed ones (the crop's inverse is in the image's meta)."""
    all_keys = keys + label_keys
    select = partial(_above, threshold=threshold)  # a partial, not a lambda, so the chain stays picklable
    return [
        CropForegroundd(all_keys, source_key=keys[0], select_fn=select, margin=margin, allow_smaller=True,
                        start_coord_key=None, end_coord_key=None),
        EnsureTyped(all_keys, dtype=torch.float32),
    ]


def _above(image: torch.Tensor, threshold: float) -> torch.Tensor:
    return image > threshold
