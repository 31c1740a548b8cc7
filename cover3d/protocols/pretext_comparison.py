"""Pretexts side by side: every pretext pretrained with the same data, network, seed and budget, then compared.

Each pretext is the ``cover_mri`` bundle with one overlay (``train.json`` alone for COVER), run in this process into
``--output/pretrain/<pretext>/`` on ``--pretrain-datalist`` (unlabelled volumes, e.g. the pretraining pool of
``data_lists/mri_pretraining_pool.json``; reused when its ``models/model.pt`` exists). ``cover_pseudo`` and
``cover_pseudo2`` are two refinement rounds with inter-subject pseudo-fields (``pseudo_fields.json``), taught by the
weights of ``cover`` and then of ``cover_pseudo`` (each round trains from scratch at the same budget; a round is
skipped until its teacher is pretrained). Then, for the saved weights:

- field end-point error (voxels, valid voxels) of the vector pyramid on fixed seeded pairs of the pretraining
  list's ``validation`` images (only meaningful for the COVER variants: the baselines never train the pyramid);
- the collapse measures of :func:`cover3d.engine.feature_health` on those pairs' full-resolution features;
- over-dispersion on the labelled ``--test`` volumes (whole preprocessed volume, padded to a multiple of 16):
  mean cosine of random full-resolution feature pairs within the label, within the background and across them;
- stage ``probe``: :mod:`cover3d.protocols.feature_probe` (frozen features, linear head) with ``--probe-sizes``
  labelled volumes of ``--pool`` and seeds ``--seeds`` -> ``--output/probe/<pretext>.json``;
- stage ``finetune``: :mod:`cover3d.protocols.label_efficiency` (converged budget) with ``--finetune-sizes``
  labelled volumes and the same seeds, modes scratch and pretrained -> ``--output/finetune/<pretext>/``; the scratch runs are trained
  once (``--output/finetune/scratch``, or reused from another protocol's folder with ``--scratch-output``) and
  linked into every pretext's folder, so each pretext is paired with them.

Every stage reuses what is finished, so the comparison resumes where it stopped (pretraining about 15 min per
pretext at the default 400 iterations, a probe about 10 min, a fine-tune about 10 min on one CPU thread). Writes
``--output/results.json`` (one row per pretext; invocations with other ``--pretexts`` may run beside each other, one
per core, once the scratch runs exist), ``--output/comparison.png``, ``--output/head_to_head.csv`` and prints the
tables. From the repository root (the setting of ``benchmarks/results/pretext_comparison``)::

    python -m cover3d.protocols.pretext_comparison --pretrain-dataset-dir ../shared/data \\
        --pretrain-datalist data_lists/mri_pretraining_pool.json --dataset-dir ../shared/data/la_mri_2018 \\
        --pool data_lists/la_mri_2018_pool.json --test data_lists/la_mri_2018_test.json \\
        --output benchmarks/results/pretext_comparison
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.transforms import Compose, DivisiblePadd
from monai.utils import set_determinism

from cover3d.data import load_datalist
from cover3d.engine import feature_health, field_accuracy, fixed_pairs, write_json_atomic
from cover3d.losses import gather_voxels, sample_voxel_indices
from cover3d.networks.weights import read_state_dict
from cover3d.protocols.bundle_runs import bundle_folder, parse_assignments, run_bundle, write_csv
from cover3d.protocols.feature_probe import main as feature_probe
from cover3d.protocols.label_efficiency import finished_runs, paired_statistics
from cover3d.protocols.label_efficiency import main as label_efficiency
from cover3d.protocols.options import existing_dir, existing_file, non_negative_int, positive_int
from cover3d.transforms import mri_preprocessing

__all__ = [
    "PRETEXTS", "argument_parser", "field_and_feature_health", "head_to_head", "head_to_head_table", "main",
    "markdown_table",
]

BUNDLE = bundle_folder("cover_mri")

class Pretext(NamedTuple):
    """Overlays of ``bundles/cover_mri``, overrides, and the pretext whose weights teach the inter-subject
    pseudo-fields (``pseudo_fields.json``; pretrained before this one, whose weights start from scratch)."""

    overlays: tuple[str, ...] = ()
    overrides: dict = {}
    teacher: str | None = None


PRETEXTS = {
    "cover": Pretext(),  # the bundle default: L_con on spatially centred features
    "cover_published": Pretext(overrides={"loss_weights#con_centred": False}),
    "cover_relloc": Pretext(("pretext_relloc.json",)),
    "cover_cycle": Pretext(("pretext_cycle.json",)),
    "cover_pseudo": Pretext(("pseudo_fields.json",), teacher="cover"),  # refinement round 1
    "cover_pseudo2": Pretext(("pseudo_fields.json",), teacher="cover_pseudo"),  # round 2
    "infonce": Pretext(("pretext_infonce.json",)),
    "restoration": Pretext(("pretext_restoration.json",)),
}

BASELINES = ("infonce", "restoration")  # what COVER claims to beat: each COVER variant is paired with them

# the long pretraining's patch and context (weights/cover_mri_pool_2mm): the 2 mm left-atrium volumes are 28 voxels thick
PRETRAINING_SETTING = {"patch_size": [48, 48, 32], "context_size": [64, 64, 48]}
STAGES = ("pretrain", "probe", "finetune")


@torch.no_grad()
def field_and_feature_health(
    parser: ConfigParser, weights: Path | None, num_pairs: int, seed: int
) -> dict[str, float]:
    """Field accuracy and feature health of a pretraining bundle's network (``weights`` loaded, or at
    initialisation) on ``num_pairs`` fixed pairs (seeded with ``seed``) of the bundle's validation volumes: end-point
    error (voxels) and :func:`cover3d.engine.feature_health` of the full-resolution features of both views, over all
    voxels of the patch (``*_all``) and inside the volume (view intensity > 0, ``*_inside``)."""
    set_determinism(seed=0)
    network = parser.get_parsed_content("network")
    if weights is not None:
        network.load_state_dict(read_state_dict(weights))
    pairs = fixed_pairs(parser.get_parsed_content("validate#volumes"), parser.get_parsed_content("pair_transform"),
                        num_pairs, seed=seed)  # fmt: skip
    result = field_accuracy(network, pairs)
    network.eval()
    health: dict[str, list[float]] = {}
    for pair in pairs:
        for key in ("image", "image_b"):
            view = torch.as_tensor(pair[key])[None]
            features = network.backbone(view)[-1]
            set_determinism(seed=0)
            for region, mask in (("all", None), ("inside", (view > 0).float())):
                for name, value in feature_health(features, 4096, mask).items():
                    health.setdefault(f"{name}_{region}", []).append(value)
    return {**result, **{k: sum(v) / len(v) for k, v in health.items()}}


def pretext_weights(output: Path, name: str) -> Path:
    """The final weights of pretext ``name``'s pretraining: ``output/pretrain/<name>/models/model.pt``."""
    return output / "pretrain" / name / "models" / "model.pt"


def pretraining_settings(name: str, output: Path, common: dict) -> dict:
    """Bundle overrides of pretext ``name`` into ``output/pretrain/<name>`` (with its teacher's weights file)."""
    pretext, models = PRETEXTS[name], pretext_weights(output, name).parent
    settings = {**common, **pretext.overrides, "ckpt_dir": str(models), "output_dir": str(models.parent / "runs")}
    if pretext.teacher:
        settings["pseudo#teacher_weights"] = str(pretext_weights(output, pretext.teacher))
    return settings


def label_cosines(backbone: torch.nn.Module, volumes: Sequence[dict], num_samples: int = 2048) -> dict[str, float]:
    """Mean cosine of random full-resolution feature pairs inside / outside / across the label (1 vs 0)."""
    sums: dict[str, list[float]] = {"within_label": [], "within_background": [], "across": []}
    for volume in volumes:
        image, label = torch.as_tensor(volume["image"])[None].float(), torch.as_tensor(volume["label"])[None] > 0.5
        if not label.any():
            continue
        with torch.no_grad():
            features = backbone(image)[-1].float()
        set_determinism(seed=0)
        inside = gather_voxels(features, sample_voxel_indices(label.float(), num_samples))[0]
        outside = gather_voxels(features, sample_voxel_indices((~label).float(), num_samples))[0]
        cosine = lambda a, b: float(F.cosine_similarity(a, b, dim=1, eps=1e-6).mean())  # noqa: E731
        sums["within_label"].append(cosine(inside, inside[torch.randperm(num_samples)]))
        sums["within_background"].append(cosine(outside, outside[torch.randperm(num_samples)]))
        sums["across"].append(cosine(inside, outside))
    return {k: sum(v) / len(v) for k, v in sums.items() if v}


def probe_stage(args: argparse.Namespace, name: str, weights: Path, output: Path) -> dict:
    """Frozen-feature probe of ``weights`` (full-resolution and all levels): mean Dice / AUC over seeds per size."""
    path = output / "probe" / f"{name}.json"
    if not path.is_file():
        feature_probe(["--name", name, "--weights", str(weights), "--dataset-dir", args.dataset_dir, "--pool", args.pool,
                       "--test", args.test, "--test-key", args.test_key, "--n-labelled", *args.probe_sizes,
                       "--seeds", *map(str, args.seeds), "--output", str(output / "probe")])  # fmt: skip
    result = json.loads(path.read_text())
    summary = {}
    for row in result["rows"]:
        summary.setdefault(f"probe_{row['levels']}_n{row['n_labelled']}", []).append(row)
    return {key: {"dice": sum(r["dice"] for r in rows) / len(rows), "auc": sum(r["auc"] for r in rows) / len(rows),
                  "seeds": len(rows)} for key, rows in summary.items()}  # fmt: skip


def finetune_stage(args: argparse.Namespace, name: str, weights: Path, output: Path) -> dict:
    """Fine-tune from ``weights`` vs the shared scratch runs; the paired rows of ``paired.csv`` and the summary."""
    common = ["--dataset-dir", args.dataset_dir, "--pool", args.pool, "--test", args.test, "--test-key", args.test_key,
              "--sizes", *args.finetune_sizes, "--seeds", *map(str, args.seeds)]  # fmt: skip
    scratch = Path(args.scratch_output) if args.scratch_output else output / "finetune" / "scratch"
    label_efficiency([*common, "--modes", "scratch", "--output", str(scratch)])
    folder = output / "finetune" / name
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    for run in sorted((scratch / "runs").glob("scratch_*")):
        link = folder / "runs" / run.name
        if not link.exists():
            link.symlink_to(os.path.relpath(run, link.parent))
    label_efficiency([*common, "--modes", "scratch", "pretrained", "--pretrained-weights", str(weights),
                      "--output", str(folder)])
    with open(folder / "summary.csv", newline="") as f:
        summary = {(r["mode"], r["n_labelled"]): r for r in csv.DictReader(f)}
    with open(folder / "paired.csv", newline="") as f:
        paired = {r["n_labelled"]: r for r in csv.DictReader(f)}
    return {f"finetune_n{n}": {"scratch_dice": float(summary[("scratch", n)]["dice_mean"]),
                               "dice": float(summary[("pretrained", n)]["dice_mean"]),
                               "dice_std": float(summary[("pretrained", n)]["dice_std"]),
                               "diff": float(p["dice_diff_mean"]), "diff_t95": [float(p["dice_diff_t95_low"]),
                                                                                float(p["dice_diff_t95_high"])]}
            for n, p in paired.items()}  # fmt: skip


def record_row(results_file: Path, setting: dict, name: str, row: dict) -> dict:
    """Store one pretext's row in ``results_file``, re-read first so that invocations running other pretexts
    beside this one (one per core) keep theirs; returns the whole file's content."""
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"pretexts": {}}
    results["setting"] = setting
    results["pretexts"][name] = row
    results_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results, results_file)
    return results


def head_to_head(output: Path, baselines: Sequence[str] = BASELINES) -> list[dict]:
    """Fine-tune Dice of each pretext minus each baseline's, paired by size and seed (same labelled subset) and by
    test case: ``label_efficiency.paired_statistics`` with the baseline's fine-tunes in the place of scratch (mean,
    paired t 95 % over seeds, bootstrap 95 % over seeds x cases), for every pretext and baseline fine-tuned so far."""
    tuned = {}
    for folder in sorted((output / "finetune").glob("*/")):
        rows, run_dirs = finished_runs(folder)
        tuned[folder.name] = ([r for r in rows if r["mode"] == "pretrained"],
                              {k: v for k, v in run_dirs.items() if k[0] == "pretrained"})
    table = []
    for baseline in (b for b in baselines if b in tuned):
        base_rows, base_dirs = tuned[baseline]
        scratch_rows = [{**r, "mode": "scratch"} for r in base_rows]
        scratch_dirs = {("scratch", n, seed): d for (_, n, seed), d in base_dirs.items()}
        for name in (n for n in PRETEXTS if n in tuned and n not in baselines):
            rows, run_dirs = tuned[name]
            for paired in paired_statistics(rows + scratch_rows, run_dirs | scratch_dirs):
                table.append({"pretext": name, "baseline": baseline, **{k: v for k, v in paired.items()
                                                                           if k != "mode" and "class" not in k}})
    return table


def head_to_head_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per pretext and baseline, the paired fine-tune Dice difference with both intervals."""
    lines = ["| pretext | vs baseline | n labelled | seeds | fine-tune Dice diff [t 95 %] | [bootstrap 95 %, seeds x cases] |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pretext']} | {r['baseline']} | {r['n_labelled']} | {r['seeds']} | "
                     f"{float(r['dice_diff_mean']):+.3f} [{float(r['dice_diff_t95_low']):+.3f}, "
                     f"{float(r['dice_diff_t95_high']):+.3f}] | [{float(r['dice_diff_boot95_low']):+.3f}, "
                     f"{float(r['dice_diff_boot95_high']):+.3f}] |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Bars per pretext: probe Dice (full-resolution features) and fine-tune Dice at the first sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    keys = sorted({k for row in results.values() for k in row if k.startswith(("probe_full", "finetune_n"))})
    if not keys:
        return
    figure, axis = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [results[n].get(key, {}).get("dice", float("nan")) for n in names]
        axis.bar([j + i * width for j in range(len(names))], values, width, label=key.replace("_", " "))
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=20)
    axis.set_ylabel("test Dice (mean over seeds)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def argument_parser() -> argparse.ArgumentParser:
    """The command line of the pretext comparison (``python -m cover3d.protocols.pretext_comparison --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m cover3d.protocols.pretext_comparison", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pretraining = parser.add_argument_group("pretraining (the cover_mri bundle and its pretext overlays)")
    pretraining.add_argument("--pretrain-dataset-dir", required=True, type=existing_dir,
                             help="folder the --pretrain-datalist paths are relative to")
    pretraining.add_argument("--pretrain-datalist", required=True, type=existing_file,
                             help="datalist (JSON) of the unlabelled pretraining volumes: 'training', and "
                             "'validation' for the field EPE and feature health pairs")
    pretraining.add_argument("--pretexts", nargs="+", default=list(PRETEXTS), choices=list(PRETEXTS),
                             help="pretexts to compare (default: all); a refinement round waits for its teacher "
                             "(cover_pseudo for cover, cover_pseudo2 for cover_pseudo)")
    pretraining.add_argument("--epochs", type=positive_int, default=10, help="pretraining epochs (default: 10)")
    pretraining.add_argument("--iterations-per-epoch", type=positive_int, default=40,
                             help="pretraining iterations per epoch (default: 40)")
    pretraining.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                             help="more cover_mri overrides (JSON values), e.g. learning_rate=0.001 (default patch "
                             "48 48 32, context 64 64 48)")
    pretraining.add_argument("--pairs", type=positive_int, default=8,
                             help="held-out pairs for the field EPE and feature health (default: 8)")
    downstream = parser.add_argument_group("labelled downstream data")
    downstream.add_argument("--dataset-dir", required=True, type=existing_dir,
                            help="folder the --pool and --test paths are relative to")
    downstream.add_argument("--pool", required=True, type=existing_file,
                            help="datalist (JSON) of the labelled volumes ('training' and 'validation') the probe "
                            "and fine-tune subsets are drawn from")
    downstream.add_argument("--test", required=True, type=existing_file,
                            help="datalist (JSON) of the labelled test volumes")
    downstream.add_argument("--test-key", default="test", help="list of the test volumes in --test (default: test)")
    downstream.add_argument("--test-volumes", type=positive_int, default=10,
                            help="test volumes for the within/across-label cosines (default: 10)")
    stages = parser.add_argument_group("stages")
    stages.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="pretrain: pretrain the pretexts without weights (else they are skipped); probe: the "
                        "frozen-feature probe; finetune: label efficiency against scratch (default: all three)")
    stages.add_argument("--probe-sizes", nargs="+", default=["4"], metavar="N",
                        help="labelled volumes of the frozen probe, integers or 'all' (default: 4)")
    stages.add_argument("--finetune-sizes", nargs="+", default=["4"], metavar="N",
                        help="labelled volumes of the fine-tune, integers or 'all' (default: 4)")
    stages.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], metavar="SEED",
                        help="seeds of the probe and fine-tune subsets (default: 0 1 2)")
    stages.add_argument("--scratch-output",
                        help="label-efficiency folder holding the scratch fine-tunes (default: "
                        "--output/finetune/scratch), e.g. benchmarks/results/label_efficiency_la to reuse its runs")
    stages.add_argument("--output", required=True,
                        help="comparison folder: pretrain/, probe/, finetune/, results.json, comparison.png, "
                        "head_to_head.csv; what is finished there is reused")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the comparison; return the content of ``--output/results.json``."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    output = Path(args.output)
    common = {"dataset_dir": args.pretrain_dataset_dir, "datalist": args.pretrain_datalist, "epochs": args.epochs,
              "iterations_per_epoch": args.iterations_per_epoch, **PRETRAINING_SETTING,
              **parse_assignments(args.set)}  # fmt: skip
    probe = ConfigParser()
    probe.read_config(str(BUNDLE / "train.json"))
    probe.update(common)
    preprocessing = mri_preprocessing(("image",), ("label",), pixdim=probe["pixdim"], percentiles=probe["percentiles"])
    test = load_datalist(args.test, args.test_key, base_dir=args.dataset_dir)[: args.test_volumes]
    volumes = Dataset(test, Compose(preprocessing + [DivisiblePadd(("image", "label"), k=16)]))
    results_file = output / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"pretexts": {}}
    results["setting"] = {k: v for k, v in common.items() if k != "dataset_dir"}
    for name in args.pretexts:
        overlays, overrides, teacher = PRETEXTS[name]
        files = [BUNDLE / "train.json", *(BUNDLE / overlay for overlay in overlays)]
        settings = pretraining_settings(name, output, common)
        weights = pretext_weights(output, name)
        row = results["pretexts"].get(name, {})
        if not weights.is_file():
            if "pretrain" not in args.stages:
                continue
            if teacher and not pretext_weights(output, teacher).is_file():
                print(f"{name}: skipped, its teacher {teacher!r} is not pretrained yet")
                continue
            start = time.perf_counter()
            run_bundle(files, **settings)
            row["train_seconds"] = time.perf_counter() - start
        if "epe" not in row:
            config = ConfigParser()
            config.read_config([str(f) for f in files])
            config.update(settings)
            row.update(field_and_feature_health(config, weights, args.pairs, seed=2024))
            network = config.get_parsed_content("network")
            network.load_state_dict(read_state_dict(weights))
            row.update({f"cosine_{k}": v for k, v in label_cosines(network.backbone.eval(), volumes).items()})
            row.update({"overlays": list(overlays), "overrides": overrides, "teacher": teacher})
        if "probe" in args.stages:
            row.update(probe_stage(args, name, weights, output))
        if "finetune" in args.stages:
            row.update(finetune_stage(args, name, weights, output))
        results = record_row(results_file, results["setting"], name, row)
    print(markdown_table(results["pretexts"]))
    plot(results["pretexts"], output / "comparison.png")
    if "finetune" in args.stages and (versus := head_to_head(output)):
        write_csv(output / "head_to_head.csv", versus)
        print(head_to_head_table(versus))
    return results


def markdown_table(pretexts: dict) -> str:
    """One row per pretext: field EPE, collapse and dispersion cosines, probe and fine-tune Dice."""
    def number(value: float | None, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    def probe(result: dict | None) -> str:
        return f"{number(result and result['dice'])} / {number(result and result['auc'])}"

    lines = ["| pretext | field EPE (zero field) | random-pair cosine | cos within label / across | probe full res Dice "
             "/ AUC | probe all levels Dice / AUC | fine-tune Dice | fine-tune - scratch [t 95 %] |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in pretexts.items():
        probe_full = next((v for k, v in sorted(row.items()) if k.startswith("probe_full")), None)
        probe_all = next((v for k, v in sorted(row.items()) if k.startswith("probe_all")), None)
        tune = next((v for k, v in sorted(row.items()) if k.startswith("finetune_n")), None)
        lines.append(
            f"| {name} | {number(row.get('epe'), '.2f')} ({number(row.get('epe_identity'), '.2f')}) | "
            f"{number(row.get('cosine_inside'))} | {number(row.get('cosine_within_label'))} / "
            f"{number(row.get('cosine_across'))} | {probe(probe_full)} | {probe(probe_all)} | "
            f"{number(tune and tune['dice'])} | "
            + (f"{tune['diff']:+.3f} [{tune['diff_t95'][0]:+.3f}, {tune['diff_t95'][1]:+.3f}] |" if tune else "- |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
