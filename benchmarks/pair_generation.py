"""Pairs per second: cover3d ``CoverPaird`` vs a MONAI ``RandAffined`` + ``Rand3DElasticd`` pipeline.

    python benchmarks/pair_generation.py [--quick] [--reps 5] [--pairs 4] [--threads 1]

Both pipelines start from the same preprocessed CT volume (``../shared/data/ct_samples``, HU window [-1000, 1000]
-> [0, 1], zero-padded to at least context + 32; a random volume when the data is absent) and produce view a and
a deformed view b of the same ``patch`` size from a random ``context`` crop (patch = 2/3 of the context rounded to
a multiple of 16: 96 -> 64, 128 -> 80):

- cover3d: ``CoverPaird(patch, context)`` with its default ``RandDeformationField`` (rotation 10 deg, scale 0.1,
  shear 0.05, translation 6 voxels, cubic B-spline non-rigid term, control points every 16 voxels, std 3 voxels):
  one patch-sized resampling; it also returns the exact field psi and the validity mask.
- MONAI: ``RandSpatialCropd(context)`` -> copy -> ``RandAffined`` (same affine ranges, zeros padding) ->
  ``Rand3DElasticd`` (sigma 9 voxels ~ the cubic B-spline's kernel width at spacing 16; magnitude calibrated here
  so the non-rigid displacement std equals cover3d's) on the whole context -> the same ``RandSpatialCropd(patch)`` of
  both views. It cannot return the field (see docs/monai_notes.md), so it does strictly less.

Rows "deformation only" use no appearance augmentation in either pipeline; rows "with appearance" apply
``appearance_augmentation("ct")`` to view a in both. Rates are pairs per CPU second of this single-threaded process
(robust to other users of a shared machine; wall rates are printed in the log), medians over ``--reps`` interleaved
chunks of ``--pairs`` pairs each (A, B, A, B, ...), after one warm-up pair per pipeline; the ratio is the median of
the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import add_common_arguments, machine_line, markdown_table, save_table, shared_data  # noqa: E402

from monai.transforms import (  # noqa: E402
    Compose,
    CopyItemsd,
    Identity,
    Lambdad,
    Rand3DElastic,
    Rand3DElasticd,
    RandAffined,
    RandSpatialCropd,
)

from cover3d.transforms import CoverPaird, RandDeformationField, appearance_augmentation  # noqa: E402

ROTATION_DEG, SCALE, SHEAR, TRANSLATE = 10.0, 0.1, 0.05, 6.0
ELASTIC_SIGMA = 9.0
CT_NAME = "invesalius_cranium_ct.nii.gz"


def load_volume(min_size: int) -> tuple[torch.Tensor, str]:
    """``(1, X, Y, Z)`` float32 in [0, 1], every side >= ``min_size``; plus a description of its origin."""
    path = shared_data() / "ct_samples" / "images" / CT_NAME
    if path.exists():
        hu = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        volume, origin = torch.from_numpy(np.clip((hu + 1000) / 2000, 0, 1)), f"CT {CT_NAME} {hu.shape}"
    else:
        volume, origin = torch.rand((min_size,) * 3, generator=torch.Generator().manual_seed(0)), "random volume"
    pad = [max(0, min_size - n) for n in volume.shape]
    padding = [p for n in reversed(pad) for p in (n // 2, n - n // 2)]
    return torch.nn.functional.pad(volume, padding)[None].contiguous(), origin


def cover_nonrigid_std(size: int, draws: int = 4) -> float:
    """Std (voxels, per component) of cover3d's default non-rigid term alone on a ``size``^3 grid."""
    defaults = RandDeformationField()
    field = RandDeformationField(0, 0, 0, 0, defaults.control_spacing, defaults.nonrigid_std)
    field.set_random_state(0)
    return float(np.mean([field((size,) * 3).std().item() for _ in range(draws)]))


def monai_elastic_std(size: int, magnitude: float, draws: int = 4) -> float:
    """Std (voxels, per component) of ``Rand3DElastic``'s displacement, read off a warped coordinate image."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    elastic = Rand3DElastic((ELASTIC_SIGMA, ELASTIC_SIGMA), (magnitude, magnitude), prob=1.0, padding_mode="border")
    elastic.set_random_state(0)
    inner = (slice(None),) + (slice(size // 4, size - size // 4),) * 3  # away from the border padding
    return float(np.mean([(torch.as_tensor(elastic(coords)) - coords)[inner].std().item() for _ in range(draws)]))


def cover_pipeline(patch: int, context: int, appearance: bool) -> CoverPaird:
    return CoverPaird("image", patch, context, appearance=appearance_augmentation("ct") if appearance else Identity())


def monai_pipeline(patch: int, context: int, appearance: bool, magnitude: float) -> Compose:
    radians = math.radians(ROTATION_DEG)
    view_a = appearance_augmentation("ct") if appearance else Identity()
    return Compose(
        [
            RandSpatialCropd("image", roi_size=context, random_size=False),
            CopyItemsd("image", names="image_b"),
            RandAffined(
                "image_b",
                prob=1.0,
                rotate_range=(radians,) * 3,
                scale_range=(SCALE,) * 3,
                shear_range=(SHEAR,) * 6,
                translate_range=(TRANSLATE,) * 3,
                padding_mode="zeros",
            ),
            Rand3DElasticd(
                "image_b",
                sigma_range=(ELASTIC_SIGMA, ELASTIC_SIGMA),
                magnitude_range=(magnitude, magnitude),
                prob=1.0,
                padding_mode="zeros",
            ),
            RandSpatialCropd(["image", "image_b"], roi_size=patch, random_size=False),
            Lambdad("image", view_a),
        ]
    )


def pairs_per_second(pipeline, volume: torch.Tensor, pairs: int) -> tuple[float, float]:
    """``(pairs per CPU second, pairs per wall second)`` over ``pairs`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(pairs):
        out = pipeline({"image": volume})
        if out["image_b"].shape != out["image"].shape:
            raise RuntimeError(f"views differ in shape: {out['image'].shape} vs {out['image_b'].shape}")
    return pairs / (time.process_time() - cpu), pairs / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--pairs", type=int, default=None, help="pairs per timed chunk (default 4; 2 with --quick)")
    args = parser.parse_args()
    if args.device != "cpu":
        print("note: both pipelines run on CPU tensors here (data-loader workers); --device is ignored")
    torch.set_num_threads(args.threads)
    reps = args.reps or (2 if args.quick else 5)
    pairs = args.pairs or (2 if args.quick else 4)
    contexts = (96,) if args.quick else (96, 128)
    print(machine_line(args))
    volume, origin = load_volume(max(contexts) + 32)
    print(f"volume: {origin}, padded to {tuple(volume.shape[1:])}")
    target_std = cover_nonrigid_std(64)
    magnitude = target_std / monai_elastic_std(64, 1.0)
    print(f"non-rigid std: cover3d {target_std:.2f} voxels -> Rand3DElastic magnitude {magnitude:.1f}, sigma {ELASTIC_SIGMA}")
    rows = []
    for context in contexts:
        patch = round(context * 2 / 3 / 16) * 16
        for appearance in (False, True):
            pipelines = {
                "cover3d": cover_pipeline(patch, context, appearance),
                "monai": monai_pipeline(patch, context, appearance, magnitude),
            }
            rates: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
            for seed, pipe in enumerate(pipelines.values()):
                pipe.set_random_state(seed)
                pairs_per_second(pipe, volume, 1)  # warm-up
            for _ in range(reps):
                for name, pipe in pipelines.items():
                    rates[name].append(pairs_per_second(pipe, volume, pairs))
            cpu = {name: [r[0] for r in rs] for name, rs in rates.items()}
            cover, monai = statistics.median(cpu["cover3d"]), statistics.median(cpu["monai"])
            paired = statistics.median(c / m for c, m in zip(cpu["cover3d"], cpu["monai"]))
            label = "with appearance" if appearance else "deformation only"
            print(f"  context {context}, patch {patch}, {label}: (CPU, wall) pairs/s {rates}", flush=True)
            rows.append([f"{context}^3", f"{patch}^3", label, f"{cover:.2f}", f"{monai:.3f}", f"{paired:.0f}x"])
    print(f"\npair generation, {args.threads} thread(s), medians of {reps} chunks of {pairs} pairs")
    print("cover3d / MONAI: median over repetitions of the ratio of the two interleaved chunks of that repetition")
    headers = ["context", "patch", "pipeline", "cover3d pairs/CPU s", "MONAI pairs/CPU s", "cover3d / MONAI"]
    print(markdown_table(headers, rows))
    save_table(__file__, args, headers, rows)


if __name__ == "__main__":
    main()
