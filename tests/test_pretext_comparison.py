"""cover3d.protocols.pretext_comparison's fine-tune stage: scratch runs trained once and paired with every pretext;
its table."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

import cover3d.protocols.pretext_comparison as pc


def fake_label_efficiency(trained: list[str], dice: dict[str, float]):
    """Stands in for label_efficiency.main: 'trains' missing runs (recorded) and writes summary/paired CSVs."""

    def run(argv: list[str]) -> None:
        args = argparse.ArgumentParser()
        for name in ("--output", "--pretrained-weights", "--dataset-dir", "--pool", "--test", "--test-key"):
            args.add_argument(name)
        for name in ("--modes", "--sizes", "--seeds"):
            args.add_argument(name, nargs="+")
        a = args.parse_args(argv)
        output = Path(a.output)
        for mode in a.modes:
            for seed in a.seeds:
                run_dir = output / "runs" / f"{mode}_n{a.sizes[0]}_seed{seed}"
                if not run_dir.exists():
                    run_dir.mkdir(parents=True)
                    trained.append(f"{output.name}/{run_dir.name}")
        key = Path(a.pretrained_weights).parent.name if a.pretrained_weights else "scratch"
        with open(output / "summary.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mode", "n_labelled", "dice_mean", "dice_std"])
            w.writerow(["scratch", a.sizes[0], dice["scratch"], 0.01])
            if a.pretrained_weights:
                w.writerow(["pretrained", a.sizes[0], dice[key], 0.02])
        with open(output / "paired.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["n_labelled", "dice_diff_mean", "dice_diff_t95_low", "dice_diff_t95_high"])
            if a.pretrained_weights:
                w.writerow([a.sizes[0], dice[key] - dice["scratch"], -0.01, 0.05])

    return run


def test_scratch_runs_are_trained_once_and_linked_into_every_pretext(tmp_path, monkeypatch):
    trained: list[str] = []
    monkeypatch.setattr(pc, "label_efficiency", fake_label_efficiency(trained, {"scratch": 0.6, "cover": 0.7, "infonce": 0.65}))
    args = argparse.Namespace(dataset_dir="d", pool="p.json", test="t.json", test_key="test", finetune_sizes=["4"],
                              seeds=[0, 1], scratch_output=None)
    rows = {}
    for name in ("cover", "infonce"):
        weights = tmp_path / name / "model.pt"
        weights.parent.mkdir()
        rows[name] = pc.finetune_stage(args, name, weights, tmp_path / "out")
    assert trained == ["scratch/scratch_n4_seed0", "scratch/scratch_n4_seed1", "cover/pretrained_n4_seed0",
                       "cover/pretrained_n4_seed1", "infonce/pretrained_n4_seed0", "infonce/pretrained_n4_seed1"]
    link = tmp_path / "out" / "finetune" / "infonce" / "runs" / "scratch_n4_seed1"
    assert link.is_symlink() and link.resolve() == (tmp_path / "out" / "finetune" / "scratch" / "runs" / "scratch_n4_seed1")
    assert rows["cover"]["finetune_n4"]["diff"] == 0.7 - 0.6 and rows["infonce"]["finetune_n4"]["dice"] == 0.65
    table = pc.markdown_table({"cover": {"epe": 2.5, "epe_identity": 6.4, **rows["cover"],
                                         "probe_full_n4": {"dice": 0.41, "auc": 0.9, "seeds": 2}}}).splitlines()
    assert table[2] == "| cover | 2.50 (6.40) | - | - / - | 0.410 / 0.900 | - / - | 0.700 | +0.100 [-0.010, +0.050] |"


def test_scratch_runs_of_another_protocol_are_linked_and_rows_merge(tmp_path, monkeypatch):
    trained: list[str] = []
    monkeypatch.setattr(pc, "label_efficiency", fake_label_efficiency(trained, {"scratch": 0.6, "cover": 0.7}))
    (tmp_path / "protocol" / "runs" / "scratch_n4_seed0").mkdir(parents=True)  # finished elsewhere
    args = argparse.Namespace(dataset_dir="d", pool="p.json", test="t.json", test_key="test", finetune_sizes=["4"],
                              seeds=[0], scratch_output=str(tmp_path / "protocol"))
    weights = tmp_path / "cover" / "model.pt"
    weights.parent.mkdir()
    pc.finetune_stage(args, "cover", weights, tmp_path / "out")
    assert trained == ["cover/pretrained_n4_seed0"]  # the scratch run is reused, not retrained
    link = tmp_path / "out" / "finetune" / "cover" / "runs" / "scratch_n4_seed0"
    assert link.is_symlink() and link.resolve() == tmp_path / "protocol" / "runs" / "scratch_n4_seed0"

    results = tmp_path / "out" / "results.json"  # two invocations (one per core) each add their own pretext
    pc.record_row(results, {"epochs": 10}, "cover", {"epe": 2.0})
    merged = pc.record_row(results, {"epochs": 10}, "infonce", {"epe": 5.0})
    assert merged["pretexts"] == {"cover": {"epe": 2.0}, "infonce": {"epe": 5.0}}


def test_refinement_rounds_are_taught_by_the_previous_rounds_weights(tmp_path):
    common = {"epochs": 10}
    cover = pc.pretraining_settings("cover", tmp_path, common)
    assert cover["ckpt_dir"] == str(tmp_path / "pretrain" / "cover" / "models") and "pseudo#teacher_weights" not in cover
    names = list(pc.PRETEXTS)
    for student, teacher in (("cover_pseudo", "cover"), ("cover_pseudo2", "cover_pseudo")):
        settings = pc.pretraining_settings(student, tmp_path, common)
        assert settings["pseudo#teacher_weights"] == str(tmp_path / "pretrain" / teacher / "models" / "model.pt")
        assert pc.PRETEXTS[student].overlays == ("pseudo_fields.json",)
        assert names.index(teacher) < names.index(student)  # one invocation pretrains the teacher first


def write_finetune(folder: Path, mode: str, seed: int, cases: dict[str, float]) -> None:
    """An evaluated fine-tune run ``<mode>_n4_seed<seed>`` with per-case Dice ``cases`` (HD95 = 10 x Dice)."""
    eval_dir = folder / "runs" / f"{mode}_n4_seed{seed}" / "eval"
    eval_dir.mkdir(parents=True)
    mean = sum(cases.values()) / len(cases)
    (eval_dir / "metrics.csv").write_text(f"dice,{mean}\nhd95_mm,{10 * mean}\n")
    for metric, scale in (("dice", 1.0), ("hd95_mm", 10.0)):
        lines = ["filename,class0"] + [f"/x/{c}.nii.gz,{v * scale}" for c, v in cases.items()]
        (eval_dir / f"{metric}_raw.csv").write_text("\n".join(lines) + "\n")


def test_head_to_head_pairs_each_cover_variant_with_each_baseline_by_seed_and_case(tmp_path):
    """The baseline's fine-tunes take scratch's place: differences of the pretrained runs, not of scratch's."""
    finetune = tmp_path / "finetune"
    dice = {"cover": (0.80, 0.90), "infonce": (0.70, 0.80), "restoration": (0.75, 0.75)}  # seed 0, seed 1
    for name, per_seed in dice.items():
        for seed, d in enumerate(per_seed):
            write_finetune(finetune / name, "pretrained", seed, {"a": d - 0.05, "b": d + 0.05})
            write_finetune(finetune / name, "scratch", seed, {"a": 0.1, "b": 0.1})  # shared scratch: never compared
    rows = {(r["pretext"], r["baseline"]): r for r in pc.head_to_head(tmp_path)}
    assert sorted(rows) == [("cover", "infonce"), ("cover", "restoration")]
    versus_infonce, versus_restoration = rows[("cover", "infonce")], rows[("cover", "restoration")]
    assert versus_infonce["seeds"] == 2 and versus_infonce["dice_diff_mean"] == pytest.approx(0.10)
    assert versus_infonce["dice_diff_boot95_low"] == pytest.approx(0.10)  # every per-case difference is 0.10
    assert versus_restoration["dice_diff_mean"] == pytest.approx(0.10)  # seed differences 0.05 and 0.15
    assert versus_restoration["dice_diff_boot95_low"] == pytest.approx(0.05)
    assert "| cover | infonce | 4 | 2 | +0.100 [" in pc.head_to_head_table(list(rows.values()))
