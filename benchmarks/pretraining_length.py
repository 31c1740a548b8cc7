"""Does longer pretraining pay? The pretraining-length curve on the left atrium (issue 27).

One long run, ``run_pretraining.sh`` in ``--folder`` (default ``benchmarks/results/pretraining_length``): COVER +
cycle term on the 189-volume MRI pool, 2 gloo processes x 1 pair, 20,000 iterations on one cosine schedule, keeping
``checkpoint_<N>.pt`` at the snapshot iterations (2,800 / 5,000 / 10,000 / 20,000). This script turns the run into
the curve, stage by stage, each reusing what is finished (so it resumes, also from committed files):

- ``keep``: copy the run's newest checkpoint and its TensorBoard events into ``resume/`` (tracked: a later session on
  a fresh clone continues the run, ``run_pretraining.sh`` restores them), and write ``training_curve.csv/.json``;
- ``snapshots``: ``snapshots/it<N>/model.pt`` (the network's state dict of ``checkpoint_<N>.pt``, 5.7 MB) and the
  run's ``metadata.json`` beside it, for every snapshot the run has reached;
- ``field``: end-point error (voxels) and feature health of each snapshot on 32 fixed pairs (seed 2024) of the
  pool's held-out volumes -> ``snapshots/it<N>/field_accuracy.json``;
- ``finetune``: LA label efficiency at ``--sizes`` (3 seeds) with :mod:`cover3d.protocols.label_efficiency` at the
  converged budget, paired with the committed scratch runs of ``benchmarks/results/label_efficiency_la`` ->
  ``finetune/it<N>/``;
- ``probe``: the all-level frozen probe of each snapshot -> ``probe/it<N>.json``;
- ``curve``: ``curve.csv`` (per snapshot and size: pretrained - scratch Dice, paired-t and bootstrap 95 %) and
  ``curve.png`` (one line per size against pretraining iterations).

From the repository root::

    python benchmarks/pretraining_length.py --stages keep snapshots field finetune probe curve
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from cover3d.engine import list_checkpoints, save_atomic, write_json_atomic
from cover3d.networks.weights import read_state_dict
from cover3d.protocols.bundle_runs import write_csv
from cover3d.protocols.pretext_comparison import field_and_feature_health, finetune_stage, probe_stage
from training_curve import main as training_curve  # benchmarks/training_curve.py, this script's sibling

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "benchmarks" / "results" / "pretraining_length"
CONFIGS = ["train.json", "pretext_cycle.json"]
SETTING = {"datalist": "data_lists/mri_pretraining_pool.json", "patch_size": [48, 48, 32], "context_size": [64, 64, 48]}
SNAPSHOTS = (2800, 5000, 10000, 20000)
STAGES = ("keep", "snapshots", "field", "finetune", "probe", "curve")


def keep_for_resume(folder: Path) -> Path | None:
    """Copy the run's newest checkpoint (and its TensorBoard events) into ``folder/resume``, replacing the older
    copy; returns the copied checkpoint (None when the run has none)."""
    run, resume = folder / "pretrain", folder / "resume"
    found = list_checkpoints(run)
    if not found:
        return None
    (resume / "runs").mkdir(parents=True, exist_ok=True)
    for old in list_checkpoints(resume):
        if old.name != found[-1].name:
            old.unlink()
    shutil.copy2(found[-1], resume / found[-1].name)
    shutil.copy2(run / "metadata.json", resume / "metadata.json")
    for events in (run / "runs").glob("events.out.tfevents.*"):
        if events.stat().st_size > 0:
            shutil.copy2(events, resume / "runs" / events.name)
    return resume / found[-1].name


def export_snapshots(folder: Path) -> list[int]:
    """``snapshots/it<N>/model.pt`` + ``metadata.json`` for every snapshot checkpoint of the run; returns the
    snapshot iterations exported so far (also earlier sessions')."""
    run = folder / "pretrain"
    for iteration in SNAPSHOTS:
        target = folder / "snapshots" / f"it{iteration}"
        source = run / f"checkpoint_{iteration}.pt"
        if not (target / "model.pt").is_file() and source.is_file():
            save_atomic(read_state_dict(source), target / "model.pt")
            shutil.copy2(run / "metadata.json", target / "metadata.json")
    return sorted(int(p.name[2:]) for p in (folder / "snapshots").glob("it*") if (p / "model.pt").is_file())


def field_stage(folder: Path, iteration: int, dataset_dir: str) -> dict:
    """End-point error and feature health of snapshot ``iteration`` on the pool's held-out volumes (cached)."""
    path = folder / "snapshots" / f"it{iteration}" / "field_accuracy.json"
    if not path.is_file():
        config = ConfigParser()
        config.read_config([str(REPO / "bundles" / "cover_mri" / name) for name in CONFIGS])
        config.update({**SETTING, "dataset_dir": dataset_dir, "device": "$torch.device('cpu')"})
        write_json_atomic(field_and_feature_health(config, path.with_name("model.pt"), 32, seed=2024), path)
    return json.loads(path.read_text())


def curve_rows(folder: Path, snapshots: Sequence[int]) -> list[dict]:
    """Per snapshot and labelled-set size: pretrained - scratch Dice with its intervals (from ``paired.csv``) and
    the snapshot's field EPE."""
    rows = []
    for iteration in snapshots:
        paired = folder / "finetune" / f"it{iteration}" / "paired.csv"
        field = folder / "snapshots" / f"it{iteration}" / "field_accuracy.json"
        if not paired.is_file():
            continue
        epe = json.loads(field.read_text()) if field.is_file() else {}
        with open(paired, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({"iterations": iteration, "n_labelled": row["n_labelled"],
                             "dice_diff": row["dice_diff_mean"], "t95_low": row["dice_diff_t95_low"],
                             "t95_high": row["dice_diff_t95_high"], "boot95_low": row["dice_diff_boot95_low"],
                             "boot95_high": row["dice_diff_boot95_high"], "epe": epe.get("epe"),
                             "epe_identity": epe.get("epe_identity")})  # fmt: skip
    return rows


def plot(rows: Sequence[dict], path: Path) -> None:
    """pretrained - scratch Dice (bootstrap 95 % bars) against pretraining iterations, one line per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for n in sorted({r["n_labelled"] for r in rows}, key=int):
        mine = sorted((r for r in rows if r["n_labelled"] == n), key=lambda r: r["iterations"])
        x, y = [r["iterations"] for r in mine], [float(r["dice_diff"]) for r in mine]
        low = [v - float(r["boot95_low"]) for v, r in zip(y, mine)]
        high = [float(r["boot95_high"]) - v for v, r in zip(y, mine)]
        axis.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=f"n = {n}")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel("pretraining iterations (2 pairs each)")
    axis.set_ylabel("pretrained - scratch test Dice")
    axis.set_title("LA: does longer pretraining pay? (bootstrap 95 %)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(FOLDER), help="the run's folder (default: %(default)s)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (default: all)")
    parser.add_argument("--pretrain-dataset-dir", default=str(REPO.parent / "shared" / "data"),
                        help="folder of the pool's volumes (default: ../shared/data)")
    parser.add_argument("--la-dir", default=str(REPO.parent / "shared" / "data" / "la_mri_2018"),
                        help="left-atrium dataset folder (default: ../shared/data/la_mri_2018)")
    parser.add_argument("--sizes", nargs="+", default=["2", "4"], help="labelled volumes (default: 2 4)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--snapshots", nargs="+", type=int, help="snapshot iterations to evaluate (default: all)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if "keep" in args.stages and (kept := keep_for_resume(folder)) is not None:
        print(f"kept {kept} for the next session's resume")
        training_curve(["--run-dir", str(folder / "resume" / "runs"), "--output", str(folder / "training_curve")])
    exported = export_snapshots(folder) if "snapshots" in args.stages else []
    snapshots = args.snapshots or exported
    protocol = argparse.Namespace(dataset_dir=args.la_dir, pool=str(REPO / "data_lists" / "la_mri_2018_pool.json"),
                                  test=str(REPO / "data_lists" / "la_mri_2018_test.json"), test_key="test",
                                  finetune_sizes=args.sizes, probe_sizes=args.sizes, seeds=args.seeds,
                                  scratch_output=str(REPO / "benchmarks" / "results" / "label_efficiency_la"))  # fmt: skip
    for iteration in snapshots:
        weights = folder / "snapshots" / f"it{iteration}" / "model.pt"
        if "field" in args.stages:
            print(f"it{iteration}: field", field_stage(folder, iteration, args.pretrain_dataset_dir))
        if "finetune" in args.stages:
            finetune_stage(protocol, f"it{iteration}", weights, folder)
        if "probe" in args.stages:
            probe_stage(protocol, f"it{iteration}", weights, folder)
    rows = curve_rows(folder, snapshots)
    if "curve" in args.stages and rows:
        write_csv(folder / "curve.csv", rows)
        plot(rows, folder / "curve.png")
    return rows


if __name__ == "__main__":
    main()
