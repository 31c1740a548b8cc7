"""Feature collapse under L_con and the guards against it, on the same short cover_mri budget.

Each variant is the ``cover_mri`` bundle (``train.json`` + the variant's overlay / overrides) run in this process
on the same volumes with the same seed, then measured on fixed seeded pairs of held-out volumes: field end-point
error (voxels, valid voxels) and the collapse measures of :func:`cover3d.engine.feature_health` on the
full-resolution backbone features of both views (mean cosine of random voxel pairs, effective rank, per-channel
std), over all voxels of the patch and over the voxels inside the volume (view intensity > 0; the patch is
zero-padded where the volume is smaller). ``untrained`` is the same network at initialisation. From the repository
root (about 15 min on one CPU thread)::

    python benchmarks/collapse_guard.py --output benchmarks/results/collapse_guard.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import shared_data
from monai.bundle import ConfigParser

from cover3d.protocols.bundle_runs import run_bundle
from cover3d.protocols.pretext_comparison import field_and_feature_health

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cover_mri"
PUBLISHED = {"loss_weights#con_centred": False}  # L_con on the raw features, as published
VARIANTS = {  # name -> (overlay files in the bundle, overrides)
    "cover": ((), PUBLISHED),
    "con_weight_0": ((), {"loss_weights#con_weight": 0.0}),
    "centred": ((), {"loss_weights#con_centred": True}),  # the bundle default since this measurement
    "vicreg": (("guard_vicreg.json",), PUBLISHED),
}


def config_files(overlays: tuple[str, ...]) -> list[Path]:
    return [BUNDLE / "train.json", *(BUNDLE / name for name in overlays)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", default=str(shared_data() / "la_mri_2018"))
    parser.add_argument("--train", nargs="+", default=["la_006", "la_013"])
    parser.add_argument("--val", nargs="+", default=["la_020", "la_021"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations-per-epoch", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=8, help="held-out evaluation pairs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (results of seed s != 0: variants_seed<s>)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "collapse_guard.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="collapse_guard_"))
    datalist = work / "datalist.json"
    entry = lambda name: {"image": f"imagesTr/{name}.nii.gz"}  # noqa: E731
    datalist.write_text(json.dumps({"training": [entry(n) for n in args.train], "validation": [entry(n) for n in args.val]}))
    common = {"dataset_dir": args.dataset_dir, "datalist": str(datalist), "epochs": args.epochs,
              "iterations_per_epoch": args.iterations_per_epoch, "resume": False, "seed": args.seed}  # fmt: skip
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.is_file() else {}
    setting = {**{k: v for k, v in common.items() if k not in ("datalist", "seed")}, "train": args.train,
               "val": args.val, "eval_pairs": args.pairs, "bundle": "cover_mri defaults"}  # fmt: skip
    if results.setdefault("setting", setting) != setting:
        raise ValueError(f"{output} holds results of another setting: {results['setting']}")
    variants = results.setdefault("variants" if args.seed == 0 else f"variants_seed{args.seed}", {})

    untrained = ConfigParser()
    untrained.read_config([str(f) for f in config_files(())])
    untrained.update(common)
    variants["untrained"] = field_and_feature_health(untrained, None, args.pairs, seed=2024)
    print("untrained", variants["untrained"], flush=True)
    for name in args.variants:
        overlays, overrides = VARIANTS[name]
        run_dir = work / name
        settings = {**common, **overrides, "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "runs")}
        start = time.perf_counter()
        run_bundle(config_files(overlays), **settings)
        seconds = time.perf_counter() - start
        config = ConfigParser()
        config.read_config([str(f) for f in config_files(overlays)])
        config.update(settings)
        variants[name] = {**field_and_feature_health(config, run_dir / "models" / "model.pt", args.pairs, seed=2024),
                          "train_seconds": seconds, "overlays": list(overlays), "overrides": overrides}  # fmt: skip
        print(name, variants[name], flush=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
    output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
