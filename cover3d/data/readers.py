"""Image reading with SimpleITK in MONAI's reader conventions.

MONAI 1.6.1's ``ITKReader`` needs the ``itk`` package; cover3d depends on SimpleITK instead, so it
ships :class:`SimpleITKReader`, which returns what ``ITKReader`` returns (arrays indexed x, y, z;
affine in RAS world millimetres; the same meta keys).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = [
    "NIFTI_SUFFIXES",
    "SIMPLEITK_SUFFIXES",
    "VOLUME_SUFFIXES",
    "SimpleITKReader",
    "dicom_series_files",
    "volume_suffix",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SIMPLEITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SIMPLEITK_SUFFIXES


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The volume-file suffix of ``path`` (lower case, e.g. ``".nii.gz"``), or None if it is not a volume file."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def dicom_series_files(folder: str | os.PathLike, series_uid: str = "") -> list[str]:
    """Sorted slice files of the DICOM series in ``folder`` (the first series found unless ``series_uid`` is given).

    Raises:
        FileNotFoundError: the folder holds no DICOM series, or not the requested one.
    """
    folder = str(folder)
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not uids:
        raise FileNotFoundError(f"no DICOM series found in folder {folder}")
    if series_uid and series_uid not in uids:
        raise FileNotFoundError(f"DICOM series {series_uid} not found in folder {folder} (found: {', '.join(uids)})")
    if not series_uid and len(uids) > 1:
        warnings.warn(f"folder {folder} holds {len(uids)} DICOM series; reading the first one, {uids[0]}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_uid or uids[0]))


class SimpleITKReader(ImageReader):
    """Read NRRD/MHA/MHD/NIfTI files and DICOM series folders with SimpleITK, in MONAI ``ITKReader`` conventions.

    ``get_data`` returns the array with spatial axes (x, y, z) (SimpleITK's (z, y, x) reversed), channels
    last for vector images, and meta keys ``affine``/``original_affine`` (4x4, RAS world mm unless
    ``affine_lps_to_ras=False``), ``spatial_shape``, ``original_channel_dim``, ``space``, ``spacing`` plus
    the file's own metadata; ``LoadImage`` adds ``filename_or_obj``.

    ``verify_suffix`` claims NRRD/MHA/MHD/DICOM files and folders but not NIfTI, so that in MONAI's
    automatic reader choice ``NibabelReader`` keeps ``.nii``/``.nii.gz``; ``read`` accepts NIfTI too when
    this reader is called directly.

    Args:
        channel_dim: channel axis of the returned array, as in ``ITKReader`` (None: none for scalar images,
            last for vector images).
        series_uid: DICOM series to read from a folder holding several (default: the first one).
        affine_lps_to_ras: convert SimpleITK's LPS affine to RAS, as ``NibabelReader`` and ``ITKReader`` do.
    """

    def __init__(
        self, channel_dim: str | int | None = None, series_uid: str = "", affine_lps_to_ras: bool = True
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.series_uid = series_uid
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every name is a DICOM folder or a NRRD/MHA/MHD/DICOM file."""
        return all(
            Path(name).is_dir() or str(name).lower().endswith(SIMPLEITK_SUFFIXES + (".dcm",))
            for name in ensure_tuple(filename)
        )

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> sitk.Image | list[sitk.Image]:
        """Read one path or a list of paths (stacked as channels by ``get_data``); a folder is read as a DICOM series.

        Raises:
            FileNotFoundError: a path does not exist, or a folder holds no DICOM series.
            ValueError: SimpleITK cannot read a file (the message names it).
        """
        images = [self._read_one(str(name)) for name in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def _read_one(self, name: str) -> sitk.Image:
        if not os.path.exists(name):
            raise FileNotFoundError(f"image file not found: {name}")
        files = dicom_series_files(name, self.series_uid) if os.path.isdir(name) else [name]
        try:
            return sitk.ReadImage(files if len(files) > 1 else files[0])
        except RuntimeError as e:
            raise ValueError(f"cannot read image {name}: {_sitk_error_summary(e)}") from e

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """Array (x, y, z[, c]) and meta dict of one image, or images stacked along a new first axis."""
        arrays, meta = [], {}
        for image in img if isinstance(img, (list, tuple)) else [img]:  # not ensure_tuple: an Image is iterable
            array = self._array(image)
            header = self._meta(image)
            if self.channel_dim is None:  # ITKReader's default: no channel for scalar images, last for vectors
                no_channel = array.ndim == len(header[MetaKeys.SPATIAL_SHAPE])
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if no_channel else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            arrays.append(array)
            _copy_compatible_dict(header, meta)  # MONAI's own merging rules for multi-file reads
        return _stack_images(arrays, meta), meta

    def _array(self, image: sitk.Image) -> np.ndarray:
        """SimpleITK's (z, y, x[, c]) array with spatial axes reversed to (x, y, z[, c])."""
        array = sitk.GetArrayFromImage(image)
        spatial = image.GetDimension()
        order = tuple(reversed(range(spatial))) + tuple(range(spatial, array.ndim))
        return np.ascontiguousarray(array.transpose(order))

    def _meta(self, image: sitk.Image) -> dict:
        header = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys() if not key.startswith("ITK_")}
        rank = min(image.GetDimension(), 3)
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(image.GetDimension(), -1)
        spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
        affine = np.eye(rank + 1)
        affine[:rank, :rank] = direction[:rank, :rank] @ np.diag(spacing[:rank])
        affine[:rank, -1] = np.asarray(image.GetOrigin(), dtype=np.float64)[:rank]
        if self.affine_lps_to_ras:
            affine = orientation_ras_lps(affine)
        size = list(image.GetSize())
        if isinstance(self.channel_dim, int):
            size.pop(self.channel_dim)
        header["spacing"] = spacing
        header[MetaKeys.ORIGINAL_AFFINE] = affine
        header[MetaKeys.AFFINE] = affine.copy()
        header[MetaKeys.SPATIAL_SHAPE] = np.asarray(size[:rank])
        header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
        return header


def _sitk_error_summary(error: RuntimeError) -> str:
    """The informative line of a SimpleITK exception (they start with the C++ source location)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown SimpleITK error"
