"""The unlabelled pretraining datalist: every pool image, held-out subjects for its EPE, never a test case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import segmentation_splits as splits  # noqa: E402


def test_pretraining_datalist_holds_out_named_subjects_and_drops_labels_and_excluded_images(monkeypatch):
    monkeypatch.setattr(splits, "PRETRAINING_HELD_OUT", ("la_002", "acdc_007"))
    monkeypatch.setattr(splits, "PRETRAINING_EXCLUDED", ("mri_samples/images/tiny.nii.gz",))
    pools = {
        "la_mri_2018": {"training": [{"image": "imagesTr/la_001.nii.gz", "label": "labelsTr/la_001.nii.gz"}],
                        "validation": [{"image": "imagesTr/la_002.nii.gz", "label": "labelsTr/la_002.nii.gz"}]},
        "acdc_cardiac_mri": {"training": [{"image": f"imagesTr/acdc_00{i}_{p}.nii.gz"} for i in (3, 7) for p in ("ED", "ES")]},
    }
    listing = splits.pretraining_datalist(pools, ["mri_samples/images/brain.nii.gz", "mri_samples/images/tiny.nii.gz"])
    assert listing["validation"] == [{"image": "acdc_cardiac_mri/imagesTr/acdc_007_ED.nii.gz"},
                                     {"image": "acdc_cardiac_mri/imagesTr/acdc_007_ES.nii.gz"},
                                     {"image": "la_mri_2018/imagesTr/la_002.nii.gz"}]
    assert listing["training"] == [{"image": "acdc_cardiac_mri/imagesTr/acdc_003_ED.nii.gz"},
                                   {"image": "acdc_cardiac_mri/imagesTr/acdc_003_ES.nii.gz"},
                                   {"image": "la_mri_2018/imagesTr/la_001.nii.gz"},
                                   {"image": "mri_samples/images/brain.nii.gz"}]


def test_committed_pretraining_datalist_has_no_test_case():
    listing = json.loads((REPO / "data_lists" / "mri_pretraining_pool.json").read_text())
    tests = {f"{folder}/{e['image']}" for name, folder in (("la_mri_2018", "la_mri_2018"), ("acdc", "acdc_cardiac_mri"))
             for e in json.loads((REPO / "data_lists" / f"{name}_test.json").read_text())["test"]}
    images = {e["image"] for part in listing.values() for e in part}
    assert len(images) == 193 and not images & tests
