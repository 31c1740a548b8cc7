"""Frozen-feature probe: how linearly separable are a backbone's voxel features, in minutes instead of hours.

The backbone (``cover3d.networks.UNetBackbone``, from a pretraining ``model.pt`` or untrained with a seed) runs once
per volume, whole volume, no gradients. A linear head (softmax regression on one feature vector per voxel = a
1x1x1 convolution) is trained on voxels sampled from the labelled volumes of a pool datalist, for each number of
labelled volumes and seed (the same nested subsets as :mod:`cover3d.protocols.label_efficiency`), then applied to
every voxel of each test volume. Reported per (n labelled, seed): mean Dice over foreground classes and test cases (MONAI
``DiceMetric``) and the one-vs-rest voxel ROC AUC of each foreground class (MONAI ``compute_roc_auc``), both on the
preprocessed grid (``--pixdim`` mm, foreground-cropped), not on the label file's own grid. Once per weights: the
over-dispersion measure of the COVER paper, mean cosine similarity of voxel features within the same label vs
across labels (``--dispersion-voxels`` voxels per label and test volume).

Features (``--levels``): ``full`` = the full-resolution decoder output only (what ``CoverSegNet``'s head sees);
``all`` = the five levels (strides 16..1) upsampled trilinearly to full resolution and concatenated.

Preprocessing follows the pretraining bundle's ``metadata.json`` next to the weights (its ``spacing_mm`` and
``backbone_channels``); without weights, or without metadata, the cover_mri defaults (2 mm, widths 8-128). From the
repository root::

    python -m cover3d.protocols.feature_probe --name cover_mri_default --weights bundles/cover_mri/models/model.pt \\
        --dataset-dir ../shared/data/la_mri_2018 --pool data_lists/la_mri_2018_pool.json \\
        --test data_lists/la_mri_2018_test.json --n-labelled 2 4 8 all --levels full all \\
        --output benchmarks/results/feature_probe
    python -m cover3d.protocols.feature_probe --name untrained_seed0 --init-seed 0 ...   # no --weights: untrained
    python -m cover3d.protocols.feature_probe --report benchmarks/results/feature_probe/*.json   # the table

Writes ``--output``/``<name>.json`` (settings, every row, dispersion) and ``<name>.csv`` (one row per levels x n x
seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric, compute_roc_auc
from monai.transforms import Compose, DivisiblePad
from torch import nn

from cover3d.data import load_datalist
from cover3d.errors import InputValueError
from cover3d.networks import UNetBackbone, load_pretrained_weights, pretraining_metadata
from cover3d.protocols.bundle_runs import write_csv
from cover3d.protocols.options import existing_dir, existing_file, non_negative_int, positive_float, positive_int
from cover3d.protocols.subsets import nested_subset, subset_sizes
from cover3d.transforms import ct_preprocessing, mri_preprocessing

__all__ = [
    "argument_parser", "backbone_features", "feature_dispersion", "main", "markdown_report", "probe", "train_linear_head",
]

DEFAULT_CHANNELS = (8, 16, 32, 64, 128)  # bundles/cover_mri defaults
DEFAULT_PIXDIM = (2.0, 2.0, 2.0)
LEVELS = ("full", "all")
PREPROCESSING = {"mri": mri_preprocessing, "ct": ct_preprocessing}

# (C, *S) image -> {levels name: (F, *S) features}
FeatureFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def backbone_features(backbone: UNetBackbone, levels: Sequence[str]) -> FeatureFn:
    """Feature function of a frozen backbone: pads the image to a multiple of 16, runs it, crops back.

    ``full``: the stride-1 output ``(c0, *S)``; ``all``: every level upsampled (trilinear, align_corners=False) to
    ``S`` and concatenated, ``(c0 + ... + c4, *S)``.
    """
    pad = DivisiblePad(k=16, mode="constant")
    backbone.eval()

    def features(image: torch.Tensor) -> dict[str, torch.Tensor]:
        size = image.shape[1:]
        padded = torch.as_tensor(pad(image)).float()
        with torch.no_grad():
            outputs = backbone(padded[None])
        starts = [(p - s) // 2 for p, s in zip(padded.shape[1:], size)]  # DivisiblePad pads symmetrically
        crop = tuple(slice(st, st + s) for st, s in zip(starts, size))
        full_size = outputs[-1].shape[2:]
        result = {}
        if "full" in levels:
            result["full"] = outputs[-1][0][(slice(None), *crop)]
        if "all" in levels:
            upsampled = [F.interpolate(o, size=full_size, mode="trilinear", align_corners=False) for o in outputs]
            result["all"] = torch.cat(upsampled, dim=1)[0][(slice(None), *crop)]
        return result

    return features


def sample_voxels(label: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Flat indices of ``min(count, voxels)`` voxels of ``label`` ``(*S)`` drawn uniformly without replacement."""
    total = label.numel()
    return torch.randperm(total, generator=generator)[: min(count, total)]


def sample_per_label(label: torch.Tensor, count: int, generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Per label value present in ``label`` ``(*S)``: flat indices of up to ``count`` of its voxels (uniform)."""
    flat = label.reshape(-1)
    samples = {}
    for value in torch.unique(flat).tolist():
        where = torch.nonzero(flat == value).squeeze(1)
        samples[int(value)] = where[torch.randperm(len(where), generator=generator)[:count]]
    return samples


def train_linear_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, steps: int = 200
) -> nn.Module:
    """Softmax regression on standardised features (the standardisation is folded into the layer).

    Full-batch L-BFGS on a convex loss (cross-entropy + ``weight_decay`` x squared weights), so the result depends
    on the data only, not on an optimiser schedule. Written here because MONAI has no linear-probe trainer.

    Args:
        features: ``(N, C)`` voxel features.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.

    Returns:
        ``nn.Linear(C, num_classes)`` mapping raw features to logits (= a 1x1x1 convolution's weights).
    """
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    head = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), labels) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    folded = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - (head.weight * mean / std).sum(1))
    return folded.requires_grad_(False)


def feature_dispersion(features: torch.Tensor, samples: dict[int, torch.Tensor]) -> dict[str, float]:
    """Mean cosine similarity of sampled voxel features within the same label and across labels.

    Args:
        features: ``(F, *S)``.
        samples: label -> flat voxel indices (``sample_per_label``).

    Returns:
        ``intra`` (pairs of distinct voxels with the same label, averaged per label then over labels),
        ``inter`` (pairs with different labels, averaged per label pair then over pairs); NaN when undefined.
    """
    flat = features.reshape(features.shape[0], -1)
    unit = {k: F.normalize(flat[:, idx].T, dim=1) for k, idx in samples.items()}
    intra, inter = [], []
    keys = sorted(unit)
    for i, a in enumerate(keys):
        n = len(unit[a])
        if n > 1:
            sim = unit[a] @ unit[a].T
            intra.append(((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))).item())
        inter += [(unit[a] @ unit[b].T).mean().item() for b in keys[i + 1:]]
    nan = float("nan")
    return {"intra": statistics.fmean(intra) if intra else nan, "inter": statistics.fmean(inter) if inter else nan}


def probe(
    feature_fn: FeatureFn,
    train_volumes: Sequence[dict],
    test_volumes: Iterable[dict],
    subsets: dict[tuple[int, int], Sequence[int]],
    num_classes: int,
    voxels_per_volume: int = 4096,
    dispersion_voxels: int = 256,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Train one linear head per subset on frozen features, evaluate every head on every test volume.

    Args:
        feature_fn: image ``(C, *S)`` -> {levels name: features ``(F, *S)``}; called once per volume.
        train_volumes: preprocessed ``{"image": (C, *S), "label": (1, *S)}`` dicts (the pool).
        test_volumes: the same for the test cases (iterated once).
        subsets: (n labelled, seed) -> indices into ``train_volumes`` the head of that key trains on.
        num_classes: label values are ``0..num_classes-1``.
        voxels_per_volume: training voxels drawn uniformly from each labelled volume.
        dispersion_voxels: voxels per label and test volume for :func:`feature_dispersion`.
        seed: seed of the voxel sampling.

    Returns:
        rows (one per levels x subset: ``dice``, ``auc`` means over test cases, per-class lists too) and
        ``{levels: {"intra", "inter", "gap"}}`` (means over test cases).
    """
    generator = torch.Generator().manual_seed(seed)
    needed = sorted({i for indices in subsets.values() for i in indices})
    train_x: dict[str, dict[int, torch.Tensor]] = {}
    train_y: dict[int, torch.Tensor] = {}
    for i in needed:
        volume = train_volumes[i]
        label = _label_map(volume["label"], num_classes, f"training volume {i}")
        picked = sample_voxels(label, voxels_per_volume, generator)
        train_y[i] = label.reshape(-1)[picked]
        for name, feats in feature_fn(volume["image"]).items():
            train_x.setdefault(name, {})[i] = feats.reshape(feats.shape[0], -1)[:, picked].T
    heads = {
        (name, key): train_linear_head(torch.cat([per_volume[i] for i in indices]),
                                       torch.cat([train_y[i] for i in indices]), num_classes)
        for name, per_volume in train_x.items() for key, indices in subsets.items()
    }
    log(f"  trained {len(heads)} linear heads on {len(needed)} volumes x {voxels_per_volume} voxels")

    dice = {k: DiceMetric(include_background=False, reduction="none", ignore_empty=False) for k in heads}
    auc: dict[tuple, list[list[float]]] = {k: [] for k in heads}
    dispersion: dict[str, list[dict[str, float]]] = {}
    for case, volume in enumerate(test_volumes):
        label = _label_map(volume["label"], num_classes, f"test volume {case}")
        samples = sample_per_label(label, dispersion_voxels, generator)
        target = F.one_hot(label.reshape(-1), num_classes).float()  # (N, K)
        for name, feats in feature_fn(volume["image"]).items():
            dispersion.setdefault(name, []).append(feature_dispersion(feats, samples))
            flat = feats.reshape(feats.shape[0], -1).T
            for (levels, key), head in heads.items():
                if levels != name:
                    continue
                probs = torch.softmax(head(flat), dim=1)
                predicted = F.one_hot(probs.argmax(1), num_classes).float()
                dice[(levels, key)](_as_volume(predicted, label.shape), _as_volume(target, label.shape))
                auc[(levels, key)].append([
                    float(compute_roc_auc(probs[:, c], target[:, c])) if 0 < target[:, c].sum() < len(target)
                    else float("nan") for c in range(1, num_classes)
                ])
        log(f"  test case {case + 1} evaluated")

    rows = []
    for (levels, (n, subset_seed)), head in heads.items():
        per_case = dice[(levels, (n, subset_seed))].aggregate()  # (cases, K-1), NaN-free: ignore_empty=False
        per_class_dice = per_case.mean(0).tolist()
        per_class_auc = [_nanmean(c) for c in zip(*auc[(levels, (n, subset_seed))])]
        rows.append({"levels": levels, "n_labelled": n, "seed": subset_seed,
                     "dice": float(per_case.mean()), "auc": _nanmean(per_class_auc),
                     "dice_per_class": per_class_dice, "auc_per_class": per_class_auc})
    summary = {}
    for name, values in dispersion.items():
        intra, inter = _nanmean(v["intra"] for v in values), _nanmean(v["inter"] for v in values)
        summary[name] = {"intra": intra, "inter": inter, "gap": intra - inter}
    return rows, summary


def _as_volume(voxels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(N, K)`` per-voxel values -> ``(1, K, *shape)`` (the batch-first layout MONAI metrics take)."""
    return voxels.T.reshape(1, voxels.shape[1], *shape)


def _label_map(label: torch.Tensor, num_classes: int, name: str) -> torch.Tensor:
    """``(1, *S)`` label -> ``(*S)`` int64, checked to lie in ``[0, num_classes)``."""
    label = torch.as_tensor(label).round().long()[0]
    low, high = int(label.min()), int(label.max())
    if low < 0 or high >= num_classes:
        raise InputValueError(f"--num-classes {num_classes}: {name} has label values {low}..{high}, outside "
                              f"0..{num_classes - 1}")
    return label


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.fmean(kept) if kept else float("nan")


def build_backbone(weights: str | None, init_seed: int, channels: Sequence[int] | None) -> tuple[UNetBackbone, dict]:
    """The backbone (pretrained when ``weights`` is given, else seeded random init) and its pretraining metadata.

    Widths: ``channels`` if given, else the metadata's ``backbone_channels``, else the cover_mri defaults.
    """
    metadata = (pretraining_metadata(weights) or {}) if weights else {}
    widths = channels or metadata.get("pretraining", {}).get("backbone_channels") or DEFAULT_CHANNELS
    in_channels = metadata.get("pretraining", {}).get("in_channels", 1)
    torch.manual_seed(init_seed)
    backbone = UNetBackbone(3, in_channels, widths)
    if weights:
        report = load_pretrained_weights(backbone, weights, min_fraction=0.99)
        print(report.summary().splitlines()[0])
    return backbone, metadata


def argument_parser() -> argparse.ArgumentParser:
    """The command line of the feature probe (``python -m cover3d.protocols.feature_probe --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m cover3d.protocols.feature_probe", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    backbone = parser.add_argument_group("backbone")
    backbone.add_argument("--name", help="name of this probe: the output files' stem, e.g. untrained_seed0 (required "
                          "unless --report)")
    backbone.add_argument("--weights", type=existing_file, metavar="MODEL_PT",
                          help="pretraining weights (model.pt, its metadata.json beside it); omit for an untrained "
                          "backbone")
    backbone.add_argument("--init-seed", type=non_negative_int, default=0,
                          help="seed of the untrained backbone's initialisation (without --weights; default: 0)")
    backbone.add_argument("--channels", type=positive_int, nargs=5, metavar="WIDTH",
                          help="backbone widths, 5 integers (default: the weights' metadata, else 8 16 32 64 128)")
    backbone.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS),
                          help="features probed: full = the full-resolution decoder output; all = the five levels "
                          "upsampled and concatenated (default: full all)")
    data = parser.add_argument_group("data (required unless --report)")
    data.add_argument("--dataset-dir", type=existing_dir, help="folder the datalist paths are relative to")
    data.add_argument("--pool", type=existing_file, help="datalist (JSON) of the labelled volumes the heads train on")
    data.add_argument("--pool-keys", nargs="+", default=["training", "validation"], metavar="KEY",
                      help="lists of --pool that together form the pool (default: training validation)")
    data.add_argument("--test", type=existing_file, help="datalist (JSON) of the labelled test volumes")
    data.add_argument("--test-key", default="test", help="list of the test volumes in --test (default: test)")
    data.add_argument("--modality", choices=sorted(PREPROCESSING), default="mri",
                      help="preprocessing: mri (percentile intensity window) or ct (HU window) (default: mri)")
    data.add_argument("--pixdim", type=positive_float, nargs=3, metavar="MM",
                      help="voxel size in mm, 3 numbers (default: the weights' metadata, else 2 2 2)")
    data.add_argument("--num-classes", type=positive_int, default=2,
                      help="label values are 0..num_classes-1, 0 = background (default: 2)")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--n-labelled", nargs="+", default=["2", "4", "8", "all"], metavar="N",
                          help="numbers of labelled volumes a head trains on, integers or 'all' (default: 2 4 8 all)")
    protocol.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], metavar="SEED",
                          help="seeds of the nested subsets, one head per size and seed (default: 0 1 2)")
    protocol.add_argument("--voxels-per-volume", type=positive_int, default=4096,
                          help="training voxels drawn from each labelled volume (default: 4096)")
    protocol.add_argument("--dispersion-voxels", type=positive_int, default=256,
                          help="voxels per label and test volume for the cosine dispersion (default: 256)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", help="folder of <name>.json and <name>.csv (required unless --report)")
    output.add_argument("--report", nargs="+", metavar="JSON",
                        help="only print the markdown table of these result files (no probe is run)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the probe; return the written JSON content."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.report:
        print(markdown_report([json.loads(Path(f).read_text()) for f in args.report]))
        return {}
    missing = [f"--{k.replace('_', '-')}" for k in ("name", "dataset_dir", "pool", "test", "output")
               if getattr(args, k) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()

    backbone, metadata = build_backbone(args.weights, args.init_seed, args.channels)
    pixdim = args.pixdim or metadata.get("preprocessing", {}).get("spacing_mm") or DEFAULT_PIXDIM
    preprocess = Compose(PREPROCESSING[args.modality](
        keys="image", label_keys="label", pixdim=pixdim, channels=backbone.in_channels))
    pool = [e for key in args.pool_keys for e in load_datalist(args.pool, key, base_dir=args.dataset_dir)]
    sizes = subset_sizes(args.n_labelled, len(pool), "--n-labelled")
    positions = {entry["image"]: i for i, entry in enumerate(pool)}
    subsets = {(n, s): [positions[e["image"]] for e in nested_subset(pool, n, s)] for n in sizes for s in args.seeds}
    needed = sorted({i for indices in subsets.values() for i in indices})
    train_volumes = {i: preprocess(pool[i]) for i in needed}
    test_files = load_datalist(args.test, args.test_key, base_dir=args.dataset_dir)
    print(f"feature probe '{args.name}': {len(needed)} pool volumes, {len(test_files)} test volumes, "
          f"pixdim {list(pixdim)} mm, widths {list(backbone.channels)}, levels {args.levels}")
    rows, dispersion = probe(
        backbone_features(backbone, args.levels), train_volumes, (preprocess(f) for f in test_files), subsets,
        args.num_classes, args.voxels_per_volume, args.dispersion_voxels,
    )
    result = {
        "name": args.name, "weights": args.weights, "init_seed": None if args.weights else args.init_seed,
        "pixdim_mm": list(pixdim), "channels": list(backbone.channels), "modality": args.modality,
        "pool": args.pool, "test": args.test, "test_cases": len(test_files), "num_classes": args.num_classes,
        "voxels_per_volume": args.voxels_per_volume, "dispersion_voxels": args.dispersion_voxels,
        "seconds": round(time.monotonic() - start, 1), "dispersion": dispersion, "rows": rows,
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_csv(output / f"{args.name}.csv", [
        {"name": args.name, **{k: v for k, v in row.items() if not k.endswith("per_class")},
         "intra_cos": dispersion[row["levels"]]["intra"], "inter_cos": dispersion[row["levels"]]["inter"]}
        for row in rows
    ])
    print(format_summary(result))
    print(f"wrote {output / (args.name + '.json')} and .csv ({result['seconds']:.0f} s)")
    return result


def markdown_report(results: Sequence[dict]) -> str:
    """Markdown table, one line per result x levels x n labelled: Dice and AUC mean +- std over seeds, cosines."""
    lines = ["| weights | levels | n labelled | Dice | AUC | cos within label | cos across labels |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        for (levels, n), group in _by_levels_and_size(result["rows"]):
            d = result["dispersion"][levels]
            lines.append(f"| {result['name']} | {levels} | {n} | {_mean_std([r['dice'] for r in group])} | "
                         f"{_mean_std([r['auc'] for r in group])} | {d['intra']:.3f} | {d['inter']:.3f} |")
    return "\n".join(lines)


def _by_levels_and_size(rows: Sequence[dict]) -> list[tuple[tuple[str, int], list[dict]]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["levels"], row["n_labelled"]), []).append(row)
    return sorted(groups.items())


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {std:.3f}"


def format_summary(result: dict) -> str:
    """One line per levels x n labelled: Dice and AUC mean +- std over seeds, and the cosine similarities."""
    lines = [f"{'levels':6s} {'n':>3s}  {'Dice':>15s}  {'AUC':>15s}  intra/inter cos"]
    for (levels, n), group in _by_levels_and_size(result["rows"]):
        d = result["dispersion"][levels]
        lines.append(f"{levels:6s} {n:3d}  {_mean_std([r['dice'] for r in group]):>15s}  "
                     f"{_mean_std([r['auc'] for r in group]):>15s}  {d['intra']:.3f} / {d['inter']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
