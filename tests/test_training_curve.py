"""training_curve.py reads a run's TensorBoard scalars into a CSV and a first/last/min/max summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import training_curve  # noqa: E402


def test_curve_csv_and_summary(tmp_path):
    writer = SummaryWriter(str(tmp_path / "runs"))
    for step in range(1, 11):
        writer.add_scalar("health_cosine", 0.5 + 0.01 * (step - 4) ** 2, step)
    writer.add_scalar("val_epe", 3.0, 1)
    writer.add_scalar("val_epe", 2.0, 2)
    writer.close()
    summary = training_curve.main(["--run-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "curve"), "--points", "5"])
    cosine = summary["health_cosine"]
    assert (cosine["min"], cosine["min_step"]) == (0.5, 4) and cosine["max_step"] == 10 and cosine["points"] == 10
    assert summary["val_epe"]["last"] == 2.0 and summary["val_epe"]["first"] == 3.0
    rows = list(csv.DictReader(open(tmp_path / "curve.csv", newline="")))
    assert [int(r["step"]) for r in rows if r["tag"] == "health_cosine"] == [1, 3, 5, 7, 9]  # 5 evenly spaced values
    assert json.loads((tmp_path / "curve.json").read_text())["val_epe"]["min"] == 2.0
