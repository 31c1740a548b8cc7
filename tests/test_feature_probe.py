"""Frozen-feature probe: linear head, dispersion measure, and a tiny end-to-end run on synthetic volumes."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from cover3d.networks import CoverNet, UNetBackbone
import cover3d.protocols.feature_probe as fp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_seg_bundle import TINY_CHANNELS, make_pool_and_test_lists  # noqa: E402


def ellipsoid_volumes(count: int, shape=(24, 20, 16), seed: int = 0) -> list[dict]:
    """Volumes whose image is the binary label of a random ellipsoid (so features can encode it exactly)."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    volumes = []
    for _ in range(count):
        size = torch.tensor(shape, dtype=torch.float32)
        centre = (0.35 + 0.3 * torch.rand(3, generator=generator)) * size
        radii = (0.15 + 0.1 * torch.rand(3, generator=generator)) * size
        inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0
        label = inside[None].float()
        volumes.append({"image": label.clone(), "label": label})
    return volumes


def perfect_features(image: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"full": torch.cat([image, 1.0 - image])}


def random_features(image: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(int(image.sum()))
    return {"full": torch.randn(4, *image.shape[1:], generator=generator)}


@pytest.mark.parametrize("feature_fn, perfect", [(perfect_features, True), (random_features, False)])
def test_probe_scores_perfect_features_near_one_and_random_features_clearly_lower(feature_fn, perfect):
    volumes = ellipsoid_volumes(6)
    subsets = {(2, 0): [0, 1], (4, 0): [0, 1, 2, 3]}
    rows, dispersion = fp.probe(feature_fn, volumes[:4], volumes[4:], subsets, num_classes=2,
                                voxels_per_volume=2000, dispersion_voxels=64, log=lambda _: None)
    assert sorted((r["n_labelled"], r["levels"]) for r in rows) == [(2, "full"), (4, "full")]
    for row in rows:
        if perfect:
            assert row["dice"] > 0.99 and row["auc"] > 0.99
        else:
            assert row["dice"] < 0.4 and abs(row["auc"] - 0.5) < 0.1
    if perfect:  # one-hot features: identical within a label, orthogonal across labels
        assert dispersion["full"]["intra"] == pytest.approx(1.0) and dispersion["full"]["inter"] == pytest.approx(0.0)
    else:
        assert abs(dispersion["full"]["gap"]) < 0.1


def test_linear_head_folds_standardisation_into_raw_feature_weights():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=generator)
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    raw = 1000.0 + 0.01 * x  # badly scaled: only separable after standardisation
    head = fp.train_linear_head(raw, labels, num_classes=2)
    accuracy = (head(raw).argmax(1) == labels).float().mean()
    assert accuracy > 0.97
    assert not any(p.requires_grad for p in head.parameters())


def test_dispersion_of_two_clusters():
    features = torch.tensor([[1.0, 2.0, 0.1, 0.3], [0.1, 0.2, 1.0, 3.0]])[:, :, None]  # (F=2, 4 voxels, 1)
    samples = {0: torch.tensor([0, 1]), 1: torch.tensor([2, 3])}
    measured = fp.feature_dispersion(features, samples)
    cos_across = 0.2 / (1.0 + 0.01)
    assert measured["intra"] == pytest.approx(1.0) and measured["inter"] == pytest.approx(cos_across)


def test_backbone_features_keep_the_image_grid():
    backbone = UNetBackbone(3, 1, TINY_CHANNELS)
    features = fp.backbone_features(backbone, ["full", "all"])(torch.rand(1, 20, 18, 10))
    assert features["full"].shape == (TINY_CHANNELS[0], 20, 18, 10)
    assert features["all"].shape == (sum(TINY_CHANNELS), 20, 18, 10)
    assert torch.equal(features["all"][-TINY_CHANNELS[0]:], features["full"])  # full level is the last block


def test_tiny_probe_end_to_end_with_untrained_and_pretrained_weights(tmp_path):
    data = tmp_path / "data"
    make_pool_and_test_lists(data, cases=5)
    weights = tmp_path / "model.pt"
    torch.save(CoverNet(1, TINY_CHANNELS).state_dict(), weights)
    common = ["--dataset-dir", str(data), "--pool", str(data / "pool.json"), "--test", str(data / "test.json"),
              "--n-labelled", "1", "all", "--seeds", "0", "1", "--voxels-per-volume", "500", "--pixdim", "2", "2", "2",
              "--channels", *map(str, TINY_CHANNELS), "--output", str(tmp_path / "out")]
    untrained = fp.main(["--name", "untrained", *common])
    pretrained = fp.main(["--name", "pretrained", "--weights", str(weights), *common])
    assert untrained["init_seed"] == 0 and pretrained["init_seed"] is None
    assert len(untrained["rows"]) == 2 * 2 * 2  # levels x sizes x seeds
    assert {r["n_labelled"] for r in untrained["rows"]} == {1, 3}
    with open(tmp_path / "out" / "untrained.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"dice", "auc", "intra_cos", "inter_cos"} <= set(table[0])
    # the synthetic ellipsoid is 100 grey levels brighter (noise 5): even untrained features rank it well
    assert min(r["auc"] for r in untrained["rows"]) > 0.65 and max(r["dice"] for r in untrained["rows"]) > 0.7  # AUC 0.72 with the BasicUNet layout (0.8+ before)
    assert [r["dice"] for r in pretrained["rows"]] != [r["dice"] for r in untrained["rows"]]  # weights were loaded
    saved = json.loads((tmp_path / "out" / "pretrained.json").read_text())
    assert saved["rows"] == pretrained["rows"] and saved["channels"] == TINY_CHANNELS
    table = fp.markdown_report([untrained, pretrained]).splitlines()
    assert len(table) == 2 + 2 * 4 and table[2].startswith("| untrained | all | 1 |")
