"""ITK export of cover3d fields: SimpleITK resampling with the exported field equals cover3d's own warp."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import GaussianSmooth, LoadImage, Orientation

from cover3d.data.field_io import (
    field_from_itk_image,
    field_to_itk_image,
    itk_geometry,
    read_displacement_field,
    read_displacement_field_transform,
    to_itk_image,
    write_displacement_field,
)
from cover3d.fields import warp
from cover3d.transforms import smooth_deformation_field
from cover3d.transforms.deformation import control_grid_shape

SPACING = np.array([0.8, 1.1, 2.4])
AXIS_SWAP_FLIP = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # file axes -> -y, +z, -x (RAS)


def oblique() -> np.ndarray:
    a, b = math.radians(25), math.radians(-40)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return rz @ rx @ AXIS_SWAP_FLIP


def write_test_volume(path, direction: np.ndarray, shape=(30, 26, 20)) -> None:
    """Smooth random anisotropic volume with the given RAS direction (columns = file axes) and a non-zero origin."""
    noise = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    volume = GaussianSmooth(sigma=2.0)(noise)[0].numpy()
    affine = np.eye(4)
    affine[:3, :3] = direction * SPACING
    affine[:3, 3] = [12.0, -30.0, 5.0]
    nib.save(nib.Nifti1Image(volume, affine), str(path))


def random_field(shape) -> torch.Tensor:
    torch.manual_seed(0)
    control = torch.randn(3, *control_grid_shape(shape, 8)) * 2.0
    return smooth_deformation_field(
        shape, rotation=(5, 3, 4), translation=(1.5, -1.0, 0.5), control_displacements=control, control_spacing=8
    )


def sampled_inside(ddf: torch.Tensor) -> np.ndarray:
    """Voxels p with p + ddf(p) inside [0, size - 1] on every axis (where zero padding plays no role)."""
    shape = ddf.shape[1:]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    target = grid + ddf.numpy()
    return np.all((target >= 0) & (target <= np.array(shape)[:, None, None, None] - 1), axis=0)


@pytest.mark.parametrize("direction", [AXIS_SWAP_FLIP, oblique()], ids=["axis-swap-flip", "oblique"])
def test_sitk_resample_with_exported_field_equals_cover3d_warp(direction, tmp_path):
    write_test_volume(tmp_path / "volume.nii.gz", direction)
    # the user path: MONAI loading (RAS affine) and reorientation, field predicted on that grid
    image = Orientation("RAS")(LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "volume.nii.gz")))
    ddf = random_field(image.shape[1:])
    ours = warp(image.as_tensor()[None], ddf[None])[0, 0].numpy()
    path = write_displacement_field(ddf, image.affine, tmp_path / "field.nii.gz")

    # ITK side: the original file as read by SimpleITK (its own LPS geometry, original axis order)
    moving = sitk.ReadImage(str(tmp_path / "volume.nii.gz"), sitk.sitkFloat32)
    reference = sitk.ReadImage(str(path))
    resampled = sitk.Resample(moving, reference, read_displacement_field_transform(path), sitk.sitkLinear, 0.0)
    theirs = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)

    inside = sampled_inside(ddf)
    assert inside.mean() > 0.6
    scale = np.abs(ours).max()
    assert np.abs(ours - image[0].numpy())[inside].max() > 0.2 * scale  # the field really moves the content
    np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-5 * scale)


def test_vectors_are_lps_millimetres_and_the_file_is_an_itk_vector_nifti(tmp_path):
    write_test_volume(tmp_path / "volume.nii.gz", AXIS_SWAP_FLIP)
    image = Orientation("RAS")(LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "volume.nii.gz")))
    affine = image.affine.numpy()
    shape = image.shape[1:]
    ddf = torch.zeros(3, *shape)
    ddf[0] = 1.0  # one voxel along tensor axis 0
    path = write_displacement_field(ddf, image.affine, tmp_path / "field.nii.gz")

    header = nib.load(str(path)).header
    assert header.get_intent()[0] == "vector" and int(header["intent_code"]) == 1007
    assert nib.load(str(path)).shape == (*shape, 1, 3)
    assert header.get_xyzt_units()[0] == "mm" and header.get_data_dtype() == np.float64
    lps = np.diag([-1.0, -1.0, 1.0])
    expected = lps @ affine[:3, 0]  # axis 0 step in LPS mm; after RAS reorientation it is the file's 2.4 mm axis
    assert np.isclose(np.linalg.norm(expected), 2.4)
    vectors = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_allclose(vectors.reshape(-1, 3), np.broadcast_to(expected, (vectors.size // 3, 3)), atol=1e-6)

    transform = read_displacement_field_transform(path)
    assert isinstance(transform, sitk.DisplacementFieldTransform)
    voxel = np.array([3.0, 7.0, 5.0])
    point = lps @ (affine[:3, :3] @ voxel + affine[:3, 3])
    moved = lps @ (affine[:3, :3] @ (voxel + [1.0, 0.0, 0.0]) + affine[:3, 3])
    np.testing.assert_allclose(transform.TransformPoint(tuple(point)), moved, atol=1e-5)
    # SimpleITK's own reading of the volume agrees on where that voxel is (geometry from the MONAI affine)
    reference = sitk.ReadImage(str(path))
    np.testing.assert_allclose(reference.TransformContinuousIndexToPhysicalPoint(tuple(voxel)), point, atol=1e-5)


def test_read_back_and_conversion_from_itk_transforms(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = oblique() * SPACING
    affine[:3, 3] = [4.0, 5.0, -6.0]
    ddf = random_field((20, 18, 16))
    path = write_displacement_field(ddf, affine, tmp_path / "sub" / "field.nii.gz")
    read, read_affine = read_displacement_field(path)
    torch.testing.assert_close(read, ddf, atol=1e-5, rtol=0)
    np.testing.assert_allclose(read_affine, affine, atol=1e-5)

    # a field made by ITK itself (a physical translation) converts to the expected voxel displacement
    shift_lps = np.array([2.0, -1.0, 3.0])
    reference = to_itk_image(torch.zeros(20, 18, 16), affine)
    itk_field = sitk.TransformToDisplacementField(
        sitk.TranslationTransform(3, tuple(shift_lps)), sitk.sitkVectorFloat64, reference.GetSize(),
        reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection(),
    )  # fmt: skip
    voxels, grid = field_from_itk_image(itk_field)
    expected = np.linalg.solve(affine[:3, :3], np.diag([-1.0, -1.0, 1.0]) @ shift_lps)
    per_voxel = voxels.reshape(3, -1).T.numpy()
    np.testing.assert_allclose(per_voxel, np.broadcast_to(expected, per_voxel.shape), atol=1e-5)
    np.testing.assert_allclose(grid, affine, atol=1e-6)
    assert field_to_itk_image(voxels, grid).GetPixelID() == sitk.sitkVectorFloat64


def test_plain_simpleitk_opens_the_exported_field_and_moves_points_by_it(tmp_path):
    """No cover3d reader: ``sitk.DisplacementFieldTransform(sitk.ReadImage(f))`` maps each voxel's point to the point
    of ``voxel + ddf(voxel)``."""
    from cover3d.data import read_displacement_field_transform as exported_reader

    affine = np.eye(4)
    affine[:3, :3] = oblique() * SPACING
    affine[:3, 3] = [4.0, 5.0, -6.0]
    ddf = random_field((20, 18, 16))
    path = write_displacement_field(ddf, affine, tmp_path / "field.nii.gz")
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkVectorFloat64
    transform = sitk.DisplacementFieldTransform(image)
    lps = np.diag([-1.0, -1.0, 1.0])
    voxels = np.random.default_rng(1).integers(0, [20, 18, 16], size=(25, 3))
    for voxel in voxels:
        point = lps @ (affine[:3, :3] @ voxel + affine[:3, 3])
        target = lps @ (affine[:3, :3] @ (voxel + ddf[:, voxel[0], voxel[1], voxel[2]].numpy()) + affine[:3, 3])
        np.testing.assert_allclose(transform.TransformPoint(tuple(point)), target, rtol=0, atol=1e-6)
    assert float(np.abs(ddf).max()) > 1.0  # the points really move
    point = tuple(lps @ (affine[:3, :3] @ voxels[0] + affine[:3, 3]))
    assert exported_reader(path).TransformPoint(point) == transform.TransformPoint(point)


def test_bad_inputs_raise_clear_errors(tmp_path):
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="shears"):
        itk_geometry(sheared)
    with pytest.raises(ValueError, match="4x4"):
        itk_geometry(np.eye(3))
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        field_to_itk_image(torch.zeros(2, 4, 4, 4), np.eye(4))
    with pytest.raises(ValueError, match="field.txt"):
        write_displacement_field(torch.zeros(3, 4, 4, 4), np.eye(4), tmp_path / "field.txt")
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        read_displacement_field_transform(tmp_path / "absent.nii.gz")
    write_test_volume(tmp_path / "scalar.nii.gz", AXIS_SWAP_FLIP)
    with pytest.raises(ValueError, match="scalar.nii.gz"):
        read_displacement_field(tmp_path / "scalar.nii.gz")
