"""How well the cycle residual filters predicted fields: kept fraction and error of the kept voxels.

With pretrained ``cover_mri`` weights, :func:`cover3d.metrics.cycle_consistent_field` is applied to

- synthetic pairs of held-out volumes (the bundle's pair transform, seeded; the true field is known): for each
  threshold, the fraction of valid voxels kept and the end-point error (voxels) on the kept voxels vs on all
  valid voxels;
- inter-subject pairs (different held-out subjects, each preprocessed as the bundle does, which crops to the
  foreground, then centre-cropped / padded to the patch), without and with the second subject affinely aligned onto
  the first (:func:`cover3d.transforms.affine_align`, as ``InterSubjectPseudoPairs`` does): the kept fraction, the
  median residual (no truth exists there) and the intensity correlation of the two patches.

From the repository root (a minute on one CPU thread)::

    python benchmarks/pseudo_fields.py --weights bundles/cover_mri/models/model.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from _common import shared_data
from collapse_guard import BUNDLE, REPO
from monai.bundle import ConfigParser
from monai.transforms import ResizeWithPadOrCrop

from cover3d.engine import fixed_pairs
from cover3d.metrics import cycle_consistent_field, endpoint_error, global_ncc
from cover3d.networks.weights import read_state_dict
from cover3d.protocols.bundle_runs import parse_assignments
from cover3d.transforms import affine_align


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset-dir", default=str(shared_data() / "la_mri_2018"))
    parser.add_argument("--datalist", default=str(REPO / "data_lists" / "la_mri_2018_pool.json"))
    parser.add_argument("--set", nargs="*", default=[], help="bundle overrides the weights were trained with, key=json")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--subjects", type=int, default=4, help="held-out subjects for the inter-subject pairs")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "pseudo_fields.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = ConfigParser()
    config.read_config(str(BUNDLE / "train.json"))
    config.update({"dataset_dir": args.dataset_dir, "datalist": args.datalist, **parse_assignments(args.set)})
    network = config.get_parsed_content("network")
    network.load_state_dict(read_state_dict(args.weights))
    volumes = config.get_parsed_content("validate#volumes")
    pairs = fixed_pairs(volumes, config.get_parsed_content("pair_transform"), args.pairs, seed=2024)
    synthetic = {}
    for threshold in args.thresholds:
        kept, epe_kept, epe_all = [], [], []
        for pair in pairs:
            a, b = torch.as_tensor(pair["image"])[None], torch.as_tensor(pair["image_b"])[None]
            ddf, valid = torch.as_tensor(pair["ddf"])[None], torch.as_tensor(pair["mask"])[None]
            result = cycle_consistent_field(network, a, b, threshold)
            keep = result["mask"] * valid
            kept.append(float(keep.sum() / valid.sum()))
            epe_kept.append(float(endpoint_error(result["ddf"], ddf, keep).mean()))
            epe_all.append(float(endpoint_error(result["ddf"], ddf, valid).mean()))
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        synthetic[str(threshold)] = {"kept_fraction": mean(kept), "epe_kept": mean(epe_kept), "epe_all_valid": mean(epe_all)}
        print("synthetic", threshold, synthetic[str(threshold)], flush=True)

    crop = ResizeWithPadOrCrop(config["patch_size"])
    subjects = [torch.as_tensor(volumes[i]["image"]).float() for i in range(min(args.subjects, len(volumes)))]
    combos = list(itertools.permutations(range(len(subjects)), 2))
    inter: dict = {"pairs": len(combos)}
    for alignment in ("none", "affine"):
        rows = {str(t): {"kept_fraction": 0.0, "median_residual": 0.0} for t in args.thresholds}
        similarity = 0.0
        for i, j in combos:
            moving = affine_align(subjects[j], subjects[i]) if alignment == "affine" else subjects[j]
            a, b = (torch.as_tensor(crop(v))[None].float() for v in (subjects[i], moving))
            similarity += global_ncc(a, b) / len(combos)
            for threshold in args.thresholds:
                result = cycle_consistent_field(network, a, b, threshold)
                rows[str(threshold)]["kept_fraction"] += float(result["mask"].mean()) / len(combos)
                rows[str(threshold)]["median_residual"] += float(result["residual"].median()) / len(combos)
        inter[alignment] = {"ncc": similarity, **rows}
        print("inter-subject, alignment", alignment, inter[alignment], flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"weights": str(args.weights), "settings": args.set, "synthetic_pairs": synthetic,
                                             "inter_subject_pairs": inter}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
