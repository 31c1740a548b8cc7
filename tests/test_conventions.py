"""Field conventions: backward warping in voxel units, pyramid resampling, composition."""

import pytest
import torch

from cover3d.fields import compose_fields, downsample_field, upsample_field, warp


def smooth_volume(shape=(24, 28, 20)) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape], indexing="ij")
    return (torch.sin(3 * grids[0]) * torch.cos(2 * grids[1]) + grids[2] ** 2)[None, None]


def smooth_field(shape, amplitude) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.linspace(0, 3.1416, n) for n in shape], indexing="ij")
    return amplitude * torch.stack([torch.sin(grids[1]), torch.cos(grids[2]), torch.sin(grids[0] + grids[1])])[None]


def test_zero_field_is_identity():
    x = torch.rand(2, 3, 10, 12, 14)
    # exact up to float32 rounding of the grid normalisation inside grid_sample
    assert torch.allclose(warp(x, torch.zeros(2, 3, 10, 12, 14)), x, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shift", [(1, 0, 0), (0, -2, 0), (2, 1, -3)])
def test_integer_shift_is_backward_in_voxels(shift):
    x = torch.rand(1, 1, 12, 12, 12)
    ddf = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 12, 12, 12)
    out = warp(x, ddf)
    # out(p) = x(p + shift) wherever p + shift is inside; zeros elsewhere
    expected = torch.zeros_like(x)
    dst = tuple(slice(max(0, -s), 12 - max(0, s)) for s in shift)
    src = tuple(slice(max(0, s), 12 - max(0, -s)) for s in shift)
    expected[(..., *dst)] = x[(..., *src)]
    assert torch.allclose(out, expected, atol=1e-5)


def test_upsampling_doubles_values_and_round_trips():
    constant = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1).expand(1, 3, 4, 6, 8).contiguous()
    up = upsample_field(constant, 2)
    assert up.shape == (1, 3, 8, 12, 16)
    assert torch.allclose(up, 2 * constant[..., :1, :1, :1].expand_as(up))
    assert torch.allclose(downsample_field(up, 2), constant)


def test_upsampled_field_moves_the_same_physical_distance():
    # A coarse field of d coarse voxels warps the average-pooled image like the fine field warps the fine image.
    fine = smooth_volume((32, 32, 32))
    coarse_field = torch.tensor([1.0, -0.5, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, 16, 16, 16).contiguous()
    warped_fine = warp(fine, upsample_field(coarse_field, 2))
    warped_coarse = warp(torch.nn.functional.avg_pool3d(fine, 2), coarse_field)
    inner = (..., slice(3, -3), slice(3, -3), slice(3, -3))
    assert torch.allclose(torch.nn.functional.avg_pool3d(warped_fine, 2)[inner], warped_coarse[inner], atol=2e-3)


def test_composition_matches_sequential_warps():
    shape = (24, 28, 20)
    x = smooth_volume(shape)
    first, second = smooth_field(shape, 1.5), smooth_field(shape, -1.0).flip(2)
    sequential = warp(warp(x, first), second)
    composed = warp(x, compose_fields(first, second))
    inner = (..., slice(4, -4), slice(4, -4), slice(4, -4))
    assert (sequential - composed)[inner].abs().max() < 5e-3
    # and it is not trivially true: skipping the inner warp of `first` is clearly wrong
    assert (sequential - warp(x, first + second))[inner].abs().max() > 2e-2


def test_bad_field_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        warp(torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8))
