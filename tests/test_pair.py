"""Tests of the COVER pair generator: field conventions, mask, seeding, inputs, MONAI parity, reach."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Affine, Identity

from cover3d.fields import warp
from cover3d.transforms.appearance import appearance_augmentation
from cover3d.transforms.deformation import (
    RandDeformationField,
    affine_matrix,
    control_grid_shape,
    smooth_deformation_field,
)
from cover3d.transforms.pair import CoverPair, CoverPaird, foreground_fraction, fraction_within_reach

PATCH, CONTEXT = 32, 48
WAVES = ((0.21, 0.0, 0.13, 0.3), (0.0, 0.17, 0.11, 1.1), (0.15, 0.19, 0.0, 2.0))  # (k0, k1, k2, phase), rad/voxel


def smooth_function(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Sum of plane sines evaluated at continuous voxel coordinates (wavelengths ~25-50 voxels)."""
    return sum(torch.sin(k0 * c0 + k1 * c1 + k2 * c2 + ph) for k0, k1, k2, ph in WAVES) / 3 + 0.5


def smooth_volume(shape: tuple[int, int, int]) -> torch.Tensor:
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    return smooth_function(*grid).to(torch.float32)[None]


def identity_pair(**kwargs) -> CoverPair:
    """Pair with no appearance change, so view a is the plain context crop."""
    return CoverPair(PATCH, CONTEXT, appearance=Identity(), **kwargs)


def target_coords(ddf: torch.Tensor) -> list[torch.Tensor]:
    """p + ddf(p) per axis, in voxels of view a's patch."""
    return [ddf[i].double() + torch.arange(n, dtype=torch.float64).view([-1 if j == i else 1 for j in range(3)])
            for i, n in enumerate(ddf.shape[1:])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_view_b_is_warp_of_unaugmented_view_a(seed):
    volume = smooth_volume((60, 55, 70))
    pair = identity_pair().set_random_state(seed)
    sample = pair(volume)
    valid = sample.mask[0] > 0.5
    assert valid.float().mean() > 0.3
    warped = warp(sample.image_a[None], sample.ddf[None])[0, 0]
    assert (warped - sample.image_b[0])[valid].abs().max() < 1e-4  # measured ~1e-6 (same samples, float32 rounding)
    # Independent of grid_sample: view b against the analytic function at p + offset + start + psi(p).
    shift = [o + s for o, s in zip(pair.offset, pair.context_start)]
    exact = smooth_function(*[c + s for c, s in zip(target_coords(sample.ddf), shift)])
    # trilinear error bound sum_i max|f_ii| / 8 = 0.0067; measured 0.0065
    assert (exact.float() - sample.image_b[0])[valid].abs().max() < 0.008


def test_view_b_equals_warp_of_context_then_crop():
    volume = smooth_volume((CONTEXT,) * 3)  # the context is the whole volume
    pair = identity_pair().set_random_state(3)
    sample = pair(volume)
    window = tuple(slice(o, o + PATCH) for o in pair.offset)
    context_field = torch.zeros(1, 3, CONTEXT, CONTEXT, CONTEXT)
    context_field[(0, slice(None), *window)] = sample.ddf
    cropped = warp(volume[None], context_field)[(0, slice(None), *window)]
    torch.testing.assert_close(cropped, sample.image_b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("margin", [0, 3])
def test_mask_is_thresholded_warp_of_ones(margin):
    pair = identity_pair(mask_margin=margin).set_random_state(4)
    sample = pair(torch.rand(1, 50, 50, 50))
    box = torch.zeros(1, 1, PATCH, PATCH, PATCH)
    inner = slice(margin, PATCH - margin)
    box[0, 0, inner, inner, inner] = 1.0  # trilinear warp of this box is 1 exactly where p + psi(p) is inside it
    thresholded = warp(box, sample.ddf[None])[0] > 1 - 1e-4
    disagree = thresholded != (sample.mask > 0.5)
    coords = target_coords(sample.ddf)
    distance = torch.stack([torch.minimum(c - margin, PATCH - 1 - margin - c) for c in coords]).amin(0)
    assert (distance[disagree[0]].abs() < 1e-3).all()  # only at the boundary tolerance
    assert disagree.float().mean() < 1e-3
    assert 0.3 < sample.mask.mean() < 1.0


def test_same_seed_same_pair_different_seed_different():
    appearance = dict(noise_prob=1.0, gamma_prob=1.0, blur_prob=1.0, bias_prob=1.0, dropout_prob=1.0)
    volume = np.random.default_rng(0).random((1, 70, 64, 60), dtype=np.float32)

    def make(seed):
        t = CoverPaird("image", PATCH, CONTEXT, appearance=appearance_augmentation("mri", **appearance), reach=8.0)
        return t.set_random_state(seed)

    original = volume.copy()
    first, second, other = make(5), make(5), make(6)
    for _ in range(2):  # successive draws stay in step
        a, b, c = first({"image": volume}), second({"image": volume}), other({"image": volume})
        for key in ("image", "image_b", "ddf", "mask", "reach_fraction"):
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
        assert not torch.equal(a["ddf"], c["ddf"])
        assert not torch.equal(a["image"], c["image"])
    np.testing.assert_array_equal(volume, original)  # in-place appearance steps must not reach the input


def test_numpy_torch_and_metatensor_inputs_agree():
    volume = np.random.default_rng(1).random((1, 52, 50, 49))  # float64
    outputs = [
        CoverPair(PATCH, CONTEXT).set_random_state(7)(x)
        for x in (volume, torch.from_numpy(volume), MetaTensor(torch.from_numpy(volume), affine=torch.eye(4) * 2))
    ]
    for sample in outputs:
        for name, value in sample._asdict().items():
            assert type(value) is torch.Tensor and value.dtype == torch.float32, name
        for reference, value in zip(outputs[0], sample):
            torch.testing.assert_close(value, reference)
    ints = CoverPair(PATCH, CONTEXT)(np.zeros((1, 60, 60, 60), dtype=np.int16))
    assert ints.image_b.dtype == torch.float32


def test_small_volume_is_padded_centred():
    rng = np.random.default_rng(2)
    volume = rng.random((1, 40, 100, 30), dtype=np.float32)
    still = RandDeformationField(0.0, 0.0, 0.0, 0.0, nonrigid_std=0.0)
    pair = CoverPair(PATCH, CONTEXT, random_offset=False, deformation=still, appearance=Identity()).set_random_state(0)
    sample = pair(volume)
    start = pair.context_start[1]
    # zeros (48 - n) // 2 before and after along the short axes
    expected = np.pad(volume[:, :, start : start + CONTEXT], [(0, 0), (4, 4), (0, 0), (9, 9)])
    window = slice(8, 8 + PATCH)  # centred patch offset (48 - 32) // 2
    np.testing.assert_array_equal(sample.image_a.numpy(), expected[:, window, window, window])
    assert (sample.image_a[..., 0] == 0).all() and (sample.image_a[..., 1] != 0).any()


def test_zero_magnitudes_give_zero_field_and_identical_views():
    still = RandDeformationField(0.0, 0.0, 0.0, 0.0, nonrigid_std=0.0)
    pair = CoverPair(PATCH, CONTEXT, deformation=still, appearance=Identity()).set_random_state(1)
    sample = pair(torch.rand(1, 60, 60, 60))
    assert torch.equal(sample.ddf, torch.zeros_like(sample.ddf))
    assert torch.equal(sample.mask, torch.ones_like(sample.mask))
    torch.testing.assert_close(sample.image_b, sample.image_a, atol=1e-5, rtol=0)


def test_affine_field_matches_monai_affine():
    shape = (40, 44, 48)
    volume = smooth_volume(shape)
    rotation, scale, shear = (7.0, -5.0, 9.0), (1.08, 0.93, 1.05), (0.04, -0.03, 0.02, 0.05, -0.01, 0.03)
    interior = (slice(None), slice(8, -8), slice(8, -8), slice(8, -8))
    ours = warp(volume[None], smooth_deformation_field(shape, rotation, scale, shear)[None])[0]
    monai_params = Affine(rotate_params=[math.radians(r) for r in rotation], scale_params=scale, shear_params=shear,
                          padding_mode="zeros", image_only=True)(volume)
    torch.testing.assert_close(ours[interior], monai_params.as_tensor()[interior], atol=1e-4, rtol=0)  # measured 1.5e-6
    translation = (3.0, -2.0, 4.5)
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = affine_matrix(rotation, scale, shear), translation
    ours = warp(volume[None], smooth_deformation_field(shape, rotation, scale, shear, translation)[None])[0]
    monai_matrix = Affine(affine=torch.as_tensor(matrix), padding_mode="zeros", image_only=True)(volume)
    torch.testing.assert_close(ours[interior], monai_matrix.as_tensor()[interior], atol=1e-4, rtol=0)


def test_bspline_term_reproduces_constant_displacements():
    shape, spacing = (33, 20, 41), 8
    grid = control_grid_shape(shape, spacing)
    constant = torch.tensor([1.5, -2.0, 0.5]).view(3, 1, 1, 1).expand(3, *grid)
    field = smooth_deformation_field(shape, control_displacements=constant, control_spacing=spacing)
    torch.testing.assert_close(field, constant[:, :1, :1, :1].expand(3, *shape), atol=1e-5, rtol=0)
    rotated = smooth_deformation_field(
        shape, rotation=(0, 0, 90), control_displacements=constant, control_spacing=spacing
    )
    moved = torch.as_tensor(affine_matrix((0, 0, 90)), dtype=torch.float32) @ constant[:, 0, 0, 0]  # A u
    expected = smooth_deformation_field(shape, rotation=(0, 0, 90)) + moved.view(3, 1, 1, 1)
    torch.testing.assert_close(rotated, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="control_displacements must have shape"):
        smooth_deformation_field(shape, control_displacements=torch.zeros(3, 2, 2, 2), control_spacing=spacing)


def test_fraction_within_reach():
    ddf = torch.zeros(3, 4, 4, 4)
    ddf[1, :2] = 5.0
    ddf[2, :1] = -12.0
    mask = torch.ones(1, 4, 4, 4)
    mask[0, 3] = 0.0  # invalid voxels are not counted
    assert fraction_within_reach(ddf, mask, 0.0) == pytest.approx(1 / 3)
    assert fraction_within_reach(ddf, mask, 5.0) == pytest.approx(2 / 3)
    assert fraction_within_reach(ddf, mask, 1e9) == 1.0
    batched = ddf[None].repeat(2, 1, 1, 1, 1), mask[None].repeat(2, 1, 1, 1, 1)
    assert fraction_within_reach(*batched, 0.0) == pytest.approx(1 / 3)
    assert math.isnan(fraction_within_reach(ddf, torch.zeros_like(mask), 1.0))
    with pytest.raises(ValueError, match="expected ddf"):
        fraction_within_reach(ddf, mask[None], 1.0)


def test_default_pairs_are_within_reach():
    transform = CoverPaird(reach=40.0).set_random_state(0)  # defaults: patch 64^3, context 96^3
    fractions, valid = [], []
    for _ in range(6):
        d = transform({"image": torch.rand(1, 110, 100, 120)})
        assert d["image"].shape == d["image_b"].shape == (1, 64, 64, 64) and d["ddf"].shape == (3, 64, 64, 64)
        assert d["reach_fraction"] == fraction_within_reach(d["ddf"], d["mask"], 40.0)
        fractions.append(d["reach_fraction"])
        valid.append(float(d["mask"].mean()))
    assert min(fractions) >= 0.99
    assert 0.6 < np.mean(valid) < 0.95  # measured 0.81 over 200 draws


def test_mask_background_removes_exactly_the_background_voxels():
    # a smooth object in [0.3, 1.0] filling the middle of the volume; empty (0.02) background, zero context padding
    volume = torch.full((1, 40, 70, 70), 0.02)
    volume[:, :, 20:50, 15:55] = 0.3 + 0.7 * smooth_volume((40, 30, 40))
    threshold = 0.1
    plain = CoverPaird("image", PATCH, CONTEXT, background_threshold=threshold).set_random_state(3)
    masked = CoverPaird("image", PATCH, CONTEXT, mask_background=True, background_threshold=threshold)
    d_plain, d_masked = plain({"image": volume}), masked.set_random_state(3)({"image": volume})
    for key in ("image", "image_b", "ddf"):  # same random stream: only the mask differs
        torch.testing.assert_close(d_masked[key], d_plain[key], rtol=0, atol=0)
    geometric = d_plain["mask"] > 0.5
    background = d_plain["image_b"] <= threshold
    assert (geometric & background).float().mean() > 0.1 and (geometric & ~background).float().mean() > 0.1
    torch.testing.assert_close(d_masked["mask"], (geometric & ~background).float(), rtol=0, atol=0)
    expected = float((geometric & ~background).sum() / geometric.sum())
    assert d_plain["foreground_fraction"] == pytest.approx(expected)
    assert foreground_fraction(d_plain["image_b"], d_plain["mask"], threshold) == pytest.approx(expected)
    assert d_masked["foreground_fraction"] == 1.0
    assert "foreground_fraction" not in CoverPaird("image", PATCH, CONTEXT)({"image": volume})


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"channel-first volume \(C, X, Y, Z\)"):
        CoverPair(PATCH, CONTEXT)(np.zeros((50, 50, 50)))
    with pytest.raises(ValueError, match="patch_size <= context_size"):
        CoverPair(64, 48)
    with pytest.raises(ValueError, match="needs a background_threshold"):
        CoverPaird("image", mask_background=True)
    with pytest.raises(ValueError, match="exactly one image key"):
        CoverPaird(["image", "label"])
    with pytest.raises(ValueError, match="modality"):
        appearance_augmentation("pet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_pair_stays_on_device():
    d = CoverPaird("image", PATCH, CONTEXT, appearance=appearance_augmentation("mri"), reach=10.0).set_random_state(0)(
        {"image": torch.rand(1, 60, 60, 60, device="cuda")}
    )
    for key in ("image", "image_b", "ddf", "mask"):
        assert d[key].device.type == "cuda", key
