"""``python -m cover3d.export --format nnunet --weights models/model.pt --plans nnUNetPlans.json --out DIR``"""

from __future__ import annotations

import argparse
import json

import cover3d  # noqa: F401  (installs the one-line error hook for bad input)
from cover3d.export.nnunet import export_nnunet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cover3d.export", description=__doc__)
    parser.add_argument("--format", required=True, choices=["nnunet"], help="target framework")
    parser.add_argument("--weights", required=True, help="pretrained CoverNet weights (a bundle's models/model.pt)")
    parser.add_argument("--plans", required=True,
                        help="the dataset's own nnU-Net plans (nnUNetv2_plan_experiment -d ID writes nnUNetPlans.json)")
    parser.add_argument("--out", required=True,
                        help="folder for <plans_name>.json and <plans_name>_pretrained.pt ($nnUNet_preprocessed/DatasetXXX)")
    parser.add_argument("--metadata", help="the pretraining bundle's metadata.json (default: next to the weights)")
    parser.add_argument("--dataset_json", help="the dataset's dataset.json (default: next to the plans)")
    parser.add_argument("--plans_name", default="nnUNetPlans_cover3d", help="name of the new plans (nnU-Net's -p)")
    parser.add_argument("--configuration", default="3d_fullres", help="configuration written")
    parser.add_argument("--patch_size", type=json.loads, help="training patch, e.g. [96,96,96] (default: the pretraining's)")
    args = parser.parse_args(argv)
    plans_file, checkpoint_file = export_nnunet(
        args.weights, args.plans, args.out, args.metadata, args.dataset_json, args.plans_name, args.configuration,
        args.patch_size,
    )
    print(f"nnU-Net plans: {plans_file}\nnnU-Net pretrained weights: {checkpoint_file}")


if __name__ == "__main__":
    main()
