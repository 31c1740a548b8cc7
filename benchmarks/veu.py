"""VEU reference (stores the local cost volume) vs streaming (online softmax, recomputing backward).

    python benchmarks/veu.py [--quick] [--reps 3] [--threads 1] [--limit-gib 16]

Forward + backward of ``VectorEmbeddingUnit`` on random ``(1, C, N, N, N)`` query/key features, groups J = C / 8
(8 channels per group, as in the pyramid: C = 8 is a fine level with J = 1, C = 32 a coarse level with J = 4).
Every case runs in a fresh subprocess; reference and streaming are interleaved; times are medians over ``--reps`` of
the single-threaded child's CPU time (wall time on CUDA), ratios the medians of the per-repetition ratios. Extra
peak = case peak minus a baseline child that only allocates the inputs. Reference cases whose
estimated peak exceeds ``--limit-gib`` (or what is free on this shared machine minus 3 GiB) are skipped and marked.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    GiB,
    add_common_arguments,
    child_main,
    fmt_mib,
    fmt_ratio,
    fmt_s,
    interleaved,
    machine_line,
    markdown_table,
    memory_budget,
    paired_ratio,
    save_table,
    timed,
    work_seconds,
    work_unit,
)


def reference_estimate(size: int, channels: int, radius: int) -> int:
    """Reference peak, bytes: K offsets x voxels x (8 float32 cost volumes per group (logits list, stack, softmax,
    their gradients) + 16 bytes of masks and per-offset temporaries). Measured here at 64^3: 3.6 GB for C=32, r=2
    (estimate 4.7 GB) and 1.4 GB for C=8, r=2 (estimate 1.6 GB)."""
    return int((2 * radius + 1) ** 3 * size**3 * (32 * (channels // 8) + 16))


def run_case(case: dict, device: torch.device) -> dict | None:
    from cover3d.networks.blocks.veu import VectorEmbeddingUnit

    gen = torch.Generator().manual_seed(0)
    shape = (1, case["channels"], *(case["size"],) * 3)
    query = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    key = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    if case["impl"] == "baseline":
        return None
    unit = VectorEmbeddingUnit(case["radius"], case["channels"] // 8, case["impl"])
    tiny = [t[:, :, :8, :8, :8].detach().requires_grad_(True) for t in (query, key)]
    unit(*tiny).sum().backward()  # warm-up: lazy initialisation
    return timed(lambda: unit(query, key).sum().backward(), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--limit-gib", type=float, default=16.0, help="skip reference cases estimated above this")
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), run_case)
        return
    sizes, radii = ((32, 64), (1, 2)) if args.quick else ((32, 64, 96), (1, 2, 3))
    reps = args.reps or (1 if args.quick else 3)
    work = partial(work_seconds, device=args.device)
    print(machine_line(args))
    rows = []
    for size, channels in itertools.product(sizes, (8, 32)):
        common = {"size": size, "channels": channels, "device": args.device, "threads": args.threads}
        baseline = interleaved(__file__, {"baseline": {**common, "impl": "baseline", "radius": 1}}, 1)["baseline"]
        for radius in radii:
            estimate = reference_estimate(size, channels, radius)
            budget = memory_budget(args.limit_gib)
            cases = {"streaming": {**common, "impl": "streaming", "radius": radius}}
            if estimate <= budget:
                cases = {"reference": {**common, "impl": "reference", "radius": radius}, **cases}
            print(f"{size}^3 C={channels} r={radius}: {list(cases)}", flush=True)
            res = interleaved(__file__, cases, reps)
            base = baseline["peak_bytes"]
            ok = {k: v for k, v in res.items() if "error" not in v}
            seconds = {k: work(v) for k, v in ok.items()}
            extra = {k: v["peak_bytes"] - base for k, v in ok.items()}
            if "reference" in cases:
                ref_note = res["reference"].get("error", "")
            else:
                ref_note = f"reference skipped: est. {estimate / GiB:.1f} GiB > budget {budget / GiB:.1f} GiB"
            both = "reference" in ok and "streaming" in ok
            time_ratio = paired_ratio(ok["streaming"]["runs"], ok["reference"]["runs"], work) if both else None
            mem_ratio = (
                paired_ratio(ok["streaming"]["runs"], ok["reference"]["runs"], lambda r: r["peak_bytes"] - base)
                if both
                else None
            )
            rows.append(
                [
                    f"{size}^3",
                    channels,
                    channels // 8,
                    radius,
                    fmt_s(seconds.get("reference")),
                    fmt_s(seconds.get("streaming")),
                    fmt_ratio(time_ratio),
                    fmt_mib(extra.get("reference")),
                    fmt_mib(extra.get("streaming")),
                    "-" if mem_ratio is None else f"{100 * mem_ratio:.1f}%",
                    ref_note or res["streaming"].get("error", ""),
                ]
            )
    time_kind = work_unit(args.device)
    print(f"\nVEU forward+backward, batch 1, medians of {reps} interleaved runs (fresh process per run)")
    headers = [
        "size", "C", "J", "r", f"ref {time_kind}", f"stream {time_kind}", "stream/ref time",
        "ref extra MiB", "stream extra MiB", "stream/ref mem", "note",
    ]  # fmt: skip
    print(markdown_table(headers, rows))
    save_table(__file__, args, headers, rows)


if __name__ == "__main__":
    main()
