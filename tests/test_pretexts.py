"""Pretext losses, heads and guards: each minimal at its truth and clearly larger away from it."""

import math

import pytest
import torch
from torch import nn

from cover3d.engine import effective_rank, feature_health, loss_inputs, scalar_outputs
from cover3d.fields import warp
from cover3d.losses import (
    ContrastiveLoss,
    CoverLoss,
    CycleConsistencyLoss,
    PretextLoss,
    RelativeLocalisationLoss,
    RestorationLoss,
    VarianceCovarianceLoss,
    VoxelInfoNCELoss,
    voxel_coordinates,
)
from cover3d.metrics import cycle_consistent_field
from cover3d.networks import CoverNet
from cover3d.transforms import genesis_corruption


def coordinate_features(shape, spacing=(1.0, 1.0, 1.0)):
    """(1, 3, *shape) features equal to each voxel's normalised physical position (what the offset target uses)."""
    extent = max((n - 1) * s for n, s in zip(shape, spacing))
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) * s / extent for n, s in zip(shape, spacing)], indexing="ij")
    return torch.stack(grids)[None]


class Difference(nn.Module):
    """A relative-position head that is exact when embeddings are positions: [e_i, e_j] -> e_j - e_i."""

    def forward(self, pairs):
        return pairs[..., 3:] - pairs[..., :3]


def test_voxel_coordinates_unravel_flat_indices():
    indices = torch.tensor([[0, 5, 7 * 6 * 5 - 1, 6 * 5 + 2]])
    expected = torch.stack(torch.unravel_index(indices, (7, 6, 5)), dim=-1).float()
    assert torch.equal(voxel_coordinates(indices, (7, 6, 5)), expected)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.5)])
def test_relative_localisation_is_zero_with_the_true_offsets(spacing):
    torch.manual_seed(0)
    features = coordinate_features((8, 10, 6), spacing).expand(2, -1, -1, -1, -1)
    output = {"features_a": [features], "features_b": [features]}
    loss = RelativeLocalisationLoss(feature_channels=(3,), num_samples=16, spacing=spacing)
    assert loss(output) > 1e-3  # an untrained MLP head
    loss.heads[0] = Difference()
    assert loss(output) < 1e-10
    wrong = RelativeLocalisationLoss(feature_channels=(3,), num_samples=16, spacing=(1.0, 1.0, 1.0))
    wrong.heads[0] = Difference()
    if spacing != (1.0, 1.0, 1.0):
        assert wrong(output) > 1e-3  # the target follows the physical spacing


def test_relative_localisation_trains_its_head_and_reads_the_chosen_levels():
    net = CoverNet(channels=(4, 8, 8, 16, 16), groups=(2, 2, 2, 1, 1), radii=(1, 1, 1, 1, 1)).train()
    loss = RelativeLocalisationLoss(net.backbone.feature_channels, levels=(-1, 2), num_samples=8, hidden=16)
    assert [h.mlp[0].in_features for h in loss.heads] == [8, 16]
    loss(net(torch.rand(1, 2, 16, 16, 16))).backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert net.backbone.conv_0.conv_0.conv.weight.grad.abs().sum() > 0


def smooth_field(size=16, amplitude=1.5):
    grid = torch.linspace(0, 2 * math.pi, size)
    x, y, z = torch.meshgrid(grid, grid, grid, indexing="ij")
    return amplitude * torch.stack([torch.sin(y), torch.cos(z), torch.sin(x + z)])[None]


class FixedPyramid(nn.Module):
    """Stands in for the vector pyramid: returns a given field whatever the features."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, features_a, features_b):
        return [self.field]


def test_cycle_residual_of_an_exact_inverse_pair_is_zero():
    psi_ba = smooth_field(amplitude=0.8)
    psi_ab = -psi_ba.clone()
    for _ in range(60):  # fixed point of psi_ab(p) = -psi_ba(p + psi_ab(p)): psi_ab is the inverse of psi_ba
        psi_ab = -warp(psi_ba, psi_ab, padding_mode="border")
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[..., 3:-3, 3:-3, 3:-3] = 1
    output = {"ddf": psi_ab, "features_a": [], "features_b": []}
    assert CycleConsistencyLoss(FixedPyramid(psi_ba))(output, mask) < 1e-4
    assert CycleConsistencyLoss(FixedPyramid(-psi_ab))(output, mask) > 0.05  # the negated field is not the inverse
    assert CycleConsistencyLoss(FixedPyramid(torch.zeros_like(psi_ab)))(output, mask) > 0.5


def test_cycle_loss_runs_the_real_pyramid_backwards_without_owning_it():
    torch.manual_seed(0)
    net = CoverNet(channels=(4, 8, 8, 16, 16), groups=(2, 2, 2, 1, 1), radii=(1, 1, 1, 1, 1)).train()
    loss = CycleConsistencyLoss(net.pyramid)
    assert list(loss.parameters()) == []  # the pyramid's parameters stay the network's
    output = net(torch.rand(1, 2, 16, 16, 16))
    mask = torch.ones(1, 1, 16, 16, 16)
    value = loss(output, mask)  # an untrained pair of fields: several voxels from inverse
    swapped = net.pyramid(output["features_b"], output["features_a"])[-1]  # psi_ba: the views swapped
    unswapped = net.pyramid(output["features_a"], output["features_b"])[-1]
    assert float(value) == pytest.approx(float(CycleConsistencyLoss(FixedPyramid(swapped))(output, mask)), rel=1e-5)
    assert abs(float(value) - float(CycleConsistencyLoss(FixedPyramid(unswapped))(output, mask))) > 1e-3 * float(value)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pyramid.parameters())
    optimizer = torch.optim.Adam(net.pyramid.parameters(), lr=1e-2)
    image = torch.rand(1, 2, 16, 16, 16)
    losses = []
    for _ in range(10):  # through the swapped-view pass too, the pyramid learns to make its two fields inverse
        optimizer.zero_grad()
        losses.append(loss(net(image), mask))
        losses[-1].backward()
        optimizer.step()
    assert float(losses[-1]) < 0.8 * float(losses[0])  # seeds 0-3: 0.63-0.76


@pytest.fixture
def translated_pair():
    torch.manual_seed(0)
    ddf = torch.tensor([1.5, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand(2, 3, 16, 16, 16).contiguous()
    features_a = torch.randn(2, 32, 16, 16, 16)
    features_b = warp(features_a, ddf)
    mask = (warp(torch.ones(2, 1, 16, 16, 16), ddf) > 0.999).float()
    return ddf, features_a, features_b, mask


def test_infonce_is_lower_for_matched_than_for_shuffled_features(translated_pair):
    ddf, fa, fb, mask = translated_pair
    shuffled = fb.flatten(2)[..., torch.randperm(16**3)].view_as(fb)
    loss = VoxelInfoNCELoss(num_samples=128, temperature=0.1)
    torch.manual_seed(1)
    matched = loss({"features_a": [fa], "features_b": [fb]}, ddf, mask)
    torch.manual_seed(1)
    unmatched = loss({"features_a": [fa], "features_b": [shuffled]}, ddf, mask)
    assert matched < 0.1 and unmatched > math.log(128) - 1.0


def test_infonce_reads_a_coarser_level_with_the_field_downsampled(translated_pair):
    ddf, fa, fb, mask = translated_pair
    coarse_ddf = ddf * 2  # 2-voxel-multiple shifts: exact at half resolution too
    coarse_a = torch.randn(2, 32, 8, 8, 8)
    coarse_b = warp(coarse_a, coarse_ddf[..., ::2, ::2, ::2] / 2)
    output = {"features_a": [coarse_a, fa], "features_b": [coarse_b, fb]}
    full_mask = (warp(torch.ones(2, 1, 16, 16, 16), coarse_ddf) > 0.999).float()
    assert VoxelInfoNCELoss(num_samples=64, level=0)(output, coarse_ddf, full_mask) < 0.1


def test_restoration_of_the_identity_corruption_with_an_identity_head_is_zero():
    clean = torch.rand(2, 1, 16, 16, 16)
    loss = RestorationLoss(in_channels=1, view="b", target_key="image_b_clean")
    assert loss.batch_keys == ("image_b_clean",)
    loss.head = nn.Identity()
    assert loss({"features_b": [clean]}, image_b_clean=clean) == 0
    corrupted = genesis_corruption(inpaint_weight=1.0, outpaint_weight=0.0)({"image_b": clean[0].clone()})["image_b"]
    assert loss({"features_b": [corrupted[None]]}, image_b_clean=clean[:1]) > 1e-3


def test_genesis_corruption_keeps_the_original_and_is_seedable():
    image = torch.rand(1, 24, 24, 24)
    chain = genesis_corruption(nonlinear_prob=1.0, shuffle_prob=1.0)
    first = chain.set_random_state(seed=3)({"image_b": image.clone()})
    again = chain.set_random_state(seed=3)({"image_b": image.clone()})
    assert torch.equal(first["image_b_clean"], image)
    assert (first["image_b"] - image).abs().mean() > 0.01
    assert torch.equal(torch.as_tensor(first["image_b"]), torch.as_tensor(again["image_b"]))
    with pytest.raises(ValueError, match="inpaint_weight"):
        genesis_corruption(inpaint_weight=0.6, outpaint_weight=0.6)


def test_variance_covariance_is_small_for_spread_features_and_large_for_collapsed_ones():
    torch.manual_seed(0)
    mask = torch.ones(2, 1, 12, 12, 12)
    spread = 2.0 * torch.randn(2, 8, 12, 12, 12)
    collapsed = torch.ones(2, 8, 12, 12, 12) + 0.01 * torch.randn(2, 8, 12, 12, 12)
    loss = VarianceCovarianceLoss(gamma=1.0, cov_weight=1.0, num_samples=512)
    low = loss({"features_a": [spread], "features_b": [spread]}, mask)
    high = loss({"features_a": [collapsed], "features_b": [collapsed]}, mask)
    assert low < 0.2 and high > 0.9


def test_centred_contrastive_loss_ignores_a_shared_direction(translated_pair):
    ddf, _, _, mask = translated_pair
    shared = torch.ones(2, 8, 1, 1, 1) * 5.0
    fa, fb = shared + torch.randn(2, 8, 16, 16, 16), shared + torch.randn(2, 8, 16, 16, 16)  # unrelated details
    assert ContrastiveLoss()(fa, fb, ddf, mask) < 0.1  # plain L_con is satisfied by the shared direction alone
    assert ContrastiveLoss(centred=True)(fa, fb, ddf, mask) > 0.8
    aligned_b = warp(fa, ddf)
    assert ContrastiveLoss(centred=True)(fa, aligned_b, ddf, mask) < 1e-3


def test_pretext_loss_adds_weighted_terms_and_unions_batch_keys(translated_pair):
    ddf, fa, fb, mask = translated_pair
    clean = torch.rand(2, 32, 16, 16, 16)
    restoration = RestorationLoss(in_channels=32, out_channels=32)
    loss = PretextLoss(CoverLoss(), {"restoration": restoration}, {"restoration": 0.5})
    assert loss.batch_keys == ("ddf", "mask", "image_b_clean")
    output = {"ddf": ddf, "features_a": [fa], "features_b": [fb]}
    terms = loss(output, ddf=ddf, mask=mask, image_b_clean=clean)
    base = CoverLoss()(output, ddf, mask)
    assert torch.isclose(terms["loss"], base["loss"] + 0.5 * terms["loss_restoration"])
    assert float(terms["loss_restoration"]) == pytest.approx(float(restoration(output, image_b_clean=clean)))
    assert float(terms["loss_restoration"]) != pytest.approx(float(restoration({"features_b": [fa]}, image_b_clean=clean)))
    with pytest.raises(ValueError, match="weights"):
        PretextLoss(CoverLoss(), {"restoration": restoration}, {"other": 1.0})


def test_trainer_hands_a_loss_exactly_its_batch_keys():
    ddf, mask = torch.zeros(1, 3, 4, 4, 4), torch.ones(1, 1, 4, 4, 4)
    batch = {"image": torch.zeros(1), "image_b_clean": torch.ones(1, 1, 4, 4, 4), "reach_fraction": torch.ones(1)}
    assert set(loss_inputs(CoverLoss(), batch, ddf, mask, torch.device("cpu"))) == {"ddf", "mask"}
    restoration = RestorationLoss(1)
    got = loss_inputs(restoration, batch, ddf, mask, torch.device("cpu"))
    assert list(got) == ["image_b_clean"] and torch.equal(got["image_b_clean"], batch["image_b_clean"])
    with pytest.raises(KeyError, match="image_a_clean"):
        loss_inputs(RestorationLoss(1, target_key="image_a_clean"), batch, ddf, mask, torch.device("cpu"))


def test_feature_health_separates_collapsed_from_spread_features():
    torch.manual_seed(0)
    spread = torch.randn(2, 8, 12, 12, 12)
    collapsed = torch.randn(2, 8, 1, 1, 1)[:1].expand(2, -1, 12, 12, 12) * (1 + 0.01 * torch.rand(2, 1, 12, 12, 12))
    healthy, sick = feature_health(spread, 1024), feature_health(collapsed, 1024)
    assert abs(healthy["cosine"]) < 0.1 and healthy["rank"] > 7.0
    assert sick["cosine"] > 0.99 and sick["rank"] < 1.5
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0, rel=1e-6)
    inside = torch.zeros(2, 1, 12, 12, 12)
    inside[..., :6, :, :] = 1
    half = torch.where(inside.bool(), spread, collapsed)
    assert feature_health(half, 1024, inside)["cosine"] < 0.1  # only voxels inside the mask are sampled


def test_scalar_outputs_keep_health_and_drop_features():
    output = {"health_cosine": torch.tensor(0.5), "health_rank": 3.0, "features": torch.zeros(1, 8, 4, 4, 4)}
    assert scalar_outputs(output) == {"health_cosine": 0.5, "health_rank": 3.0}


class TranslationNet(nn.Module):
    """Predicts +t for [a, b] and a given field for [b, a] (told apart by the first channel's mean)."""

    def __init__(self, backward):
        super().__init__()
        self.backward_field = backward

    def forward(self, x):
        forward = torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1, 1).expand(x.shape[0], 3, *x.shape[2:])
        return forward if x[:, 0].mean() < 0.5 else self.backward_field


def test_cycle_consistent_field_keeps_only_consistent_voxels_inside_view_a():
    a, b = torch.zeros(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8)
    inverse = torch.tensor([-1.0, 2.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 8, 8, 8).clone()
    result = cycle_consistent_field(TranslationNet(inverse), a, b, threshold=0.5)
    assert result["residual"].max() < 1e-5
    # kept = correspondence inside view a: x + 1 <= 7 and y - 2 >= 0
    expected = torch.zeros(1, 1, 8, 8, 8)
    expected[:, :, :7, 2:, :] = 1
    assert torch.equal(result["mask"], expected)
    wrong = inverse.clone()
    wrong[:, :, :4] += 3.0  # the backward field is wrong in the first half of axis 0
    kept = cycle_consistent_field(TranslationNet(wrong), a, b, threshold=0.5)["mask"]
    assert kept[:, :, :3].sum() == 0 and torch.equal(kept[:, :, 4:], expected[:, :, 4:])
