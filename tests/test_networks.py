"""Backbone, vector pyramid and COVER network: shapes, modes, reach, shared weights."""

import pytest
import torch

from cover3d.fields import warp
from cover3d.networks import CoverNet, UNetBackbone, VectorPyramid, pyramid_reach

SMALL = (4, 8, 8, 16, 16)


@pytest.mark.parametrize("size", [(16, 16, 16), (32, 48, 16), (48, 32, 64)])
def test_backbone_feature_shapes(size):
    net = UNetBackbone(in_channels=2, channels=SMALL)
    features = net(torch.rand(1, 2, *size))
    assert [f.shape[1] for f in features] == list(net.feature_channels) == [16, 16, 8, 8, 4]
    for level, f in enumerate(features):
        stride = 2 ** (4 - level)
        assert tuple(f.shape[2:]) == tuple(s // stride for s in size)


def test_backbone_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNetBackbone(channels=SMALL)(torch.rand(1, 1, 24, 32, 32))


def test_backbone_is_monai_basic_unet_without_final_conv():
    """Every backbone tensor loads into MONAI's own BasicUNet, which then computes the same decoder features."""
    from monai.networks.nets import BasicUNet

    from cover3d.networks import basic_unet_kwargs, group_norm_per_width

    torch.manual_seed(0)
    backbone = UNetBackbone(channels=(8, 16, 16, 32, 32))
    monai_net = group_norm_per_width(BasicUNet(out_channels=3, **basic_unet_kwargs((8, 16, 16, 32, 32))), 8)
    missing, unexpected = monai_net.load_state_dict(backbone.state_dict(), strict=False)
    assert sorted(missing) == ["final_conv.bias", "final_conv.weight"] and not unexpected
    assert {type(m) for m in monai_net.modules()} >= {torch.nn.GroupNorm, torch.nn.LeakyReLU}
    assert {(m.num_channels, m.num_groups) for m in monai_net.modules() if isinstance(m, torch.nn.GroupNorm)} == {
        (8, 1), (16, 2), (32, 4)}  # 8 channels per group, as published
    full_resolution = []
    monai_net.upcat_1.register_forward_hook(lambda module, args, out: full_resolution.append(out))
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        monai_net.eval()(x)
        ours = backbone.eval()(x)[-1]
    assert ours.std() > 0.1
    torch.testing.assert_close(full_resolution[0], ours, rtol=0, atol=0)


def test_backbone_rejects_widths_that_cannot_form_groups_of_8():
    with pytest.raises(ValueError, match="44 channels cannot form 5 GroupNorm groups of 8"):
        UNetBackbone(channels=(8, 16, 16, 32, 44))


@pytest.mark.parametrize("size", [(32, 32, 32), (48, 32, 64)])
def test_cover_net_train_and_eval_outputs(size):
    net = CoverNet(channels=SMALL, radii=(1, 1, 1, 1, 1), groups=(2, 2, 1, 1, 1))
    x = torch.rand(2, 2, *size)
    out = net.train()(x)
    assert out["ddf"].shape == (2, 3, *size)
    assert len(out["level_ddfs"]) == 5 and out["level_ddfs"][-1] is out["ddf"]
    for level, field in enumerate(out["level_ddfs"]):
        assert tuple(field.shape[2:]) == tuple(s // 2 ** (4 - level) for s in size)
    assert [f.shape[0] for f in out["features_a"] + out["features_b"]] == [2] * 10
    with torch.no_grad():
        pred = net.eval()(x)
    assert pred.shape == (2, 3, *size) and torch.isfinite(pred).all()


def test_cover_net_rejects_wrong_channels():
    with pytest.raises(ValueError, match="view a, view b"):
        CoverNet(channels=SMALL)(torch.rand(1, 1, 32, 32, 32))


def test_siamese_views_share_backbone():
    net = CoverNet(channels=SMALL).train()
    a = torch.rand(1, 1, 32, 32, 32)
    out = net(torch.cat([a, a], 1))
    for fa, fb in zip(out["features_a"], out["features_b"]):
        assert torch.allclose(fa, fb)


def test_reach_is_sum_of_radius_times_stride():
    assert pyramid_reach((2, 2, 2, 1, 1)) == 2 * 16 + 2 * 8 + 2 * 4 + 1 * 2 + 1
    assert CoverNet(channels=SMALL, radii=(3, 3, 3, 2, 1)).reach == 48 + 24 + 12 + 4 + 1


def test_projection_gain_sets_the_initial_scale_and_sharpens_identical_views():
    # identical views: the true field is 0; a sharper initial soft-argmax is pulled less towards window centroids
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 48, 48, 48), 5, 1, 2).repeat(1, 2, 1, 1, 1)
    magnitude = {}
    for gain in (1.0, 3.0):
        torch.manual_seed(1)
        net = CoverNet(channels=SMALL, projection_gain=gain).eval()
        assert all(torch.all(p[1].weight == gain) for p in net.pyramid.projections)
        with torch.no_grad():
            magnitude[gain] = net(x).norm(dim=1).mean().item()
    assert magnitude[3.0] < 0.95 * magnitude[1.0]


def test_pyramid_recovers_a_known_translation_from_identical_features():
    # With identity projections, view b's features are view a's shifted by s: the pyramid must return ~s voxels
    # (sign and units), here with two levels (strides 2 and 1) on smooth random features.
    torch.manual_seed(0)
    shift = torch.tensor([3.0, -2.0, 1.0])
    pyramid = VectorPyramid(in_channels=(8, 8), radii=(2, 1), groups=(1, 1))
    for proj in pyramid.projections:
        torch.nn.init.eye_(proj[0].weight.view(8, 8))
        torch.nn.init.zeros_(proj[0].bias)
        torch.nn.init.constant_(proj[1].weight, 4.0)  # sharp softmax: logits x16
    noise = torch.randn(1, 8, 12, 12, 12)
    fine = torch.nn.functional.interpolate(noise, size=(40, 40, 40), mode="trilinear", align_corners=False)
    ddf = shift.view(1, 3, 1, 1, 1).expand(1, 3, 40, 40, 40)
    moved = warp(fine, ddf)
    with torch.no_grad():
        fields = pyramid([torch.nn.functional.avg_pool3d(fine, 2), fine], [torch.nn.functional.avg_pool3d(moved, 2), moved])
    inner = fields[-1][0, :, 8:-8, 8:-8, 8:-8].reshape(3, -1)
    assert torch.allclose(inner.median(1).values, shift, atol=0.25)
