"""Label efficiency: test Dice of segmentation fine-tuned from scratch vs from pretrained weights, same budget,
for several numbers of labelled training volumes and several seeds.

Every run is the ``cover_seg`` bundle run in this process: ``train.json`` + ``no_validation.json`` (fixed
iteration budget, final weights, no validation data) + ``--overlay`` (default ``converged.json``: the setting and
budget with which scratch training on every labelled left-atrium volume converges, chosen on the pool's validation
list) on a subset of the pool, then ``evaluate.json`` on the test datalist with the same voxel size and window.
For a seed, the subsets are nested (the first n of one seeded shuffle of the pool) and every mode trains on the
same subset with the same seed, so modes are compared pair by pair. Runs already finished in ``--output`` are
reused, so an interrupted protocol resumes where it stopped, also from committed results (each run's ``eval/*.csv``
files are tracked, its weights are not); the tables cover every finished run in ``--output``, so several invocations
fill one protocol: the same command on each core (a run is claimed by the invocation that starts it) or other sizes,
seeds or modes. ``settings.json`` in ``--output`` records the
setting; an invocation with another setting is refused.

Outputs in ``--output``: ``runs/<mode>_n<N>_seed<S>/`` (each run's bundle folder: models, runs, eval),
``results.csv`` (one row per run), ``summary.csv`` (mean and std per mode and size), ``paired.csv`` (per mode and
size: the paired difference to scratch of Dice and HD95 with a paired-t 95 % interval over seeds and a bootstrap
95 % interval over seeds x test cases, and the mean per-class Dice), ``label_efficiency.png``, and the printed
tables.

Default setting (``bundles/cover_seg/converged.json``): 2 mm voxels, widths 8-128, 64x48x32 patches (one per
volume, 2 per iteration), 800 iterations per run, sizes 2/4/8/16/all(60), seeds 0/1/2, modes scratch and
pretrained = 30 runs. Measured per run on this 2-core machine with one other job beside it: about 9 minutes of
training and 15 s of evaluation, so split the protocol over sessions and cores, e.g. from the repository root::

    python -m cover3d.protocols.label_efficiency --dataset-dir ../shared/data/la_mri_2018 \\
        --pool data_lists/la_mri_2018_pool.json --test data_lists/la_mri_2018_test.json \\
        --pretrained-weights weights/cover_mri_pool_2mm/model.pt --modes scratch --sizes 2 4 \\
        --output benchmarks/results/label_efficiency_la

(the same command, or ``--modes pretrained``, in another process with the same ``--output``). The weights must come from a
pretraining run with the same voxel size and widths, or pretrain on the pool's images first::

    ... --pretrain-config bundles/cover_mri/train.json --pretrain-set epochs=50 "patch_size=[48,48,32]" \\
        "context_size=[64,64,48]"

On a GPU, raise the budget and patch size, e.g. ``--epochs 50 --set patch_size=[96,96,32]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import re
import statistics
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from cover3d.errors import InputFileNotFoundError, InputValueError
from cover3d.protocols.bundle_runs import bundle_folder, parse_assignments, read_metrics, run_bundle, write_csv
from cover3d.protocols.options import existing_dir, existing_file, non_negative_float, non_negative_int, positive_int
from cover3d.protocols.subsets import nested_subset, read_pool, subset_sizes

__all__ = ["MODES", "argument_parser", "finished_runs", "main", "paired_statistics", "summarise"]

MODES = {  # mode -> (uses the pretrained weights, backbone frozen)
    "scratch": (False, False),
    "pretrained": (True, False),
    "probe": (True, True),
}
DEFAULT_OVERLAY = bundle_folder("cover_seg") / "converged.json"


def pretrain(
    config: Path, output: Path, dataset_dir: str, pool: str, seg_settings: dict, overrides: dict
) -> Path:
    """Run a pretraining bundle (e.g. bundles/cover_mri/train.json) on the pool images; return its weights file.

    Voxel size, widths and input channels are those of the segmentation runs (``seg_settings``), so the weights
    fit the segmentation network and see the same voxels; ``overrides`` set everything else (epochs, ...).
    """
    weights = output / "models" / "model.pt"
    if not weights.is_file():
        shared = {k: seg_settings[k] for k in ("pixdim", "channels", "in_channels")}
        run_bundle([config], bundle_root=str(output), dataset_dir=dataset_dir, datalist=pool, **{**shared, **overrides})
    return weights


def merged_overlays(overlays: Sequence[Path]) -> dict:
    """Top-level keys of the overlay files, later files winning (what ``monai.bundle run`` applies)."""
    merged: dict = {}
    for overlay in overlays:
        merged |= json.loads(Path(overlay).read_text())
    return merged


def evaluation_settings(bundle: Path, overlay: dict, settings: dict) -> dict:
    """Overrides of ``evaluate.json``: the overlay's keys that it defines (voxel size, patch, window...), then ``settings``."""
    evaluate_keys = json.loads((bundle / "evaluate.json").read_text())
    return {k: v for k, v in overlay.items() if k in evaluate_keys} | settings


def iteration_budget(bundle: Path, overlay: dict, settings: dict) -> int:
    """Iterations per run: epochs x iterations_per_epoch from ``settings``, else the overlay, else ``train.json``."""
    train = json.loads((bundle / "train.json").read_text())
    value = {k: settings.get(k, overlay.get(k, train[k])) for k in ("epochs", "iterations_per_epoch")}
    return int(value["epochs"]) * int(value["iterations_per_epoch"])


def check_protocol(output: Path, record: dict) -> None:
    """Write ``output/settings.json`` or check that the finished runs there used ``record``'s setting.

    A ``None`` value (e.g. no weights digest in a scratch-only invocation) matches anything and is filled in later.

    Raises:
        InputValueError: ``output`` holds runs of another setting (naming the keys that differ).
    """
    path = output / "settings.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    differing = sorted(k for k in set(saved) | set(record)
                       if saved.get(k) is not None and record.get(k) is not None and saved[k] != record[k])
    if differing:
        raise InputValueError(f"--output: {output} holds runs of another setting ({', '.join(differing)} differ "
                              f"from {path}); use another --output or the same setting")
    merged = record | {k: v for k, v in saved.items() if v is not None}
    if merged != saved:
        output.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n")


def file_digest(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of a file (names weights independently of where they lie)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def is_evaluated(run_dir: Path) -> bool:
    """The run in ``run_dir`` has its test metrics (``eval/metrics.csv``)."""
    return (run_dir / "eval" / "metrics.csv").is_file()


def run_one(
    bundle: Path, run_dir: Path, mode: str, subset: list[dict], seed: int, args: argparse.Namespace,
    overlays: Sequence[Path], settings: dict, evaluation: dict, weights: Path | None,
) -> None:
    """Train one mode on one subset and evaluate it on the test datalist (skipped when already evaluated, or while
    another invocation holds the run: each run is claimed with a lock on its folder, so several invocations of the
    same protocol, one per core, share its runs)."""
    from cover3d.engine import RunLock, RunLockedError

    uses_weights, frozen = MODES[mode]
    if is_evaluated(run_dir) and not args.reevaluate:
        return
    claim = RunLock(run_dir)
    try:
        claim.acquire()
    except RunLockedError:
        print(f"{run_dir.name}: running in another invocation, skipped here")
        return
    try:
        if not is_evaluated(run_dir):  # another invocation may have finished it meanwhile
            train_and_evaluate(bundle, run_dir, uses_weights, frozen, subset, seed, args, overlays, settings,
                               evaluation, weights)
        elif args.reevaluate:
            if not (run_dir / "models" / "model.pt").is_file():
                raise InputFileNotFoundError(f"--reevaluate: {run_dir.name} has no final weights (models/model.pt) here")
            evaluate(bundle, run_dir, args, evaluation)
    finally:
        claim.release()


def train_and_evaluate(
    bundle: Path, run_dir: Path, uses_weights: bool, frozen: bool, subset: list[dict], seed: int,
    args: argparse.Namespace, overlays: Sequence[Path], settings: dict, evaluation: dict, weights: Path | None,
) -> None:
    """One run of :func:`run_one`: the subset's datalist, training, evaluation and the training time."""
    datalist = run_dir / "datalist.json"
    datalist.write_text(json.dumps({"training": subset}, indent=2) + "\n")
    start = time.monotonic()
    run_bundle(
        [bundle / "train.json", bundle / "no_validation.json", *overlays],
        bundle_root=str(run_dir), dataset_dir=args.dataset_dir, datalist=str(datalist), seed=seed,
        pretrained_weights=str(weights) if uses_weights else None, freeze_backbone=frozen, **settings,
    )
    train_seconds = time.monotonic() - start
    evaluate(bundle, run_dir, args, evaluation)
    (run_dir / "train_seconds.txt").write_text(f"{train_seconds:.1f}\n")


def evaluate(bundle: Path, run_dir: Path, args: argparse.Namespace, evaluation: dict) -> None:
    """``evaluate.json`` with the run's final weights on the test datalist -> ``run_dir/eval/*.csv``."""
    run_bundle(
        [bundle / "evaluate.json"],
        bundle_root=str(run_dir), dataset_dir=args.dataset_dir, datalist=args.test, eval_key=args.test_key,
        **evaluation,
    )


def finished_runs(output: Path) -> tuple[list[dict], dict[tuple[str, int, int], Path]]:
    """Every evaluated run in ``output/runs`` (``<mode>_n<N>_seed<S>/eval/metrics.csv``): rows and run folders."""
    rows, run_dirs = [], {}
    for metrics_file in sorted((output / "runs").glob("*/eval/metrics.csv")):
        run_dir = metrics_file.parents[1]
        match = re.fullmatch(r"(\w+?)_n(\d+)_seed(\d+)", run_dir.name)
        if not match or match[1] not in MODES:
            continue
        mode, n, seed = match[1], int(match[2]), int(match[3])
        metrics = read_metrics(run_dir / "eval")
        seconds = run_dir / "train_seconds.txt"
        rows.append({
            "mode": mode, "n_labelled": n, "seed": seed,
            "dice": metrics["dice"], "hd95_mm": metrics.get("hd95_mm", math.nan),
            "train_seconds": float(seconds.read_text()) if seconds.is_file() else math.nan,
        })
        run_dirs[(mode, n, seed)] = run_dir
    rows.sort(key=lambda r: (r["n_labelled"], r["seed"], list(MODES).index(r["mode"])))
    return rows, run_dirs


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean and sample std of Dice and HD95 per (mode, n_labelled)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["n_labelled"]), []).append(row)

    def mean_std(values: list[float]) -> tuple[float, float]:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    summary = []
    for (mode, n), group in sorted(groups.items(), key=lambda item: (item[0][1], list(MODES).index(item[0][0]))):
        dice, dice_std = mean_std([r["dice"] for r in group])
        hd, hd_std = mean_std([r["hd95_mm"] for r in group])
        summary.append({"mode": mode, "n_labelled": n, "runs": len(group), "dice_mean": dice, "dice_std": dice_std,
                        "hd95_mm_mean": hd, "hd95_mm_std": hd_std})
    return summary


def per_case_scores(eval_dir: Path, metric: str = "dice") -> dict[str, list[float]]:
    """Per test case, the per-class scores of ``<metric>_raw.csv`` (MONAI ``MetricsSaver``): file name -> [class0, ...]."""
    with open(eval_dir / f"{metric}_raw.csv", newline="") as f:
        return {Path(r["filename"]).name: [float(v) for k, v in r.items() if k.startswith("class")] for r in csv.DictReader(f)}


def paired_statistics(rows: Sequence[dict], run_dirs: dict[tuple[str, int, int], Path], resamples: int = 10000,
                      seed: int = 0) -> list[dict]:
    """For each mode other than scratch and each size: the paired difference mode - scratch of the test Dice and
    HD95 (same subset, same seed), its mean and 95 % intervals two ways: a paired t interval over seeds (each seed's
    difference of the means over test cases), and a bootstrap over seeds x test cases (resampling the per-case
    differences ``resamples`` times, with a generator seeded by ``seed``, the mode, size and metric, so an interval
    depends on its own runs only, not on which other comparisons the folder holds). Also the mean per-class Dice of
    both (multi-class data such as ACDC)."""
    import numpy as np
    from scipy import stats

    by_key = {(r["mode"], r["n_labelled"], r["seed"]): r for r in rows}
    results = []
    for mode, n in sorted({(m, size) for m, size, _ in by_key if m != "scratch"}, key=lambda k: (k[1], k[0])):
        seeds = sorted(s for m, size, s in by_key if (m, size) == (mode, n) and ("scratch", n, s) in by_key)
        if not seeds:
            continue
        summary = {"mode": mode, "n_labelled": n, "seeds": len(seeds)}
        for metric in ("dice", "hd95_mm"):
            per_seed = [by_key[(mode, n, s)][metric] - by_key[("scratch", n, s)][metric] for s in seeds]
            per_case = []
            for s in seeds:
                ours = per_case_scores(run_dirs[(mode, n, s)] / "eval", metric)
                theirs = per_case_scores(run_dirs[("scratch", n, s)] / "eval", metric)
                per_case += [float(np.mean(ours[c])) - float(np.mean(theirs[c])) for c in sorted(ours) if c in theirs]
            per_case = np.asarray([d for d in per_case if np.isfinite(d)])
            mean = float(np.mean(per_seed))
            half = float(stats.t.ppf(0.975, len(seeds) - 1) * np.std(per_seed, ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else math.nan
            rng = np.random.default_rng([seed, n, zlib.crc32(f"{mode}/{metric}".encode())])
            boot = rng.choice(per_case, (resamples, len(per_case))).mean(axis=1) if len(per_case) else np.array([math.nan])
            summary |= {f"{metric}_diff_mean": mean, f"{metric}_diff_t95_low": mean - half, f"{metric}_diff_t95_high": mean + half,
                        f"{metric}_diff_boot95_low": float(np.percentile(boot, 2.5)),
                        f"{metric}_diff_boot95_high": float(np.percentile(boot, 97.5))}  # fmt: skip
        for label, compared in (("scratch", "scratch"), ("mode", mode)):
            per_class = [np.mean(list(per_case_scores(run_dirs[(compared, n, s)] / "eval").values()), axis=0) for s in seeds]
            summary |= {f"{label}_dice_class{i}": float(v) for i, v in enumerate(np.mean(per_class, axis=0))}
        results.append(summary)
    return results


def format_paired_table(paired: Sequence[dict]) -> str:
    """One line per (mode, size): Dice and HD95 differences to scratch with both 95 % intervals."""
    lines = [["n labelled", "mode", "seeds", "Dice diff [t 95%]", "Dice diff [bootstrap 95%]", "HD95 diff mm [t 95%]"]]
    for p in paired:
        lines.append([str(p["n_labelled"]), p["mode"], str(p["seeds"]),
                      f"{p['dice_diff_mean']:+.3f} [{p['dice_diff_t95_low']:+.3f}, {p['dice_diff_t95_high']:+.3f}]",
                      f"[{p['dice_diff_boot95_low']:+.3f}, {p['dice_diff_boot95_high']:+.3f}]",
                      f"{p['hd95_mm_diff_mean']:+.2f} [{p['hd95_mm_diff_t95_low']:+.2f}, {p['hd95_mm_diff_t95_high']:+.2f}]"])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in lines)


def format_table(rows: Sequence[dict], modes: Sequence[str]) -> str:
    """Dice mean +- std per size (rows) and mode (columns), plus the paired difference to scratch."""
    by_key = {(r["mode"], r["n_labelled"], r["seed"]): r["dice"] for r in rows}
    sizes = sorted({r["n_labelled"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    compared = [m for m in modes if m != "scratch"] if "scratch" in modes else []
    header = ["n labelled"] + [f"{m} Dice" for m in modes] + [f"{m} - scratch" for m in compared]
    lines = [header]

    def cell(values: list[float], signed: bool = False) -> str:
        if not values:
            return "-"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):{'+' if signed else ''}.3f} +- {std:.3f}"

    for n in sizes:
        line = [str(n)]
        line += [cell([by_key[(m, n, s)] for s in seeds if (m, n, s) in by_key]) for m in modes]
        line += [cell([by_key[(m, n, s)] - by_key[("scratch", n, s)] for s in seeds
                       if (m, n, s) in by_key and ("scratch", n, s) in by_key], signed=True) for m in compared]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in lines)


def plot(summary: Sequence[dict], path: Path, title: str) -> None:
    """Dice (mean +- std over seeds) against the number of labelled volumes, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for mode in MODES:
        points = [s for s in summary if s["mode"] == mode]
        if points:
            axis.errorbar([p["n_labelled"] for p in points], [p["dice_mean"] for p in points],
                          yerr=[p["dice_std"] for p in points], marker="o", capsize=3, label=mode)
    axis.set_xscale("log", base=2)
    sizes = sorted({s["n_labelled"] for s in summary})
    axis.set_xticks(sizes, [str(n) for n in sizes])
    axis.minorticks_off()
    axis.set_xlabel("labelled training volumes")
    axis.set_ylabel("test Dice (mean +- std over seeds)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def argument_parser() -> argparse.ArgumentParser:
    """The command line of the label-efficiency protocol (``python -m cover3d.protocols.label_efficiency --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m cover3d.protocols.label_efficiency", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset-dir", required=True,
                      help="folder the datalist paths are relative to (needed only while a run is left to train "
                      "or evaluate)")
    data.add_argument("--pool", required=True, type=existing_file,
                      help="datalist (JSON) of the labelled volumes the training subsets are drawn from")
    data.add_argument("--pool-keys", nargs="+", default=["training", "validation"], metavar="KEY",
                      help="lists of --pool that together form the pool (default: training validation)")
    data.add_argument("--test", required=True, type=existing_file, help="datalist (JSON) of the labelled test cases")
    data.add_argument("--test-key", default="test", help="list of the test cases in --test (default: test)")
    weights = parser.add_argument_group("pretrained weights (needed by modes pretrained and probe; give one)")
    source = weights.add_mutually_exclusive_group()
    source.add_argument("--pretrained-weights", type=existing_file, metavar="MODEL_PT",
                        help="pretraining weights file (e.g. weights/cover_mri_pool_2mm/model.pt); it must come from "
                        "a pretraining with the voxel size and widths of the segmentation runs")
    source.add_argument("--pretrain-config", type=existing_file, metavar="TRAIN_JSON",
                        help="pretraining bundle config (e.g. bundles/cover_mri/train.json) run first on the pool "
                        "images, with the voxel size and widths of the segmentation runs, into --output/pretrain; "
                        "its weights are then used (reused when they exist)")
    weights.add_argument("--pretrain-set", nargs="*", default=[], metavar="KEY=VALUE",
                         help="overrides of the pretraining bundle (JSON values), e.g. epochs=50")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--sizes", nargs="+", default=["2", "4", "8", "16", "all"], metavar="N",
                          help="numbers of labelled training volumes, integers or 'all' (default: 2 4 8 16 all)")
    protocol.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2], metavar="SEED",
                          help="seeds: each draws one nested subset per size and seeds the training (default: 0 1 2)")
    protocol.add_argument("--modes", nargs="+", default=["scratch", "pretrained"], choices=list(MODES),
                          help="scratch: random initialisation; pretrained: fine-tune from the pretrained weights; "
                          "probe: pretrained backbone frozen, only the head trains (default: scratch pretrained)")
    training = parser.add_argument_group("segmentation training (the cover_seg bundle)")
    training.add_argument("--bundle", type=existing_dir, default=str(bundle_folder("cover_seg")),
                          help="the cover_seg bundle folder (default: the repository's bundles/cover_seg)")
    training.add_argument("--overlay", nargs="*", type=existing_file, default=[str(DEFAULT_OVERLAY)], metavar="JSON",
                          help="cover_seg configs applied after train.json + no_validation.json, later ones winning "
                          "(default: the bundle's converged.json; give --overlay with no file for none)")
    training.add_argument("--epochs", type=positive_int, help="epochs per run (overrides the overlay's)")
    training.add_argument("--iterations-per-epoch", type=positive_int,
                          help="iterations per epoch (overrides the overlay's); budget = epochs x this")
    training.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                          help="cover_seg bundle overrides (JSON values), e.g. pixdim=[2,2,2] num_classes=4")
    run = parser.add_argument_group("running")
    run.add_argument("--output", required=True,
                     help="protocol folder: runs/<mode>_n<N>_seed<S>/, settings.json, results.csv, summary.csv, "
                     "paired.csv, label_efficiency.png; finished runs found there are reused")
    run.add_argument("--start-no-run-after", type=non_negative_float, metavar="MINUTES",
                     help="start no new run once this many minutes have passed (the one running finishes; the "
                     "tables then cover what is done), to fit a share of the protocol into a session")
    run.add_argument("--reevaluate", action="store_true",
                     help="evaluate the planned runs that are finished again, from their final weights (after a "
                     "metric changed); unfinished ones train as usual")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the protocol; return the per-run rows."""
    parser = argument_parser()
    args = parser.parse_args(argv)

    needs_weights = any(MODES[m][0] for m in args.modes)
    if needs_weights and not (args.pretrained_weights or args.pretrain_config):
        parser.error(f"modes {args.modes} need --pretrained-weights or --pretrain-config")
    settings = parse_assignments(args.set)
    settings |= {k: v for k, v in (("epochs", args.epochs), ("iterations_per_epoch", args.iterations_per_epoch)) if v}
    if not (Path(args.bundle) / "train.json").is_file():
        parser.error(f"--bundle: {args.bundle} holds no train.json (the cover_seg bundle folder is expected)")
    output, bundle = Path(args.output).resolve(), Path(args.bundle).resolve()
    overlays = [Path(o).resolve() for o in args.overlay]
    overlay = merged_overlays(overlays)
    evaluation = evaluation_settings(bundle, overlay, settings)
    pool = read_pool(args.pool, args.pool_keys)
    sizes = subset_sizes(args.sizes, len(pool), "--sizes")
    planned = list(itertools.product(sizes, args.seeds, args.modes))
    left = [(n, seed, mode) for n, seed, mode in planned
            if args.reevaluate or not is_evaluated(output / "runs" / f"{mode}_n{n}_seed{seed}")]
    if left and not Path(args.dataset_dir).is_dir():
        parser.error(f"--dataset-dir: folder {args.dataset_dir} not found ({len(left)} planned runs need its volumes)")
    weights_path = None
    if args.pretrained_weights:
        weights_path = Path(args.pretrained_weights).resolve()
    elif args.pretrain_config and needs_weights:
        seg_defaults = json.loads((bundle / "train.json").read_text())
        seg_settings = {k: evaluation.get(k, seg_defaults[k]) for k in ("pixdim", "channels", "in_channels")}
        weights_path = pretrain(Path(args.pretrain_config).resolve(), output / "pretrain", args.dataset_dir,
                                str(Path(args.pool).resolve()), seg_settings,
                                parse_assignments(args.pretrain_set, "--pretrain-set"))
    try:
        check_protocol(output, {
            "overlay": overlay, "settings": settings, "pool": Path(args.pool).name, "test": Path(args.test).name,
            "pretrained_weights_sha256": file_digest(weights_path) if weights_path and weights_path.is_file() else None,
        })
    except ValueError as error:
        parser.error(str(error))

    budget = f"{iteration_budget(bundle, overlay, settings)} iterations per run"
    print(f"label efficiency: pool {len(pool)} volumes, sizes {sizes}, seeds {args.seeds}, modes {args.modes}; "
          f"{budget}; overlays {[o.name for o in overlays]}, overrides {settings}")
    deadline = None if args.start_no_run_after is None else time.monotonic() + 60 * args.start_no_run_after
    for index, (n, seed, mode) in enumerate(planned):
        run_dir = output / "runs" / f"{mode}_n{n}_seed{seed}"
        if deadline is not None and time.monotonic() > deadline and not is_evaluated(run_dir):
            print(f"--start-no-run-after {args.start_no_run_after} min reached: {len(planned) - index} planned runs "
                  "left to a later invocation")
            break
        run_one(bundle, run_dir, mode, nested_subset(pool, n, seed), seed, args, overlays, settings, evaluation,
                weights_path)
    rows, run_dirs = finished_runs(output)
    for row in rows:
        print(f"  {row['mode']:10s} n={row['n_labelled']:3d} seed={row['seed']}: Dice {row['dice']:.4f}")
    summary = summarise(rows)
    write_csv(output / "results.csv", rows)
    write_csv(output / "summary.csv", summary)
    paired = paired_statistics(rows, run_dirs)
    if paired:
        write_csv(output / "paired.csv", paired)
        print(format_paired_table(paired))
    plot(summary, output / "label_efficiency.png", f"{Path(args.pool).stem} -> {Path(args.test).stem}, {budget}")
    print(format_table(rows, [m for m in MODES if any(r["mode"] == m for r in rows)]))
    print(f"wrote {output / 'results.csv'}, {output / 'summary.csv'}, {output / 'label_efficiency.png'}")
    return rows


if __name__ == "__main__":
    main()
