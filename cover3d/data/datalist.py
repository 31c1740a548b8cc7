"""Command line: write a MONAI decathlon-style datalist of a folder of volumes (see :mod:`cover3d.data.datalists`)::

    python -m cover3d.data.datalist FOLDER --output OUT.json [--labels DIR] [--base-dir DIR]
        [--val-fraction F] [--test-fraction F] [--seed N] [--check [--patch-size X Y Z] [--pixdim X Y Z]]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cover3d.data.checks import preflight_check
from cover3d.data.datalists import make_datalist
from cover3d.data.readers import VOLUME_SUFFIXES

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the datalist of FOLDER to ``--output`` and print a summary."""
    parser = argparse.ArgumentParser(
        prog="python -m cover3d.data.datalist",
        description="Write a MONAI decathlon-style datalist JSON of the volumes in FOLDER "
        f"({', '.join(VOLUME_SUFFIXES)} files and DICOM series folders).",
    )
    parser.add_argument("folder", help="folder of images")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--labels", help="folder of labels, matched to images by name without suffix")
    parser.add_argument("--base-dir", help="write paths relative to this folder (default: FOLDER)")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="fraction of cases for 'validation'")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="fraction of cases for 'test' (disjoint from 'validation'; the list cover_seg's "
                        "evaluate.json and inference.json read by default)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the validation and test splits (a test list leaves a seed's validation list "
                        "as it was)")
    parser.add_argument("--check", action="store_true", help="open every file and validate it (pre-flight check)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(48, 48, 48), metavar=("X", "Y", "Z"),
                        help="with --check: training patch every image must cover (default: the bundles' 48 48 48)")
    parser.add_argument("--pixdim", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="with --check: training spacing in mm (cover_ct: 2.5, cover_mri: 2; default: each "
                        "image's own spacing)")
    args = parser.parse_args(argv)
    datalist = make_datalist(args.folder, args.labels, args.base_dir, args.val_fraction, args.seed,
                             test_fraction=args.test_fraction)
    base_dir = args.base_dir if args.base_dir is not None else args.folder
    if args.check:
        entries = [{k: os.path.normpath(os.path.join(base_dir, v)) for k, v in e.items()}
                   for es in datalist.values() for e in es]  # fmt: skip
        report = preflight_check(entries, keys=("image",), label_keys=("label",) if args.labels else (),
                                 patch_size=args.patch_size, pixdim=args.pixdim)  # fmt: skip
        print(report.summary())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(datalist, indent=2) + "\n")
    counts = ", ".join(f"{len(v)} {k}" for k, v in datalist.items())
    print(f"wrote {args.output}: {counts} (paths relative to {base_dir})")


if __name__ == "__main__":
    main()
