"""One cover_seg training run to convergence, recorded: settings, wall time, validation curve, test Dice of the best
checkpoint.

Trains ``bundles/cover_seg/train.json`` (+ ``--overlay`` files, + ``--set`` overrides) from scratch (or from
``pretrained_weights=...`` in ``--set``) on the pool's ``training`` list with sliding-window validation on its
``validation`` list every ``val_interval`` epochs; the best validation checkpoint (``models/model.pt``) is then
evaluated with ``evaluate.json`` on the test list. The test list is never used to choose anything. From the
repository root::

    python benchmarks/seg_convergence.py --name converged_1p5mm --overlay bundles/cover_seg/converged.json \\
        --dataset-dir ../shared/data/la_mri_2018 --pool data_lists/la_mri_2018_pool.json \\
        --test data_lists/la_mri_2018_test.json

Keep ``infer_roi_size`` at the patch size: the backbone's GroupNorm statistics are those of the whole window, so a
window larger than the training patch (zero-padded around a small volume) shifts them and costs Dice (measured:
validation Dice 0.548 with a 112x80x48 window vs 0.778 with the 64x64x32 training patch, same weights).

Outputs: ``--output/<name>.json`` (settings, seconds, best epoch, validation curve, test metrics) and
``<name>.csv`` (epoch, iteration, validation mean Dice, mean training loss of the epoch); the run's bundle folder
(weights, TensorBoard, eval) is ``--work-dir/<name>``. A finished training (``models/model_final.pt``) is not
repeated; an interrupted one resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from cover3d.protocols.bundle_runs import parse_assignments, read_metrics, run_bundle, write_csv

REPO = Path(__file__).resolve().parents[1]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars under ``log_dir``: tag -> [(step, value), ...] sorted by step (last write wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def validation_curve(scalars: dict[str, list[tuple[int, float]]], iterations_per_epoch: int) -> list[dict]:
    """Rows per validated epoch: ``epoch``, ``iteration``, ``val_mean_dice``, ``train_loss`` (mean over the epoch)."""
    losses = dict(scalars.get("train_loss", []))
    rows = []
    for epoch, dice in scalars.get("val_mean_dice", []):
        epoch_losses = [losses[i] for i in range((epoch - 1) * iterations_per_epoch + 1, epoch * iterations_per_epoch + 1)
                        if i in losses]
        rows.append({"epoch": epoch, "iteration": epoch * iterations_per_epoch, "val_mean_dice": dice,
                     "train_loss": statistics.fmean(epoch_losses) if epoch_losses else float("nan")})
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="run name (output file stem)")
    parser.add_argument("--overlay", nargs="*", default=[], help="config files applied after train.json")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle overrides (JSON values)")
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--pool", required=True, help="datalist with 'training' and 'validation' lists")
    parser.add_argument("--test", required=True)
    parser.add_argument("--test-key", default="test")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not (re)start training: evaluate the best checkpoint so far (a run cut short)")
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "cover_seg"))
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "results" / "seg_convergence" / "runs"))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "seg_convergence"))
    args = parser.parse_args(argv)

    bundle, run_dir = Path(args.bundle).resolve(), Path(args.work_dir).resolve() / args.name
    overlays = [Path(p).resolve() for p in args.overlay]
    overrides = parse_assignments(args.set)
    changed = {}  # keys the overlays and overrides change, in order
    for overlay in overlays:
        changed.update(json.loads(overlay.read_text()))
    changed.update(overrides)
    settings = {**json.loads((bundle / "train.json").read_text()), **changed}
    common = {"bundle_root": str(run_dir), "dataset_dir": str(Path(args.dataset_dir).resolve()), **overrides}
    seconds_file = run_dir / "train_seconds.txt"
    completed = (run_dir / "models" / "model_final.pt").is_file()
    if not completed and not args.evaluate_only:
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        run_bundle([bundle / "train.json", *overlays], datalist=str(Path(args.pool).resolve()), **common)
        previous = float(seconds_file.read_text()) if seconds_file.is_file() else 0.0  # resumed: add up
        seconds_file.write_text(f"{previous + time.monotonic() - start:.1f}\n")
        completed = True
    eval_start = time.monotonic()
    evaluate = bundle / "evaluate.json"
    shared = set(json.loads(evaluate.read_text())) - {"bundle_root", "datalist", "dataset_dir"}
    run_bundle([evaluate], datalist=str(Path(args.test).resolve()), eval_key=args.test_key,
               bundle_root=common["bundle_root"], dataset_dir=common["dataset_dir"],
               **{k: v for k, v in changed.items() if k in shared})  # network and preprocessing settings
    metrics = read_metrics(run_dir / "eval")
    curve = validation_curve(read_scalars(run_dir / "runs"), int(settings["iterations_per_epoch"]))
    best = json.loads((run_dir / "models" / "model.json").read_text())
    keys = ("pixdim", "channels", "patch_size", "samples_per_volume", "batch_size", "epochs", "iterations_per_epoch",
            "val_interval", "learning_rate", "warmup_iterations", "infer_roi_size", "pretrained_weights", "seed")
    result = {
        "name": args.name, "overlays": [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in overlays],
        "overrides": overrides, "changed": changed, "settings": {k: settings.get(k) for k in keys},
        "iterations": int(settings["epochs"]) * int(settings["iterations_per_epoch"]),
        "completed": completed, "epochs_done": max((row["epoch"] for row in curve), default=0),
        "train_seconds": float(seconds_file.read_text()) if seconds_file.is_file() else None, "eval_seconds": round(time.monotonic() - eval_start, 1),
        "best_epoch": best["epoch"], "best_val_mean_dice": best["value"],
        "test_dice": metrics["dice"], "test_hd95_mm": metrics.get("hd95_mm"), "validation_curve": curve,
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if curve:
        write_csv(output / f"{args.name}.csv", curve)
    print(f"{args.name}: {result['iterations']} iterations planned, completed: {completed}; best validation Dice "
          f"{best['value']:.4f} at epoch {best['epoch']}; test Dice {metrics['dice']:.4f}, HD95 "
          f"{metrics.get('hd95_mm', float('nan')):.2f} mm")
    return result


if __name__ == "__main__":
    main()
