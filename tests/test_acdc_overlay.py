"""``bundles/cover_seg/acdc.json``: the ACDC scratch setting (anisotropic voxels and patch) validates, trains and
evaluates four classes through the label-efficiency protocol, on tiny synthetic 4-class volumes."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import cover3d.protocols.label_efficiency as le
from cover3d.engine.settings import SETTING_RULES, check_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_seg_bundle import AFFINE, BUNDLE, TINY_CHANNELS  # noqa: E402

OVERLAY = BUNDLE / "acdc.json"


def make_four_class_dataset(folder: Path, cases: int, shape=(40, 36, 24), seed: int = 0) -> list[dict[str, str]]:
    """``cases`` noisy volumes (``AFFINE``: 1.6 x 1.8 x 2.5 mm) with a ventricle-like layout: LV cavity (3), a
    myocardium shell around it (2) and an RV blob beside it (1); radii in mm, so they survive 10 mm slices."""
    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    spacing = np.abs(np.diag(AFFINE)[:3])
    grid_mm = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1) * spacing
    entries = []
    for case in range(cases):
        lv_centre = (np.array(shape) * spacing) * rng.uniform(0.4, 0.5, 3)
        lv_distance = np.linalg.norm(grid_mm - lv_centre, axis=-1)
        rv_distance = np.linalg.norm(grid_mm - (lv_centre + [22.0, 0.0, 0.0]), axis=-1)
        label = np.zeros(shape, np.uint8)
        label[rv_distance <= 9.0] = 1
        label[(lv_distance > 10.0) & (lv_distance <= 15.0)] = 2
        label[lv_distance <= 10.0] = 3
        image = np.array([50.0, 130.0, 80.0, 160.0])[label] + rng.normal(0.0, 5.0, shape)
        name = f"case_{case:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), AFFINE), folder / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, AFFINE), folder / "labelsTr" / name)
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    return entries


def test_acdc_overlay_sets_only_checked_settings_and_train_json_objects():
    overlay = json.loads(OVERLAY.read_text())
    train = json.loads((BUNDLE / "train.json").read_text())
    settings = {k: v for k, v in overlay.items() if "#" not in k}
    assert set(settings) <= set(SETTING_RULES) and set(overlay) - set(settings) == {"train#augmentation"}
    assert {k.split("#")[0] for k in overlay} <= set(train)
    check_settings(**settings)  # raises InputValueError on a value its rule refuses
    assert overlay["num_classes"] == 4 and overlay["pixdim"][2] > 2 * overlay["pixdim"][0]  # anisotropic, 4 classes


def test_acdc_overlay_trains_and_evaluates_four_classes_in_the_protocol(tmp_path):
    data = tmp_path / "data"
    entries = make_four_class_dataset(data, cases=4)
    (data / "pool.json").write_text(json.dumps({"training": entries[:2], "validation": []}))
    (data / "test.json").write_text(json.dumps({"test": entries[2:]}))
    output = tmp_path / "results"
    le.main(["--dataset-dir", str(data), "--pool", str(data / "pool.json"), "--test", str(data / "test.json"),
             "--sizes", "all", "--seeds", "0", "--modes", "scratch", "--overlay", str(OVERLAY),
             "--epochs", "1", "--iterations-per-epoch", "2", "--set", f"channels={json.dumps(TINY_CHANNELS)}",
             "--output", str(output)])  # fmt: skip
    run = output / "runs" / "scratch_n2_seed0"
    assert (run / "models" / "model.pt").is_file()
    with open(run / "eval" / "dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["filename"]).name for r in rows] == ["case_002.nii.gz", "case_003.nii.gz"]
    assert [k for k in rows[0] if k.startswith("class")] == ["class0", "class1", "class2"]  # RV, MYO, LV evaluated
    assert json.loads((output / "settings.json").read_text())["overlay"] == json.loads(OVERLAY.read_text())


def test_baseline_search_reuses_finished_candidates_and_chooses_on_validation(tmp_path, monkeypatch):
    """Candidates whose result file exists are not trained again; the choice follows the validation Dice, not the
    test Dice."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import acdc_baseline

    def result(name: str, validation: list[float], test: float) -> dict:
        curve = [{"epoch": 2 * (i + 1), "iteration": 100 * (i + 1), "val_mean_dice": v} for i, v in enumerate(validation)]
        settings = {"pixdim": [1.5625, 1.5625, 10.0], "patch_size": [96, 96, 16]}
        return {"name": name, "settings": settings, "iterations": 100 * len(validation), "train_seconds": 600.0,
                "completed": True,
                "validation_curve": curve, "test_dice": test, "test_hd95_mm": 9.0}

    for name, validation, test in (("a", [0.70, 0.82, 0.80], 0.79), ("b", [0.75, 0.81], 0.85)):
        (tmp_path / f"{name}.json").write_text(json.dumps(result(name, validation, test)))
    monkeypatch.setattr(acdc_baseline, "CANDIDATES", {"a": ([], []), "b": ([], [])})
    monkeypatch.setattr(acdc_baseline.seg_convergence, "main", lambda argv: pytest.fail(f"trained again: {argv}"))
    rows = acdc_baseline.main(["--dataset-dir", str(tmp_path), "--output", str(tmp_path)])
    assert [(r["name"], r["chosen"], r["best_val_iteration"], r["final_val_dice"]) for r in rows] == [
        ("a", True, 200, 0.80), ("b", False, 200, 0.81)]
    with open(tmp_path / "candidates.csv", newline="") as f:
        assert [r["chosen"] for r in csv.DictReader(f)] == ["True", "False"]
