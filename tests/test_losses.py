"""COVER losses: zero at the truth, positive away from it, masks respected, weights applied."""

import pytest
import torch

from cover3d.fields import warp
from cover3d.losses import ContrastiveLoss, CoverLoss, VectorLoss, downsample_mask


def fake_output(ddf, features_a, features_b, levels=5):
    size = ddf.shape[-1]
    level_ddfs = [torch.nn.functional.avg_pool3d(ddf, 2 ** k) / 2**k for k in range(levels - 1, 0, -1)] + [ddf]
    assert level_ddfs[0].shape[-1] == size // 16
    return {"ddf": ddf, "level_ddfs": level_ddfs, "features_a": [features_a], "features_b": [features_b]}


@pytest.fixture
def pair():
    torch.manual_seed(0)
    ddf = torch.randn(2, 3, 1, 1, 1).expand(2, 3, 32, 32, 32).contiguous()  # per-sample translation
    features_a = torch.randn(2, 6, 32, 32, 32)
    features_b = warp(features_a, ddf)
    mask = (warp(torch.ones(2, 1, 32, 32, 32), ddf) > 0.999).float()  # p + ddf(p) inside view a
    mask[..., :4, :, :] = 0
    return ddf, features_a, features_b, mask


def test_losses_are_zero_at_the_truth(pair):
    ddf, fa, fb, mask = pair
    terms = CoverLoss(level_weights=(0.1, 0.2, 0.3, 0.4), smooth_weight=0.5)(fake_output(ddf, fa, fb), ddf, mask)
    for name in ("loss", "loss_vec", "loss_con", "loss_levels", "loss_smooth"):
        assert terms[name].abs() < 1e-5, name


def test_vector_loss_is_masked_l1(pair):
    ddf, _, _, mask = pair
    pred = ddf.clone()
    pred[:, 0] += 2.0  # 2 voxels off on one axis everywhere
    pred[..., :4, :, :] += 100.0  # huge error only where the mask is 0
    assert torch.isclose(VectorLoss()(pred, ddf, mask), torch.tensor(2.0))


def test_contrastive_loss_detects_misalignment(pair):
    ddf, fa, fb, mask = pair
    assert ContrastiveLoss()(fa, fb, ddf, mask) < 1e-3
    assert ContrastiveLoss()(fa, fb, ddf + 3.0, mask) > 0.5


def test_cover_loss_weights_and_terms(pair):
    ddf, fa, fb, mask = pair
    out = fake_output(ddf + 1.0, fa, fb)
    base = CoverLoss()(out, ddf, mask)
    assert set(base) == {"loss", "loss_vec", "loss_con"}
    weighted = CoverLoss(vec_weight=2.0, con_weight=0.5)(out, ddf, mask)
    assert torch.isclose(weighted["loss"], 2 * base["loss_vec"] + 0.5 * base["loss_con"])
    assert torch.isclose(base["loss_vec"], torch.tensor(3.0), atol=1e-4)
    with_levels = CoverLoss(level_weights=(1.0, 0.0, 0.0, 0.0))(out, ddf, torch.ones_like(mask))
    # coarsest level: field +1/16 voxels off per axis -> L1 = 3/16
    assert torch.isclose(with_levels["loss_levels"], torch.tensor(3 / 16), atol=1e-4)
    with pytest.raises(ValueError, match="level_weights"):
        CoverLoss(level_weights=(1.0,))(out, ddf, mask)


def test_downsampled_mask_needs_every_fine_voxel_valid():
    mask = torch.ones(1, 1, 4, 4, 4)
    mask[0, 0, 0, 0, 0] = 0
    coarse = downsample_mask(mask, 2)
    assert coarse.sum() == 7 and coarse[0, 0, 0, 0, 0] == 0


def test_loss_gradients_flow_to_prediction_and_features(pair):
    ddf, fa, fb, mask = pair
    pred = (ddf + 0.5).requires_grad_()
    fa, fb = fa.clone().requires_grad_(), (fb + 0.1).requires_grad_()
    CoverLoss()(fake_output(pred, fa, fb), ddf, mask)["loss"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (pred, fa, fb))
