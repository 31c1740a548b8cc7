"""The committed pretraining weights (weights/cover_mri_pool_2mm) load fully and still predict fields."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from cover3d.engine import field_accuracy, fixed_pairs
from cover3d.networks import load_pretrained_weights
from cover3d.networks.nets.segmentation import CoverSegNet

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "cover_mri_pool_2mm"


def test_committed_weights_load_into_segmentation_and_beat_the_zero_field_on_the_sample():
    metadata = json.loads((WEIGHTS / "metadata.json").read_text())
    channels = metadata["pretraining"]["backbone_channels"]
    assert metadata["preprocessing"]["spacing_mm"] == [2.0, 2.0, 2.0] and channels == [8, 16, 32, 64, 128]
    report = load_pretrained_weights(CoverSegNet(1, 2, channels), WEIGHTS / "model.pt", min_fraction=1.0)
    assert report.backbone_fraction == 1.0

    parser = ConfigParser()  # the embedded MRI sample (never seen by these weights), preprocessed as in pretraining
    parser.read_config(str(REPO / "bundles" / "cover_mri" / "train.json"))
    parser.update({"device": "cpu", "patch_size": [48, 48, 32], "context_size": [64, 64, 48]})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(WEIGHTS / "model.pt", map_location="cpu", weights_only=True))
    pairs = fixed_pairs(parser.get_parsed_content("validate#volumes"), parser.get_parsed_content("pair_transform"), 2,
                        seed=7)
    result = field_accuracy(network, pairs)
    assert result["epe"] < 0.6 * result["epe_identity"], result
