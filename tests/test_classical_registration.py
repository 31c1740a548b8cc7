"""The classical-registration benchmark estimates cover3d's backward field (sign, axes, units) on a known pair."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from monai.transforms import GaussianSmooth

from cover3d.data.field_io import field_from_itk_image, to_itk_image
from cover3d.fields import warp
from cover3d.metrics import endpoint_error
from cover3d.transforms import smooth_deformation_field

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import classical_registration as cr  # noqa: E402


def test_sitk_methods_recover_a_known_affine_field_in_cover3d_voxels():
    torch.manual_seed(0)
    shape = (40, 36, 32)
    view_a = GaussianSmooth(sigma=2.0)(torch.rand(1, *shape)) * 4
    true = smooth_deformation_field(shape, rotation=(4, -3, 2), translation=(2.5, -1.5, 1.0))
    view_b = warp(view_a[None], true[None])[0]
    grid = np.diag([2.0, 1.5, 2.5, 1.0])  # anisotropic: axes must not be mixed up
    fixed, moving = to_itk_image(view_b, grid), to_itk_image(view_a, grid)
    inside = (warp(torch.ones(1, 1, *shape), true[None]) > 0.999).float()
    inside[..., :4, :, :] = inside[..., -4:, :, :] = 0  # away from the faces, where zero padding enters view b

    zero = endpoint_error(torch.zeros_like(true)[None], true[None], inside).item()
    for method in (cr.affine, cr.demons):
        field, _ = field_from_itk_image(method(fixed, moving, True))
        error = endpoint_error(field[None], true[None], inside).item()
        assert error < 0.3 * zero, (method.__name__, error, zero)
