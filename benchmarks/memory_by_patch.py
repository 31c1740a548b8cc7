"""Peak memory of one COVER pretraining step by patch size and batch size (default widths 32..512).

    python benchmarks/memory_by_patch.py [--quick] [--patches 64 96 128] [--batches 1 2] [--threads 1]

The step is the one of ``benchmarks/pretraining_step.py`` (CoverNet on both views + CoverLoss + backward + clipping
+ AdamW), in fp32, plain and with ``CoverNet(checkpoint_backbone=True)``. Each case runs once in a fresh subprocess;
"extra" = its peak minus a baseline child holding only the inputs. On CPU the peak is max RSS, an upper bound of
what the tensors need (allocator slack included); on CUDA it is ``torch.cuda.max_memory_allocated``. Cases whose
estimate (linear in voxels x batch from the smallest measured case) exceeds ``--limit-gib`` or the free memory of
this shared machine minus 4 GiB are skipped and marked.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    GiB,
    add_common_arguments,
    child_main,
    fmt_s,
    interleaved,
    machine_line,
    markdown_table,
    memory_budget,
    save_table,
    work_seconds,
    work_unit,
)
from pretraining_step import DEFAULT_CHANNELS, run_case  # noqa: E402

VARIANTS = {"plain": {}, "checkpoint_backbone": {"checkpoint_backbone": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--patches", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--limit-gib", type=float, default=16.0)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), run_case)
        return
    patches = args.patches or ([64] if args.quick else [64, 96, 128])
    print(machine_line(args))
    per_voxel: dict[str, float] = {}
    rows = []
    for patch, batch in sorted(itertools.product(patches, args.batches), key=lambda pb: pb[0] ** 3 * pb[1]):
        common = dict(patch=patch, batch=batch, channels=DEFAULT_CHANNELS, device=args.device, threads=args.threads)
        baseline = interleaved(__file__, {"baseline": {**common, "kind": "baseline"}}, 1)["baseline"]
        voxels = patch**3 * batch
        row = [f"{patch}^3", batch]
        for variant, options in VARIANTS.items():
            budget = memory_budget(args.limit_gib, headroom_gib=4.0)
            estimate = per_voxel.get(variant, 0.0) * voxels
            if estimate > budget:
                row += ["-", f"skipped: est. {estimate / GiB:.1f} GiB > budget {budget / GiB:.1f} GiB"]
                continue
            res = interleaved(__file__, {variant: {**common, "kind": "step", **options}}, 1)[variant]
            if "error" in res:
                row += ["-", res["error"]]
                continue
            extra = res["peak_bytes"] - baseline["peak_bytes"]
            per_voxel.setdefault(variant, extra / voxels)
            row += [f"{extra / GiB:.2f}", fmt_s(work_seconds(res, args.device))]
        rows.append(row)
    print("\npeak extra memory of one pretraining step (fp32), widths", DEFAULT_CHANNELS)
    unit = work_unit(args.device)
    headers = ["patch", "batch", "plain GiB", f"plain step {unit}", "checkpoint_backbone GiB", f"checkpoint_backbone {unit}"]
    print(markdown_table(headers, rows))
    save_table(__file__, args, headers, rows)


if __name__ == "__main__":
    main()
