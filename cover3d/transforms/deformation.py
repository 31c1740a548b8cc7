"""Random smooth 3D deformations as dense displacement fields (voxel units, ``cover3d.fields`` conventions).

The sampling map is ``phi = phi_affine o phi_nonrigid``: ``phi(p) = c + A (p + u(p) - c) + t`` with ``c`` the grid
centre, ``A = R @ Sh @ Sc`` (MONAI's rotation, shear and scale matrices, in MONAI's order) and ``u`` a cubic
B-spline interpolation of displacements on a coarse control grid. The returned field is ``psi(p) = phi(p) - p``,
to be used as ``x_b = cover3d.fields.warp(x_a, psi)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Randomizable
from monai.transforms.utils import create_rotate, create_scale, create_shear
from monai.utils import ensure_tuple_rep

__all__ = ["affine_matrix", "control_grid_shape", "smooth_deformation_field", "RandDeformationField"]


def affine_matrix(
    rotation: Sequence[float] = (0.0, 0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    shear: Sequence[float] = (0.0,) * 6,
) -> np.ndarray:
    """3x3 float64 matrix ``R @ Sh @ Sc`` built with MONAI's ``create_rotate/create_shear/create_scale``.

    ``rotation`` is in **degrees** about axes 0, 1, 2 (MONAI's "XYZ" order); ``scale`` is per-axis factors
    (1 = identity; > 1 samples farther from the centre, so content looks smaller); ``shear`` holds MONAI's six
    3D shear coefficients. Same parameters as ``monai.transforms.Affine(rotate_params=radians, ...)``.
    """
    radians = [math.radians(float(r)) for r in ensure_tuple_rep(rotation, 3)]
    matrix = create_rotate(3, radians) @ create_shear(3, tuple(float(s) for s in ensure_tuple_rep(shear, 6)))
    return (matrix @ create_scale(3, tuple(float(s) for s in ensure_tuple_rep(scale, 3))))[:3, :3]


def control_grid_shape(spatial_size: Sequence[int], control_spacing: int) -> tuple[int, int, int]:
    """Control points per axis: one every ``control_spacing`` voxels, centred, plus one each side (cubic support)."""
    if control_spacing < 1:
        raise ValueError(f"control_spacing must be >= 1 voxel, got {control_spacing}")
    return tuple(math.ceil((int(n) - 1) / control_spacing) + 3 for n in spatial_size)  # type: ignore[return-value]


def _bspline_weights(size: int, num_control: int, spacing: int, device, dtype) -> torch.Tensor:
    """``(size, num_control)`` cubic B-spline weights of control point k at voxel p (rows sum to 1)."""
    positions = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    knots = (torch.arange(num_control, device=device, dtype=dtype) - (num_control - 1) / 2) * spacing
    t = ((positions[:, None] - knots[None, :]) / spacing).abs()
    inner = (4 - 6 * t**2 + 3 * t**3) / 6
    outer = (2 - t).clamp(min=0) ** 3 / 6
    return torch.where(t < 1, inner, outer)


def smooth_deformation_field(
    spatial_size: Sequence[int],
    rotation: Sequence[float] = (0.0, 0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    shear: Sequence[float] = (0.0,) * 6,
    translation: Sequence[float] = (0.0, 0.0, 0.0),
    control_displacements: torch.Tensor | None = None,
    control_spacing: int = 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Field ``psi`` ``(3, *spatial_size)`` (voxels): affine about the grid centre composed with a B-spline term.

    Args:
        spatial_size: grid size ``(X, Y, Z)``; the affine acts about its centre ``(size - 1) / 2``.
        rotation, scale, shear: see :func:`affine_matrix` (degrees, factors, MONAI shear coefficients).
        translation: voxels along each tensor axis (``phi(c) = c + translation``).
        control_displacements: ``(3, *control_grid_shape(spatial_size, control_spacing))`` voxel displacements
            of the control points, or ``None`` for no non-rigid term. They are interpolated with a cubic
            B-spline (C2-continuous, so the field has continuous first and second derivatives).
        control_spacing: voxels between control points.
    """
    size = tuple(int(n) for n in spatial_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"spatial_size must be 3 positive ints, got {spatial_size}")
    matrix = torch.as_tensor(affine_matrix(rotation, scale, shear), device=device, dtype=dtype)
    shift = torch.as_tensor([float(v) for v in ensure_tuple_rep(translation, 3)], device=device, dtype=dtype)
    linear = matrix - torch.eye(3, device=device, dtype=dtype)
    axes = [torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2 for n in size]
    # (A - I)(p - c) + t as a sum of three broadcast outer terms: no meshgrid needed.
    field = (
        linear[:, 0, None, None, None] * axes[0][None, :, None, None]
        + linear[:, 1, None, None, None] * axes[1][None, None, :, None]
        + linear[:, 2, None, None, None] * axes[2][None, None, None, :]
        + shift[:, None, None, None]
    )
    if control_displacements is None:
        return field
    expected = (3, *control_grid_shape(size, control_spacing))
    if tuple(control_displacements.shape) != expected:
        raise ValueError(f"control_displacements must have shape {expected}, got {tuple(control_displacements.shape)}")
    # A is linear, so A u(p) = B-spline interpolation of the control vectors mapped by A (tiny).
    control = torch.einsum("ij,j...->i...", matrix, control_displacements.to(device=device, dtype=dtype))
    wx, wy, wz = (_bspline_weights(n, k, control_spacing, device, dtype) for n, k in zip(size, expected[1:]))
    control = torch.einsum("cijk,zk->cijz", control, wz)
    control = torch.einsum("cijz,yj->ciyz", control, wy)
    return field + torch.einsum("ciyz,xi->cxyz", control, wx)


class RandDeformationField(Randomizable):
    """Draw a random smooth deformation and return its field ``(3, *spatial_size)`` in voxels.

    Every range is symmetric, per axis (a number or one value per axis; six values for shear): rotation
    ``U(-r, r)`` degrees, scale factor ``1 + U(-s, s)``, shear ``U(-h, h)``, translation ``U(-t, t)`` voxels,
    non-rigid control-point displacements ``N(0, nonrigid_std^2)`` voxels every ``control_spacing`` voxels (the
    interpolated field's std is ~0.35x ``nonrigid_std``: the cubic B-spline averages neighbouring points).
    Magnitudes of 0 disable a term.
    """

    def __init__(
        self,
        rotation_range: float | Sequence[float] = 10.0,
        scale_range: float | Sequence[float] = 0.1,
        shear_range: float | Sequence[float] = 0.05,
        translate_range: float | Sequence[float] = 6.0,
        control_spacing: int = 16,
        nonrigid_std: float = 3.0,
    ) -> None:
        self.rotation_range = np.asarray(ensure_tuple_rep(rotation_range, 3), dtype=float)
        self.scale_range = np.asarray(ensure_tuple_rep(scale_range, 3), dtype=float)
        self.shear_range = np.asarray(ensure_tuple_rep(shear_range, 6), dtype=float)
        self.translate_range = np.asarray(ensure_tuple_rep(translate_range, 3), dtype=float)
        ranges = (self.rotation_range, self.scale_range, self.shear_range, self.translate_range)
        if min(r.min() for r in ranges) < 0 or nonrigid_std < 0:
            raise ValueError("RandDeformationField ranges and nonrigid_std must be >= 0")
        if self.scale_range.max() >= 1:
            raise ValueError(f"scale_range must be < 1 (scale factors 1 +/- range), got {scale_range}")
        self.control_spacing = int(control_spacing)
        control_grid_shape((1, 1, 1), self.control_spacing)  # validates the spacing early
        self.nonrigid_std = float(nonrigid_std)
        self.rotation = np.zeros(3)
        self.scale = np.ones(3)
        self.shear = np.zeros(6)
        self.translation = np.zeros(3)
        self.control_displacements: np.ndarray | None = None

    def randomize(self, spatial_size: Sequence[int]) -> None:
        """Draw the affine parameters and the control-point displacements for a grid of ``spatial_size``."""
        self.rotation = self.R.uniform(-self.rotation_range, self.rotation_range)
        self.scale = 1.0 + self.R.uniform(-self.scale_range, self.scale_range)
        self.shear = self.R.uniform(-self.shear_range, self.shear_range)
        self.translation = self.R.uniform(-self.translate_range, self.translate_range)
        self.control_displacements = None
        if self.nonrigid_std > 0:
            shape = (3, *control_grid_shape(spatial_size, self.control_spacing))
            self.control_displacements = self.R.normal(0.0, self.nonrigid_std, size=shape).astype(np.float32)

    def __call__(
        self, spatial_size: Sequence[int], device: torch.device | str | None = None, randomize: bool = True
    ) -> torch.Tensor:
        """Field ``(3, *spatial_size)`` float32 on ``device``; ``randomize=False`` reuses the last draw."""
        if randomize:
            self.randomize(spatial_size)
        control = self.control_displacements
        return smooth_deformation_field(
            spatial_size,
            rotation=self.rotation,
            scale=self.scale,
            shear=self.shear,
            translation=self.translation,
            control_displacements=None if control is None else torch.from_numpy(control),
            control_spacing=self.control_spacing,
            device=device,
        )
