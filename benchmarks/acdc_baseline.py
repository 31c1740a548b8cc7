"""ACDC scratch baseline: candidate cover_seg settings trained from scratch on ACDC, chosen on validation only.

Each candidate of ``CANDIDATES`` (overlays + overrides of ``bundles/cover_seg/train.json``) is one
``benchmarks/seg_convergence.py`` run: trained from scratch on the pool's ``training`` list (ACDC: 100 frames of 50
patients), validated on its ``validation`` list (20 frames of 10 patients) every ``val_interval`` epochs, the best
validation checkpoint then evaluated once on the test list (40 frames of 20 patients) for the record. The chosen
candidate is the one with the highest best validation Dice; the test Dice plays no part in the choice. A candidate
whose ``<name>.json`` is already in ``--output`` (tracked) is reused, not trained again (one recorded as cut short,
``"completed": false``, trains on from its last checkpoint in ``--work-dir``), so the search resumes where it stopped. From the repository root (one training at a time, about 35 min each on one shared CPU thread)::

    python benchmarks/acdc_baseline.py --dataset-dir ../shared/data/acdc_cardiac_mri

Outputs in ``--output``: ``<name>.json`` / ``<name>.csv`` per candidate (settings, seconds, validation curve, test
metrics; see seg_convergence.py) and ``candidates.csv`` (one row per finished candidate, ``chosen`` marking the best by
validation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seg_convergence  # noqa: E402

from cover3d.protocols.bundle_runs import write_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# name -> (overlays after train.json, KEY=VALUE overrides)
CANDIDATES: dict[str, tuple[list[str], list[str]]] = {
    # native in-plane grid (no resampling), 10 mm slices, a patch over the whole heart and all slices, 400 iterations
    "acdc_scratch_1p56x1p56x10mm_96x96x16_400its": (["bundles/cover_seg/acdc.json"], ["epochs=8", "val_interval=2"]),
    # the same, twice the budget (validated every 200 iterations to save time)
    "acdc_scratch_1p56x1p56x10mm_96x96x16_800its": (["bundles/cover_seg/acdc.json"], ["epochs=16", "val_interval=4"]),
}


def candidate_row(result: dict) -> dict:
    """One ``candidates.csv`` row from a seg_convergence result: setting, time, validation and test Dice."""
    settings, curve = result["settings"], result["validation_curve"]
    best = max(curve, key=lambda c: c["val_mean_dice"])
    return {
        "name": result["name"], "voxels_mm": "x".join(f"{v:g}" for v in settings["pixdim"]),
        "patch": "x".join(map(str, settings["patch_size"])), "iterations": result["iterations"],
        "completed": result["completed"], "iterations_done": curve[-1]["iteration"],
        "train_minutes": round(result["train_seconds"] / 60, 1) if result["train_seconds"] else None,
        "best_val_dice": best["val_mean_dice"],
        "best_val_iteration": best["iteration"], "final_val_dice": curve[-1]["val_mean_dice"],
        "test_dice_best_checkpoint": result["test_dice"], "test_hd95_mm": result["test_hd95_mm"],
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", required=True, help="the ACDC folder (../shared/data/acdc_cardiac_mri)")
    parser.add_argument("--pool", default=str(REPO / "data_lists" / "acdc_pool.json"),
                        help="datalist with 'training' and 'validation' lists (default: data_lists/acdc_pool.json)")
    parser.add_argument("--test", default=str(REPO / "data_lists" / "acdc_test.json"),
                        help="test datalist (default: data_lists/acdc_test.json)")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                        help="candidates to train when not finished yet (default: all); candidates.csv lists every "
                        "finished one")
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "results" / "acdc_baseline" / "runs"),
                        help="bundle folders of the runs (weights are not tracked)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "acdc_baseline"))
    args = parser.parse_args(argv)

    output = Path(args.output)
    for name in args.candidates:
        path = output / f"{name}.json"
        if not path.is_file() or not json.loads(path.read_text())["completed"]:  # new, or cut short: train (resumed)
            overlays, overrides = CANDIDATES[name]
            seg_convergence.main(["--name", name, "--overlay", *[str(REPO / o) for o in overlays], "--set", *overrides,
                                  "--dataset-dir", args.dataset_dir, "--pool", args.pool, "--test", args.test,
                                  "--work-dir", args.work_dir, "--output", str(output)])  # fmt: skip
    finished = [output / f"{name}.json" for name in CANDIDATES if (output / f"{name}.json").is_file()]
    rows = [candidate_row(json.loads(path.read_text())) for path in finished]
    chosen = max(rows, key=lambda r: r["best_val_dice"])["name"]
    rows = [r | {"chosen": r["name"] == chosen} for r in rows]
    write_csv(output / "candidates.csv", rows)
    for r in rows:
        print(f"{'*' if r['chosen'] else ' '} {r['name']}: validation Dice {r['best_val_dice']:.4f} (iteration "
              f"{r['best_val_iteration']}), final {r['final_val_dice']:.4f}; test {r['test_dice_best_checkpoint']:.4f}; "
              f"{r['train_minutes']} min")
    print(f"chosen on validation: {chosen}")
    return rows


if __name__ == "__main__":
    main()
