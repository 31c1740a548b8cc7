"""Pretexts side by side, pretraining part: every pretext pretrained with the same data, network, seed and budget.

Each pretext is the ``cover_mri`` bundle with one overlay (``train.json`` alone for COVER), run in this process into
``--output/pretrain/<pretext>/`` (reused when its ``models/model.pt`` exists). Then, for the saved weights:

- field end-point error (voxels, valid voxels) of the vector pyramid on fixed seeded pairs of the ``validation``
  images of ``--pool`` (only meaningful for the COVER variants: the baselines never train the pyramid);
- the collapse measures of :func:`cover3d.engine.feature_health` on those pairs' full-resolution features;
- over-dispersion on the labelled ``--test`` volumes (whole preprocessed volume, padded to a multiple of 16):
  mean cosine of random full-resolution feature pairs within the label, within the background and across them.

Writes ``--output/results.json`` and prints a table. From the repository root (CPU: ~1 min per 10 iterations per
pretext on 2 shared cores; the default budget is the bundle's 400 iterations)::

    python benchmarks/pretext_comparison.py --dataset-dir ../shared/data/la_mri_2018 \\
        --pool data_lists/la_mri_2018_pool.json --test data_lists/la_mri_2018_test.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import shared_data
from collapse_guard import BUNDLE, REPO, measure
from label_efficiency import parse_assignments, run_bundle
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.transforms import Compose, DivisiblePadd
from monai.utils import set_determinism

from cover3d.data import load_datalist
from cover3d.losses import gather_voxels, sample_voxel_indices
from cover3d.transforms import mri_preprocessing

PRETEXTS = {  # name -> (overlays of bundles/cover_mri, overrides)
    "cover": ((), {}),  # the bundle default: L_con on spatially centred features
    "cover_published": ((), {"loss_weights#con_centred": False}),
    "cover_relloc": (("pretext_relloc.json",), {}),
    "cover_cycle": (("pretext_cycle.json",), {}),
    "infonce": (("pretext_infonce.json",), {}),
    "restoration": (("pretext_restoration.json",), {}),
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", default=str(shared_data() / "la_mri_2018"))
    parser.add_argument("--pool", default=str(REPO / "data_lists" / "la_mri_2018_pool.json"))
    parser.add_argument("--test", default=str(REPO / "data_lists" / "la_mri_2018_test.json"))
    parser.add_argument("--test-key", default="test", help="datalist key of the labelled test volumes")
    parser.add_argument("--pretexts", nargs="+", default=list(PRETEXTS), choices=list(PRETEXTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations-per-epoch", type=int, default=40)
    parser.add_argument("--set", nargs="*", default=[], help="more bundle overrides, key=json_value")
    parser.add_argument("--pairs", type=int, default=8, help="held-out pairs for field EPE and feature health")
    parser.add_argument("--test-volumes", type=int, default=10, help="labelled test volumes for the label cosines")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "pretext_comparison"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    output = Path(args.output)
    common = {"dataset_dir": args.dataset_dir, "datalist": args.pool, "epochs": args.epochs,
              "iterations_per_epoch": args.iterations_per_epoch, "resume": False, **parse_assignments(args.set)}  # fmt: skip
    probe = ConfigParser()
    probe.read_config(str(BUNDLE / "train.json"))
    probe.update(common)
    preprocessing = mri_preprocessing(("image",), ("label",), pixdim=probe["pixdim"], percentiles=probe["percentiles"])
    test = load_datalist(args.test, args.test_key, base_dir=args.dataset_dir)[: args.test_volumes]
    volumes = Dataset(test, Compose(preprocessing + [DivisiblePadd(("image", "label"), k=16)]))
    results = {"setting": {k: v for k, v in common.items() if k not in ("dataset_dir",)}, "pretexts": {}}
    for name in args.pretexts:
        run_dir = output / "pretrain" / name
        overlays, overrides = PRETEXTS[name]
        files = [BUNDLE / "train.json", *(BUNDLE / overlay for overlay in overlays)]
        settings = {**common, **overrides, "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "runs")}
        weights = run_dir / "models" / "model.pt"
        seconds = None
        if not weights.is_file():
            start = time.perf_counter()
            run_bundle(files, **settings)
            seconds = time.perf_counter() - start
        config = ConfigParser()
        config.read_config([str(f) for f in files])
        config.update(settings)
        row = measure(config, weights, args.pairs, seed=2024)
        network = config.get_parsed_content("network")
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        row.update({f"cosine_{k}": v for k, v in label_cosines(network.backbone.eval(), volumes).items()})
        results["pretexts"][name] = {**row, "train_seconds": seconds, "overlays": list(overlays), "overrides": overrides}
        output.mkdir(parents=True, exist_ok=True)
        (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    columns = ["epe", "epe_identity", "cosine_inside", "rank_inside", "cosine_within_label", "cosine_across"]
    print("| pretext | " + " | ".join(columns) + " |")
    for name, row in results["pretexts"].items():
        print(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
