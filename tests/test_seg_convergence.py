"""Recorded convergence run: validation curve from TensorBoard, best checkpoint evaluated on the test list."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import seg_convergence as sc  # noqa: E402
from test_seg_bundle import TINY_CHANNELS, make_pool_and_test_lists  # noqa: E402


def test_validation_curve_pairs_each_validated_epoch_with_its_mean_loss():
    scalars = {"train_loss": [(1, 1.0), (2, 3.0), (3, 0.5), (4, 0.5)], "val_mean_dice": [(2, 0.7)]}
    assert sc.validation_curve(scalars, iterations_per_epoch=2) == [
        {"epoch": 2, "iteration": 4, "val_mean_dice": 0.7, "train_loss": 0.5}]


@pytest.mark.slow
def test_tiny_run_records_curve_best_checkpoint_and_test_dice(tmp_path):
    data = tmp_path / "data"
    make_pool_and_test_lists(data, cases=4)
    overlay = tmp_path / "overlay.json"  # a train-only key (train#...) must not reach evaluate.json
    overlay.write_text(json.dumps({"pixdim": [2.0, 2.0, 2.0], "channels": TINY_CHANNELS, "patch_size": [32, 32, 16],
                                   "train#dataloader#shuffle": False}))
    result = sc.main([
        "--name", "tiny", "--overlay", str(overlay), "--set", "epochs=2", "iterations_per_epoch=6", "val_interval=1",
        "batch_size=1", "learning_rate=0.01", "warmup_iterations=2", "--dataset-dir", str(data),
        "--pool", str(data / "pool.json"), "--test", str(data / "test.json"),
        "--work-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "out"),
    ])
    assert [row["epoch"] for row in result["validation_curve"]] == [1, 2]
    assert result["best_val_mean_dice"] == max(row["val_mean_dice"] for row in result["validation_curve"])
    assert result["iterations"] == 12 and result["completed"] and result["epochs_done"] == 2
    assert result["settings"]["channels"] == TINY_CHANNELS and result["changed"]["epochs"] == 2
    # 12 iterations learn the bright synthetic ellipsoid: measured test Dice 0.92, best validation Dice 0.89 (with
    # learning_rate=0: 0.07 and 0.06)
    assert result["test_dice"] > 0.8 and result["best_val_mean_dice"] > 0.7 and result["train_seconds"] > 0
    with open(tmp_path / "out" / "tiny.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]
    assert json.loads((tmp_path / "out" / "tiny.json").read_text())["test_dice"] == result["test_dice"]
