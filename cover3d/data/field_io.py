"""Displacement fields and volumes as ITK images: cover3d voxel fields <-> ITK/ANTs displacement-field files.

cover3d fields are ``(3, X, Y, Z)`` in **voxels** of a volume's grid, whose 4x4 ``affine`` (MONAI MetaTensor
convention) maps voxel indices to **RAS** world mm. ITK works in **LPS** world mm (x and y negated). The exported
vector at voxel ``p`` is ``L A psi(p)``: ``A`` = the affine's 3x3 part (direction x spacing), ``L = diag(-1, -1, 1)``.
Because cover3d warps backward (``x_b(p) = x_a(p + psi(p))``) and an ITK transform maps points of the output
(fixed) space to the input (moving) space, the exported field used as a ``sitk.DisplacementFieldTransform`` in
``sitk.Resample(moving=x_a, reference=field grid)`` reproduces ``cover3d.fields.warp(x_a, psi)``.

Files are what ITK itself writes for a 3-component float64 vector image (``sitk.WriteImage``): NIfTI intent code
1007 (vector), shape ``(X, Y, Z, 1, 3)``, components in LPS mm, as ANTs displacement ("Warp") fields. Not the
RAS-component convention of intent 1006 (``NIFTI_INTENT_DISPVECT``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

__all__ = [
    "FIELD_SUFFIXES",
    "ItkGeometry",
    "field_from_itk_image",
    "field_to_itk_image",
    "itk_geometry",
    "read_displacement_field",
    "read_displacement_field_transform",
    "to_itk_image",
    "write_displacement_field",
]

FIELD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class ItkGeometry(NamedTuple):
    """ITK image geometry in LPS mm: ``origin`` (3,), ``spacing`` (3,), ``direction`` (9,) row-major, columns = axes."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]


def _affine_array(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    array = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    array = array.astype(np.float64)
    if array.shape != (4, 4) or not np.all(np.isfinite(array)):
        raise ValueError(f"affine must be a finite 4x4 voxel-to-RAS matrix, got shape {array.shape}")
    return array


def itk_geometry(affine: np.ndarray | torch.Tensor) -> ItkGeometry:
    """ITK geometry of the grid whose voxel-to-RAS-mm matrix is ``affine`` (4x4, e.g. ``MetaTensor.affine``).

    Raises:
        ValueError: the affine is not 4x4 and finite, has a zero-length axis, or shears (its axes are not
            orthogonal): ITK images have orthonormal directions.
    """
    affine = _affine_array(affine)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length voxel axis (spacing {spacing.tolist()})")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine shears (its voxel axes are not orthogonal); an ITK image cannot represent that grid")
    return ItkGeometry(
        origin=tuple((_RAS_TO_LPS @ affine[:3, 3]).tolist()),
        spacing=tuple(spacing.tolist()),
        direction=tuple((_RAS_TO_LPS @ direction).ravel().tolist()),
    )


def _grid_affine(image: sitk.Image) -> np.ndarray:
    """Voxel-to-RAS-mm 4x4 matrix of an ITK image's grid."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return affine


def _with_geometry(image: sitk.Image, affine: np.ndarray | torch.Tensor) -> sitk.Image:
    geometry = itk_geometry(affine)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_itk_image(volume: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor) -> sitk.Image:
    """Scalar float32 ITK image of ``volume`` ``(X, Y, Z)`` or ``(1, X, Y, Z)`` on the grid of ``affine`` (voxel->RAS).

    Raises:
        ValueError: ``volume`` is not one 3D scalar volume, or the affine is unusable (see :func:`itk_geometry`).
    """
    array = _as_numpy(volume).astype(np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"volume must have shape (X, Y, Z) or (1, X, Y, Z), got {tuple(np.shape(volume))}")
    return _with_geometry(sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0))), affine)


def field_to_itk_image(ddf: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor) -> sitk.Image:
    """ITK displacement field (``sitkVectorFloat64``, LPS mm) of ``ddf`` ``(3, X, Y, Z)`` or ``(1, 3, X, Y, Z)`` in
    voxels of the grid whose voxel-to-RAS-mm matrix is ``affine``; the image has that grid's geometry.

    ``sitk.DisplacementFieldTransform(field_to_itk_image(ddf, affine))`` maps the physical point of voxel ``p`` to the
    physical point of ``p + ddf(p)``.

    Raises:
        ValueError: ``ddf`` is not one 3D field, or the affine is unusable (see :func:`itk_geometry`).
    """
    field = _as_numpy(ddf).astype(np.float64)
    if field.ndim == 5 and field.shape[0] == 1:
        field = field[0]
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"ddf must have shape (3, X, Y, Z) or (1, 3, X, Y, Z) in voxels, got {tuple(np.shape(ddf))}")
    linear = _RAS_TO_LPS @ _affine_array(affine)[:3, :3]
    physical = np.einsum("ij,jxyz->zyxi", linear, field)  # LPS mm, laid out as SimpleITK's (z, y, x, component)
    return _with_geometry(sitk.GetImageFromArray(np.ascontiguousarray(physical), isVector=True), affine)


def field_from_itk_image(image: sitk.Image) -> tuple[torch.Tensor, np.ndarray]:
    """Inverse of :func:`field_to_itk_image`: ``(ddf (3, X, Y, Z) float32 voxels, affine 4x4 voxel-to-RAS mm)``.

    ``image`` is a 3D image of 3-vectors in LPS mm (e.g. read from an ITK/ANTs displacement-field file, or made by
    ``sitk.TransformToDisplacementField``).

    Raises:
        ValueError: ``image`` is not a 3D image of 3-component vectors.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(
            f"a displacement field must be a 3D image of 3-vectors, got a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    affine = _grid_affine(image)
    physical = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x, 3), LPS mm
    to_voxels = np.linalg.inv(_RAS_TO_LPS @ affine[:3, :3])
    ddf = np.einsum("ij,zyxj->ixyz", to_voxels, physical)
    return torch.from_numpy(np.ascontiguousarray(ddf, dtype=np.float32)), affine


def _check_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.name.lower().endswith(FIELD_SUFFIXES):
        raise ValueError(f"displacement field file {path} must end with one of {', '.join(FIELD_SUFFIXES)}")
    return path


def write_displacement_field(
    ddf: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor, path: str | os.PathLike
) -> Path:
    """Write ``ddf`` ``(3, X, Y, Z)`` (voxels of the grid of ``affine``, voxel -> RAS mm) as an ITK displacement field.

    The file holds float64 LPS-mm vectors on that grid (NIfTI: intent 1007, shape ``(X, Y, Z, 1, 3)``), the pixel
    type ITK's displacement-field transform requires, so plain SimpleITK opens it without cover3d
    (``sitk.DisplacementFieldTransform(sitk.ReadImage(path))``), as do ANTs (``antsApplyTransforms -t
    field.nii.gz``) and other ITK tools. Parent folders are created. Returns the path.

    Raises:
        ValueError: bad ``ddf``/``affine`` (see :func:`field_to_itk_image`) or a suffix other than ``FIELD_SUFFIXES``.
    """
    path = _check_suffix(path)
    image = field_to_itk_image(ddf, affine)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.lower().endswith(".gz"))
    return path


def _read_field_image(path: str | os.PathLike) -> sitk.Image:
    path = _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"displacement field file not found: {path}")
    try:
        image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    except RuntimeError as e:
        raise ValueError(f"cannot read displacement field {path}: {str(e).strip().splitlines()[-1]}") from e
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(
            f"{path} is not a 3D displacement field: {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return image


def read_displacement_field(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    """Read an ITK displacement-field file as ``(ddf (3, X, Y, Z) voxels, affine 4x4 voxel-to-RAS mm)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad suffix, unreadable file, or not a 3D field of 3-vectors (the message names the file).
    """
    return field_from_itk_image(_read_field_image(path))


def read_displacement_field_transform(path: str | os.PathLike) -> sitk.DisplacementFieldTransform:
    """Read an ITK displacement-field file as a ``sitk.DisplacementFieldTransform`` (linear interpolation of the field).

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad suffix, unreadable file, or not a 3D field of 3-vectors (the message names the file).
    """
    return sitk.DisplacementFieldTransform(_read_field_image(path))
