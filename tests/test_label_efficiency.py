"""Label-efficiency protocol: subset drawing, summaries, and a tiny end-to-end run on synthetic volumes."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cover3d.networks.nets.cover import CoverNet
import cover3d.protocols.label_efficiency as le
from cover3d.protocols.bundle_runs import parse_assignments
from cover3d.protocols.subsets import nested_subset, read_pool, subset_sizes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_command import run_module  # noqa: E402
from test_seg_bundle import TINY_CHANNELS, make_pool_and_test_lists  # noqa: E402


def test_subsets_are_nested_seeded_and_checked():
    pool = [{"image": f"img_{i}.nii.gz"} for i in range(10)]
    small, large = nested_subset(pool, 3, seed=1), nested_subset(pool, 6, seed=1)
    assert large[:3] == small and len({e["image"] for e in large}) == 6
    assert nested_subset(pool, 6, seed=2) != large
    assert subset_sizes(["4", "all", "2"], 10) == [2, 4, 10]
    with pytest.raises(ValueError, match=r"sizes must be in \[1, 10\]"):
        subset_sizes(["11"], 10)


def test_assignments_and_pool_reading(tmp_path):
    assert parse_assignments(["patch_size=[48,48,32]", "modality=ct", "lr=0.01"]) == {
        "patch_size": [48, 48, 32], "modality": "ct", "lr": 0.01}
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["patch_size"])
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"training": [{"image": "a"}], "validation": [{"image": "b"}]}))
    assert read_pool(path, ["training", "validation"]) == [{"image": "a"}, {"image": "b"}]
    with pytest.raises(ValueError, match=r"no list\(s\) \['test'\]"):
        read_pool(path, ["test"])


def test_summary_and_table_pair_runs_by_seed():
    rows = [
        {"mode": "scratch", "n_labelled": 2, "seed": 0, "dice": 0.5, "hd95_mm": 10.0},
        {"mode": "scratch", "n_labelled": 2, "seed": 1, "dice": 0.7, "hd95_mm": 8.0},
        {"mode": "pretrained", "n_labelled": 2, "seed": 0, "dice": 0.6, "hd95_mm": 9.0},
        {"mode": "pretrained", "n_labelled": 2, "seed": 1, "dice": 0.9, "hd95_mm": 7.0},
    ]
    summary = {s["mode"]: s for s in le.summarise(rows)}
    assert summary["scratch"]["dice_mean"] == pytest.approx(0.6)
    assert summary["scratch"]["dice_std"] == pytest.approx(0.1414, abs=1e-4)
    assert summary["pretrained"]["hd95_mm_mean"] == pytest.approx(8.0)
    table = le.format_table(rows, ["scratch", "pretrained"]).splitlines()
    assert table[0].split() == ["n", "labelled", "scratch", "Dice", "pretrained", "Dice", "pretrained", "-", "scratch"]
    assert table[1].split() == ["2", "0.600", "+-", "0.141", "0.750", "+-", "0.212", "+0.150", "+-", "0.071"]


@pytest.mark.slow
def test_tiny_protocol_runs_and_resumes(tmp_path):
    data = tmp_path / "data"
    make_pool_and_test_lists(data, cases=4)
    weights = tmp_path / "pretrained.pt"
    torch.save(CoverNet(1, TINY_CHANNELS).state_dict(), weights)
    output = tmp_path / "results"
    command = [
        "--dataset-dir", str(data),
        "--pool", str(data / "pool.json"), "--test", str(data / "test.json"), "--pretrained-weights", str(weights),
        "--sizes", "1", "all", "--seeds", "0", "--overlay", "--epochs", "3", "--iterations-per-epoch", "16",
        "--set", "pixdim=[2,2,2]", "patch_size=[32,32,16]", f"channels={json.dumps(TINY_CHANNELS)}",
        "infer_roi_size=[32,32,16]", "batch_size=1", "learning_rate=0.01", "warmup_iterations=6",
        "--output", str(output), "--modes",
    ]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return run_module("cover3d.protocols.label_efficiency", [*command, *extra], cwd=tmp_path)

    first = run("scratch")  # one invocation per mode (one per core), both filling the same protocol
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    first = run("pretrained")
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "loaded" in first.stdout and "100% of the backbone's" in first.stdout  # the pretrained runs load weights

    with open(output / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["mode"], int(r["n_labelled"])) for r in rows) == [
        ("pretrained", 1), ("pretrained", 3), ("scratch", 1), ("scratch", 3)]
    assert all(float(r["dice"]) > 0.7 for r in rows), rows  # 48 iterations learn the bright synthetic ellipsoid
    with open(output / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(output / "paired.csv", newline="") as f:
        paired = list(csv.DictReader(f))
    by_key = {(r["mode"], int(r["n_labelled"])): float(r["dice"]) for r in rows}
    assert [int(p["n_labelled"]) for p in paired] == [1, 3]
    for p in paired:  # one seed: the paired difference is that seed's difference
        n = int(p["n_labelled"])
        assert float(p["dice_diff_mean"]) == pytest.approx(by_key[("pretrained", n)] - by_key[("scratch", n)])
    assert (output / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = output / "runs"
    for n in (1, 3):  # both modes saw the same labelled subset
        assert (runs / f"scratch_n{n}_seed0" / "datalist.json").read_text() == \
            (runs / f"pretrained_n{n}_seed0" / "datalist.json").read_text()
    assert "n labelled" in first.stdout and "pretrained - scratch" in first.stdout

    second = run("scratch", "pretrained")
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "SupervisedTrainer" not in second.stdout + second.stderr  # finished runs are reused, not retrained
    with open(output / "results.csv", newline="") as f:
        assert [r["dice"] for r in csv.DictReader(f)] == [r["dice"] for r in rows]

    stopped = run("scratch", "--sizes", "1", "2", "all", "--start-no-run-after", "0")  # finished runs still count
    assert stopped.returncode == 0 and "2 planned runs left to a later invocation" in stopped.stdout, stopped.stdout
    assert not (runs / "scratch_n2_seed0").exists() and "SupervisedTrainer" not in stopped.stdout + stopped.stderr

    other = run("scratch", "--set", "learning_rate=0.02")  # another setting must not mix into these results
    assert other.returncode == 2 and "holds runs of another setting (settings differ" in other.stderr, other.stderr


def test_pretrained_modes_need_weights(tmp_path, capsys):
    for name in ("p.json", "t.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(SystemExit):
        le.main(["--dataset-dir", str(tmp_path), "--pool", str(tmp_path / "p.json"), "--test", str(tmp_path / "t.json"),
                 "--output", str(tmp_path / "out")])
    assert "need --pretrained-weights or --pretrain-config" in capsys.readouterr().err


def test_paired_statistics_intervals_and_per_class_dice(tmp_path):
    """Known per-case Dice: the paired difference, its t and bootstrap intervals and per-class means follow."""
    rows, run_dirs = [], {}
    per_case = {  # (mode, seed) -> {case: (class0, class1)}
        ("scratch", 0): {"a": (0.5, 0.7), "b": (0.6, 0.8)}, ("pretrained", 0): {"a": (0.6, 0.8), "b": (0.7, 0.9)},
        ("scratch", 1): {"a": (0.4, 0.6), "b": (0.5, 0.7)}, ("pretrained", 1): {"a": (0.6, 0.8), "b": (0.7, 0.9)},
    }  # fmt: skip
    for (mode, seed), cases in per_case.items():
        folder = tmp_path / f"{mode}_{seed}" / "eval"
        folder.mkdir(parents=True)
        for metric, scale in (("dice", 1.0), ("hd95_mm", 10.0)):
            lines = ["filename,class0,class1"] + [f"/x/{c}.nii.gz,{v0 * scale},{v1 * scale}" for c, (v0, v1) in cases.items()]
            (folder / f"{metric}_raw.csv").write_text("\n".join(lines) + "\n")
        mean = sum(sum(v) for v in cases.values()) / 4
        rows.append({"mode": mode, "n_labelled": 2, "seed": seed, "dice": mean, "hd95_mm": 10 * mean})
        run_dirs[(mode, 2, seed)] = folder.parent
    (paired,) = le.paired_statistics(rows, run_dirs, resamples=2000)
    assert paired["seeds"] == 2 and paired["dice_diff_mean"] == pytest.approx(0.15)  # seed differences 0.1 and 0.2
    half = 12.706 * 0.0707107 / 2 ** 0.5  # t(0.975, 1) x std / sqrt(n)
    assert paired["dice_diff_t95_low"] == pytest.approx(0.15 - half, abs=1e-3)
    assert paired["dice_diff_boot95_low"] == pytest.approx(0.1) and paired["dice_diff_boot95_high"] == pytest.approx(0.2)
    assert paired["hd95_mm_diff_mean"] == pytest.approx(1.5)
    assert paired["scratch_dice_class0"] == pytest.approx(0.5) and paired["mode_dice_class1"] == pytest.approx(0.85)
    assert "+0.150 [" in le.format_paired_table([paired])


def test_a_bootstrap_interval_depends_on_its_own_runs_only(tmp_path):
    """Adding another comparison (here a probe mode and a larger size) leaves an interval's bootstrap unchanged."""
    rng = random.Random(0)
    rows, run_dirs = [], {}
    for mode, n, seed in itertools.product(("scratch", "pretrained", "probe"), (2, 4), (0, 1)):
        folder = tmp_path / f"{mode}_{n}_{seed}"
        (folder / "eval").mkdir(parents=True)
        scores = [rng.random() for _ in range(12)]
        for metric in ("dice", "hd95_mm"):
            lines = ["filename,class0"] + [f"/x/c{i}.nii.gz,{v}" for i, v in enumerate(scores)]
            (folder / "eval" / f"{metric}_raw.csv").write_text("\n".join(lines) + "\n")
        rows.append({"mode": mode, "n_labelled": n, "seed": seed, "dice": sum(scores) / 12, "hd95_mm": sum(scores) / 12})
        run_dirs[(mode, n, seed)] = folder
    alone = [r for r in rows if r["mode"] != "probe" and r["n_labelled"] == 4]
    (single,) = le.paired_statistics(alone, run_dirs, resamples=500)
    crowded = {(p["mode"], p["n_labelled"]): p for p in le.paired_statistics(rows, run_dirs, resamples=500)}
    assert len(crowded) == 4
    key = ("dice_diff_boot95_low", "dice_diff_boot95_high", "hd95_mm_diff_boot95_low")
    assert [single[k] for k in key] == [crowded[("pretrained", 4)][k] for k in key]
    assert crowded[("pretrained", 4)]["dice_diff_boot95_low"] != crowded[("probe", 4)]["dice_diff_boot95_low"]


ARGS = argparse.Namespace(reevaluate=False)


def test_a_run_held_by_another_invocation_is_skipped(tmp_path, monkeypatch):
    """Several invocations of one protocol (one per core) share its runs: each run is claimed with a lock."""
    from cover3d.engine import RunLock

    trained = []
    monkeypatch.setattr(le, "train_and_evaluate", lambda bundle, run_dir, *rest: trained.append(run_dir.name))
    busy, free = tmp_path / "runs" / "scratch_n2_seed0", tmp_path / "runs" / "scratch_n2_seed1"
    other = RunLock(busy)  # stands for the other invocation, training that run now
    other.acquire()
    try:
        for run_dir in (busy, free):
            le.run_one(tmp_path, run_dir, "scratch", [], 0, ARGS, [], {}, {}, None)
    finally:
        other.release()
    assert trained == ["scratch_n2_seed1"]
    le.run_one(tmp_path, busy, "scratch", [], 0, ARGS, [], {}, {}, None)  # released: now it runs here
    assert trained == ["scratch_n2_seed1", "scratch_n2_seed0"]


def test_reevaluate_evaluates_finished_runs_again_from_their_weights(tmp_path, monkeypatch):
    evaluated, trained = [], []
    monkeypatch.setattr(le, "evaluate", lambda bundle, run_dir, args, evaluation: evaluated.append(run_dir.name))
    monkeypatch.setattr(le, "train_and_evaluate", lambda bundle, run_dir, *rest: trained.append(run_dir.name))
    finished = tmp_path / "runs" / "probe_n2_seed0"
    (finished / "eval").mkdir(parents=True)
    (finished / "eval" / "metrics.csv").write_text("dice,0.5\n")
    (finished / "models").mkdir()
    (finished / "models" / "model.pt").write_bytes(b"")
    le.run_one(tmp_path, finished, "probe", [], 0, ARGS, [], {}, {}, None)
    assert evaluated == [] and trained == []  # finished: reused
    again = argparse.Namespace(reevaluate=True)
    le.run_one(tmp_path, finished, "probe", [], 0, again, [], {}, {}, None)
    assert evaluated == ["probe_n2_seed0"] and trained == []
    (finished / "models" / "model.pt").unlink()  # e.g. a fresh clone: only the CSVs are tracked
    with pytest.raises(FileNotFoundError, match="probe_n2_seed0 has no final weights"):
        le.run_one(tmp_path, finished, "probe", [], 0, again, [], {}, {}, None)
