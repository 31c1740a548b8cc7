"""Regenerate the documentation's tables from the tracked result files under ``benchmarks/results/``.

A generated table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in any markdown file (by default
README.md and docs/*.md); NAME is a key of ``TABLES``, whose renderer reads the result file and returns markdown.
``--check`` exits 1 (naming the files and tables) when a file differs from what the result files give, so hand-typed
numbers cannot drift from the measurements::

    python benchmarks/readme_tables.py                           # rewrite the tables in README.md and docs/*.md
    python benchmarks/readme_tables.py --check                   # the test suite runs this
    python benchmarks/readme_tables.py --files docs/evidence.md  # only these markdown files
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

from cover3d.protocols.label_efficiency import finished_runs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def bundle_defaults() -> str:
    """``bundle_defaults.json`` (benchmarks/bundle_defaults.py): one row per pretraining bundle."""
    rows = []
    for r in json.loads((RESULTS / "bundle_defaults.json").read_text(encoding="utf-8")):
        minutes, seconds = divmod(round(r["wall_seconds"]), 60)
        rows.append([f"`{r['bundle']}`", f"{minutes} min {seconds:02d} s", r["threads"], f"{r['peak_rss_gib']:.1f} GB",
                     " ".join(f"{v:.2f}" for v in r["validation_epe"]) + f" (identity {r['validation_epe_identity']:.2f})",
                     f"{r['eval_epe']:.2f} voxels", f"{r['eval_epe_identity']:.2f} voxels"])  # fmt: skip
    headers = ["bundle", "wall time (whole run)", "threads", "peak RSS", "validation EPE per epoch",
               "evaluation EPE of the saved weights", "zero field"]  # fmt: skip
    return markdown_table(headers, rows)


def threads() -> str:
    """``threads.json`` (benchmarks/threads.py): speed by thread count, idle and beside one busy process."""
    result = json.loads((RESULTS / "threads.json").read_text())
    cases = result["cases"]
    single = {c["load"]: c["median"] for c in cases if c["threads"] == 1}
    rows = [[c["load"], c["threads"], f"{c['median']:.3f}", f"{c['median'] / single[c['load']]:.2f}x"] for c in cases]
    return markdown_table(["CPU", "threads", "it/s (median)", "vs 1 thread"], rows)


def seg_convergence() -> str:
    """``seg_convergence/*.json`` (benchmarks/seg_convergence.py): runs evaluated with the window = the patch."""
    rows = []
    for path in sorted((RESULTS / "seg_convergence").glob("*.json")):
        r = json.loads(path.read_text())
        settings = r["settings"]
        if settings["infer_roi_size"] not in ("@patch_size", settings["patch_size"]):
            continue  # an early run validated with a larger window (seg_convergence/NOTES.md)
        best = max(r["validation_curve"], key=lambda c: c["val_mean_dice"])
        rows.append([f"`{r['name']}`", f"{settings['pixdim'][0]:g} mm", "x".join(map(str, settings["patch_size"])),
                     r["iterations"], f"{r['train_seconds'] / 60:.1f} min", f"{best['val_mean_dice']:.3f} ({best['iteration']})",
                     f"{r['test_dice']:.3f}", f"{r['test_hd95_mm']:.2f} mm"])  # fmt: skip
    headers = ["run (scratch, every training volume of the pool)", "voxels", "patch", "iterations", "training (1 thread)",
               "best validation Dice (iteration)", "test Dice", "test HD95"]  # fmt: skip
    return markdown_table(headers, rows)


def acdc_baseline() -> str:
    """``acdc_baseline/candidates.csv`` (benchmarks/acdc_baseline.py): ACDC scratch candidates, chosen on validation."""
    rows = []
    for r in csv.DictReader((RESULTS / "acdc_baseline" / "candidates.csv").open(newline="")):
        rows.append([f"`{r['name']}`" + (" (chosen)" if r["chosen"] == "True" else ""), f"{r['voxels_mm']} mm",
                     r["patch"], r["iterations"] if r["completed"] == "True" else f"{r['iterations']} (cut at {r['iterations_done']})",
                     f"{float(r['train_minutes']):.1f} min" if r["train_minutes"] else "-",
                     f"{float(r['best_val_dice']):.3f} ({r['best_val_iteration']})", f"{float(r['final_val_dice']):.3f}",
                     f"{float(r['test_dice_best_checkpoint']):.3f}"])  # fmt: skip
    headers = ["candidate (scratch, 100 training frames)", "voxels", "patch", "iterations", "training (1 thread)",
               "best validation Dice (iteration)", "final validation Dice", "test Dice (best checkpoint)"]  # fmt: skip
    return markdown_table(headers, rows)


def acdc_all_frames(folder: str) -> str:
    """``<folder>/runs/scratch_n120_seed*/eval`` (``python -m cover3d.protocols.label_efficiency --sizes all``): scratch
    on all 120 ACDC pool frames, per seed the test Dice (mean and per class) and HD95."""
    rows = []
    for run in sorted((RESULTS / folder / "runs").glob("scratch_n120_seed*")):
        if not (run / "eval" / "metrics.csv").is_file():
            continue
        metrics = {r[0]: float(r[1]) for r in csv.reader((run / "eval" / "metrics.csv").open(newline=""))}
        per_class = {r["class"]: float(r["mean"]) for r in csv.DictReader((run / "eval" / "dice_summary.csv").open(newline=""))}
        minutes = float((run / "train_seconds.txt").read_text()) / 60
        rows.append([run.name.rsplit("seed", 1)[1], f"{metrics['dice']:.3f}", f"{per_class['class0']:.3f}",
                     f"{per_class['class1']:.3f}", f"{per_class['class2']:.3f}", f"{metrics['hd95_mm']:.1f} mm",
                     f"{minutes:.1f} min"])  # fmt: skip
    headers = ["seed", "test Dice (mean of RV, MYO, LV)", "RV", "MYO", "LV", "test HD95", "training (1 thread)"]
    return markdown_table(headers, rows)


def label_efficiency(folder: str, class_names: Sequence[str] = ()) -> str:
    """``<folder>/summary.csv`` and ``paired.csv`` (``python -m cover3d.protocols.label_efficiency``): per size, scratch and each
    other mode, and the paired difference with its two 95 % intervals; with ``class_names`` (multi-class data) also
    each class's mean Dice, scratch -> mode."""
    def read(name: str) -> list[dict]:
        path = RESULTS / folder / name
        return list(csv.DictReader(path.open(newline=""))) if path.is_file() else []

    summary = {(r["mode"], int(r["n_labelled"])): r for r in read("summary.csv")}
    paired = {(r["mode"], int(r["n_labelled"])): r for r in read("paired.csv")}

    def cell(mode: str, n: int) -> str:
        r = summary.get((mode, n))
        if not r:
            return "-"
        return f"{float(r['dice_mean']):.3f} +- {float(r['dice_std']):.3f} ({r['runs']})"

    rows = []
    for n in sorted({n for _, n in summary}):
        others = sorted({m for m, size in summary if size == n and m != "scratch"}) or ["-"]
        for mode in others:
            p = paired.get((mode, n))
            low, high = (float(p[f"dice_diff_t95_{side}"]) for side in ("low", "high")) if p else (0.0, 0.0)
            interval = f"[{low:+.3f}, {high:+.3f}]" if low == low else "(one seed: no interval)"  # NaN with one seed
            diff = f"{float(p['dice_diff_mean']):+.3f} {interval}" if p else "-"
            boot = f"[{float(p['dice_diff_boot95_low']):+.3f}, {float(p['dice_diff_boot95_high']):+.3f}]" if p else "-"
            hd95 = " / ".join(f"{float(summary[(m, n)]['hd95_mm_mean']):.1f}" if (m, n) in summary else "-"
                              for m in ("scratch", mode))
            row = [n, cell("scratch", n), mode, cell(mode, n), diff, boot, hd95]
            if class_names:
                row.append(", ".join(f"{name} {float(p[f'scratch_dice_class{k}']):.3f} -> "
                                     f"{float(p[f'mode_dice_class{k}']):.3f}" for k, name in enumerate(class_names))
                           if p else "-")  # fmt: skip
            rows.append(row)
    if not rows:
        return f"(no finished runs in `benchmarks/results/{folder}/` yet)"
    headers = ["n labelled", "scratch Dice (runs)", "mode", "mode Dice (runs)", "mode - scratch [paired t 95 %]",
               "[bootstrap 95 %, seeds x cases]", "HD95 mm scratch / mode"]  # fmt: skip
    return markdown_table(headers + (["Dice per class, scratch -> mode"] if class_names else []), rows)


def feature_probe_table() -> str:
    """``feature_probe/*.json`` (``python -m cover3d.protocols.feature_probe``): its own markdown report."""
    from cover3d.protocols.feature_probe import markdown_report

    names = ("untrained_seed0", "cover_mri_default", "cover_mri_default_foreground", "cover_mri_pool_2mm")
    paths = [RESULTS / "feature_probe" / f"{name}.json" for name in names]
    return markdown_report([json.loads(p.read_text()) for p in paths if p.is_file()])


def pretext_comparison_table(folder: str) -> str:
    """``<folder>/results.json`` (``python -m cover3d.protocols.pretext_comparison``): one row per pretext, in its
    order."""
    from cover3d.protocols.pretext_comparison import PRETEXTS
    from cover3d.protocols.pretext_comparison import markdown_table as pretext_table

    rows = json.loads((RESULTS / folder / "results.json").read_text())["pretexts"]
    return pretext_table({name: rows[name] for name in PRETEXTS if name in rows})


def pretext_head_to_head(folder: str) -> str:
    """``<folder>/head_to_head.csv``: each COVER variant's fine-tune Dice minus each baseline's."""
    from cover3d.protocols.pretext_comparison import head_to_head_table

    with open(RESULTS / folder / "head_to_head.csv", newline="") as f:
        return head_to_head_table(list(csv.DictReader(f)))


def pretraining_length() -> str:
    """``pretraining_length/`` (benchmarks/pretraining_length.py): per snapshot of the long run, its field accuracy on
    held-out pairs and, where fine-tuned, LA pretrained - scratch Dice per labelled-set size."""
    folder = RESULTS / "pretraining_length"
    snapshots = sorted((p for p in (folder / "snapshots").glob("it*") if (p / "field_accuracy.json").is_file()),
                       key=lambda p: int(p.name[2:]))  # fmt: skip
    paired = {}
    for path in (folder / "finetune").glob("it*/paired.csv"):
        for r in csv.DictReader(path.open(newline="")):
            paired[(path.parent.name, r["n_labelled"])] = r
    sizes = sorted({n for _, n in paired} | {"2", "4"}, key=int)

    def cell(snapshot: str, n: str) -> str:
        r = paired.get((snapshot, n))
        if r is None:  # seeds still running: the finished ones, each against its scratch run (same subset)
            dice = {(r["mode"], r["seed"]): r["dice"] for r in finished_runs(folder / "finetune" / snapshot)[0]
                    if r["n_labelled"] == int(n)}  # fmt: skip
            diffs = [d - dice[("scratch", seed)] for (mode, seed), d in sorted(dice.items()) if mode == "pretrained"]
            return (f"{len(diffs)} seed(s) so far: " + ", ".join(f"{d:+.3f}" for d in diffs)) if diffs else "not yet"
        return (f"{float(r['dice_diff_mean']):+.3f} [{float(r['dice_diff_boot95_low']):+.3f}, "
                f"{float(r['dice_diff_boot95_high']):+.3f}]")  # fmt: skip

    rows = []
    for path in snapshots:
        field = json.loads((path / "field_accuracy.json").read_text())
        rows.append([f"{int(path.name[2:]):,}", f"{field['epe']:.3f} ({field['epe_identity']:.3f})",
                     f"{field['cosine_all']:.3f}", *(cell(path.name, n) for n in sizes)])  # fmt: skip
    headers = ["pretraining iterations", "held-out field EPE, voxels (zero field)", "feature cosine",
               *(f"LA n = {n}: pretrained - scratch Dice [bootstrap 95 %]" for n in sizes)]  # fmt: skip
    return markdown_table(headers, rows)


def stored_table(name: str) -> str:
    """``<name>.json`` written by a benchmark's ``save_table`` (veu.py, pair_generation.py, ...): its table."""
    result = json.loads((RESULTS / f"{name}.json").read_text())
    return markdown_table(result["headers"], result["rows"])


def store_scaling() -> str:
    """``store_scaling/store_scaling.json`` (benchmarks/store_scaling.py): in-RAM cache vs store, by N."""
    result = json.loads((RESULTS / "store_scaling" / "store_scaling.json").read_text())
    return markdown_table(result["headers"], result["rows"])


def classical_registration(bundle: str) -> str:
    """``classical_registration_<bundle>.csv`` (benchmarks/classical_registration.py): means over its pairs."""
    from classical_registration import summary_table

    with open(RESULTS / f"classical_registration_{bundle}.csv", newline="") as f:
        return summary_table(list(csv.DictReader(f)))


def gpu_check() -> str:
    """``gpu_check_<gpu>.json`` (benchmarks/gpu_check.py): each GPU's table as the script prints it, under its name."""
    from gpu_check import HEADERS, format_rows

    blocks = []
    for path in sorted(RESULTS.glob("gpu_check_*.json")):
        result = json.loads(path.read_text())
        rows = format_rows([[row[h] for h in HEADERS] for row in result["rows"]])
        blocks.append(f"{result['gpu']}, torch {result['torch']}, CUDA {result['cuda']}:\n\n{markdown_table(HEADERS, rows)}")
    return "\n\n".join(blocks)


TABLES: dict[str, Callable[[], str]] = {
    "bundle_defaults": bundle_defaults, "threads": threads, "seg_convergence": seg_convergence, "gpu_check": gpu_check,
    "label_efficiency_la": partial(label_efficiency, "label_efficiency_la"),
    "label_efficiency_acdc": partial(label_efficiency, "label_efficiency_acdc", class_names=("RV", "MYO", "LV")),
    "label_efficiency_acdc_2400its": partial(label_efficiency, "label_efficiency_acdc_2400its",
                                             class_names=("RV", "MYO", "LV")),
    "acdc_baseline": acdc_baseline,
    "acdc_all_frames": partial(acdc_all_frames, "label_efficiency_acdc_native"),
    "label_efficiency_la_backbone_lr": partial(label_efficiency, "label_efficiency_la_backbone_lr0.1"),
    "feature_probe": feature_probe_table, "store_scaling": store_scaling, "pretraining_length": pretraining_length,
    "pretext_comparison": partial(pretext_comparison_table, "pretext_comparison"),
    "pretext_head_to_head": partial(pretext_head_to_head, "pretext_comparison"),
    "pretext_comparison_long": partial(pretext_comparison_table, "pretext_comparison_long"),
    "pretext_head_to_head_long": partial(pretext_head_to_head, "pretext_comparison_long"),
    **{name: partial(stored_table, name)
       for name in ("veu", "veu_forward", "pair_generation", "pretraining_step", "memory_by_patch", "store_format")},
    **{f"classical_registration_{b}": partial(classical_registration, b) for b in ("cover_ct", "cover_mri")},
}
_BLOCK = re.compile(r"(<!-- table:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.DOTALL)
_OPENING = re.compile(r"<!-- table:(\S+) -->")


def render(markdown: str) -> str:
    """``markdown`` with every generated table replaced by what its result file gives now."""
    unmatched = set(_OPENING.findall(markdown)) - {m.group("name") for m in _BLOCK.finditer(markdown)}
    if unmatched:
        raise ValueError(f"table markers with no closing marker or a bad name: {sorted(unmatched)}")

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise KeyError(f"table {name!r} has no renderer (known: {sorted(TABLES)})")
        return f"{match.group(1)}{TABLES[name]()}\n{match.group(4)}"

    return _BLOCK.sub(replace, markdown)


def documentation_files() -> list[Path]:
    """The markdown files whose tables are generated by default: README.md and every ``docs/*.md``."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    parser.add_argument("--files", nargs="+", type=Path, metavar="MARKDOWN",
                        help="markdown files to fill (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files or documentation_files():
        current = path.read_text(encoding="utf-8")
        updated = render(current)
        names = [m.group("name") for m in _BLOCK.finditer(current)]
        if args.check:
            old_new = zip(_BLOCK.finditer(current), _BLOCK.finditer(updated))
            stale += [f"{path.name}: {m.group('name')}" for m, n in old_new if m.group(0) != n.group(0)]
            print(f"{path}: tables {names}")
        elif updated != current:
            path.write_text(updated, encoding="utf-8")
            print(f"rewrote {names} in {path}")
    if stale:
        print(f"tables out of date with benchmarks/results/: {stale}; run python benchmarks/readme_tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
