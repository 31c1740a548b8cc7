"""Write the downstream-segmentation datalists of the shared left-atrium and ACDC data (seeded; run once).

Splits are by group (one group per subject; ACDC: both phases ED and ES of a patient) so no subject is on both
sides. For each dataset: ``<name>_pool.json`` with ``"training"`` and ``"validation"`` (together the labelled
pool) and ``<name>_test.json`` with ``"test"``; paths relative to the dataset folder. Then the unlabelled
pretraining list ``mri_pretraining_pool.json`` (paths relative to the shared data folder): every pool image of both
datasets plus every ``mri_samples`` image, never a test case; ``"validation"`` holds out the pool-validation
subjects named in ``PRETRAINING_HELD_OUT`` so the pretraining's field EPE is measured on volumes it did not train
on. Existing files are kept unless ``--force``::

    python benchmarks/segmentation_splits.py --shared-data ../shared/data --output data_lists
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from cover3d.data import find_volumes, make_datalist

# dataset folder -> (output name, group of a case file name, pool groups, validation groups among them)
SPLITS: dict[str, tuple[str, Callable[[str], str], int, int]] = {
    "la_mri_2018": ("la_mri_2018", lambda name: re.sub(r"\.nii(\.gz)?$", "", name), 60, 12),
    "acdc_cardiac_mri": ("acdc", lambda name: re.sub(r"_(ED|ES)\.nii(\.gz)?$", "", name), 60, 10),
}
# subjects (groups) of the pools' validation lists kept out of pretraining to measure its field EPE
PRETRAINING_HELD_OUT = ("la_009", "la_014", "acdc_017")
# mri_samples images left out: 14 x 39 x 22 voxels at 2 mm, under half a 48 x 48 x 32 patch (the pre-flight check refuses it)
PRETRAINING_EXCLUDED = ("mri_samples/images/pyradiomics_breast1.nii.gz",)


def split_by_group(
    entries: Sequence[dict[str, str]], group_of: Callable[[str], str], n_pool: int, n_val: int, seed: int
) -> dict[str, list[dict[str, str]]]:
    """Shuffle the groups (seeded) and return ``{"training", "validation", "test"}`` entry lists.

    The first ``n_val`` shuffled groups are validation, the next ``n_pool - n_val`` training, the rest test.
    """
    groups: dict[str, list[dict[str, str]]] = {}
    for entry in entries:
        groups.setdefault(group_of(Path(entry["image"]).name), []).append(entry)
    if not 0 < n_val < n_pool < len(groups):
        raise ValueError(f"need 0 < n_val ({n_val}) < n_pool ({n_pool}) < number of groups ({len(groups)})")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    parts = {"validation": order[:n_val], "training": order[n_val:n_pool], "test": order[n_pool:]}
    return {name: [e for g in sorted(names) for e in groups[g]] for name, names in parts.items()}


def pretraining_datalist(pools: dict[str, dict[str, list[dict[str, str]]]], extra_images: Sequence[str]) -> dict:
    """Unlabelled pretraining datalist: ``{"training": [{"image": ...}], "validation": [...]}``.

    ``pools`` maps a dataset folder of ``SPLITS`` to its pool datalist (``"training"`` / ``"validation"`` entries,
    paths relative to that folder); ``extra_images`` are further image paths relative to the shared data folder.
    Pool images of a ``PRETRAINING_HELD_OUT`` subject go to ``"validation"``, ``PRETRAINING_EXCLUDED`` images are
    left out; labels are dropped.
    """
    listing: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for folder, pool in sorted(pools.items()):
        group_of = SPLITS[folder][1]
        for entry in sorted((e for part in pool.values() for e in part), key=lambda e: e["image"]):
            part = "validation" if group_of(Path(entry["image"]).name) in PRETRAINING_HELD_OUT else "training"
            listing[part].append({"image": f"{folder}/{entry['image']}"})
    listing["training"] += [{"image": image} for image in sorted(extra_images) if image not in PRETRAINING_EXCLUDED]
    return listing


def write_json(path: Path, content: dict, force: bool) -> None:
    """Write ``content`` to ``path`` unless it exists (and not ``force``); print what was done."""
    if path.exists() and not force:
        print(f"kept existing {path}")
        return
    path.write_text(json.dumps(content, indent=2) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{len(v)} {k}" for k, v in content.items()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "data_lists"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing datalists")
    args = parser.parse_args(argv)
    pools = {}
    for folder, (name, group_of, n_pool, n_val) in SPLITS.items():
        root = Path(args.shared_data) / folder
        entries = make_datalist(root / "imagesTr", root / "labelsTr", base_dir=root)["training"]
        split = split_by_group(entries, group_of, n_pool, n_val, args.seed)
        outputs = {
            Path(args.output) / f"{name}_pool.json": {"training": split["training"], "validation": split["validation"]},
            Path(args.output) / f"{name}_test.json": {"test": split["test"]},
        }
        for path, content in outputs.items():
            write_json(path, content, args.force)
        pools[folder] = json.loads((Path(args.output) / f"{name}_pool.json").read_text())
    samples = Path(args.shared_data) / "mri_samples"
    extra = [f"mri_samples/{p.relative_to(samples).as_posix()}" for p in find_volumes(samples / "images").values()]
    write_json(Path(args.output) / "mri_pretraining_pool.json", pretraining_datalist(pools, extra), args.force)


if __name__ == "__main__":
    main()
