"""VEU reference (stores the local cost volume) vs streaming (online softmax, recomputing backward) vs fused
(neighbourhood attention in compiled ``flex_attention`` kernels).

    python benchmarks/veu.py [--quick] [--forward] [--sizes 32 64 96] [--radii 1 2 3] [--reps 3] [--threads 1]
                             [--limit-gib 16]

Forward + backward (``--forward``: forward alone under ``torch.no_grad``, i.e. inference) of ``VectorEmbeddingUnit``
on random ``(1, C, N, N, N)`` query/key features, groups J = C / 8 (8 channels per group, as in the pyramid: C = 8 is
a fine level with J = 1, C = 32 a coarse level with J = 4). Every case runs in a fresh subprocess; the implementations
are interleaved; times are medians over ``--reps`` of the single-threaded child's CPU time (wall time on CUDA), ratios
the medians of the per-repetition ratios. Extra peak = case peak minus a baseline child that only allocates the
inputs. Warm-up before timing: one call on an 8^3 crop (lazy initialisation); for fused, one call at the full size
(``torch.compile`` compiles per shape; compile time is not timed, its memory is in the peak). Fused forward + backward
needs CUDA (torch's CPU flex_attention has no backward): on a CPU those cases are marked. Reference cases whose
estimated peak exceeds ``--limit-gib`` (or what is free on this shared machine minus 3 GiB) are skipped and marked.
Tables are stored as ``results/veu.json`` (forward + backward) or ``results/veu_forward.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial
from pathlib import Path

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


IMPLS = ("reference", "streaming", "fused")
SHORT = {"reference": "ref", "streaming": "stream", "fused": "fused"}


def run_case(case: dict, device: torch.device) -> dict | None:
    from cover3d.networks.blocks.veu import VectorEmbeddingUnit

    gen = torch.Generator().manual_seed(0)
    shape = (1, case["channels"], *(case["size"],) * 3)
    train = not case["forward"]
    query = torch.randn(shape, generator=gen).to(device).requires_grad_(train)
    key = torch.randn(shape, generator=gen).to(device).requires_grad_(train)
    if case["impl"] == "baseline":
        return None
    unit = VectorEmbeddingUnit(case["radius"], case["channels"] // 8, case["impl"])

    def step(q: torch.Tensor, k: torch.Tensor) -> None:
        if train:
            unit(q, k).sum().backward()
        else:
            with torch.no_grad():
                unit(q, k)

    warm_up = (query, key) if case["impl"] == "fused" else [t[:, :, :8, :8, :8].detach() for t in (query, key)]
    step(*[t.detach().requires_grad_(train) for t in warm_up])
    return timed(lambda: step(query, key), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--forward", action="store_true", help="forward alone under torch.no_grad (inference)")
    parser.add_argument("--sizes", type=int, nargs="+", help="cube sizes N (default 32 64 96; --quick: 32 64)")
    parser.add_argument("--radii", type=int, nargs="+", help="window radii (default 1 2 3; --quick: 1 2)")
    parser.add_argument("--limit-gib", type=float, default=16.0, help="skip reference cases estimated above this")
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), run_case)
        return
    sizes, radii = ((32, 64), (1, 2)) if args.quick else ((32, 64, 96), (1, 2, 3))
    sizes, radii = args.sizes or sizes, args.radii or radii
    reps = args.reps or (1 if args.quick else 3)
    work = partial(work_seconds, device=args.device)
    fused_note = "" if args.forward or args.device != "cpu" else "fused: no CPU backward in torch's flex_attention"
    print(machine_line(args))
    rows = []
    for size, channels in itertools.product(sizes, (8, 32)):
        common = {"size": size, "channels": channels, "device": args.device, "threads": args.threads,
                  "forward": args.forward}  # fmt: skip
        baseline = interleaved(__file__, {"baseline": {**common, "impl": "baseline", "radius": 1}}, 1)["baseline"]
        for radius in radii:
            estimate = reference_estimate(size, channels, radius)
            budget = memory_budget(args.limit_gib)
            impls = [i for i in IMPLS if not (i == "fused" and fused_note)]
            notes = [fused_note] if fused_note else []
            if estimate > budget:
                impls.remove("reference")
                notes.append(f"reference skipped: est. {estimate / GiB:.1f} GiB > budget {budget / GiB:.1f} GiB")
            cases = {impl: {**common, "impl": impl, "radius": radius} for impl in impls}
            print(f"{size}^3 C={channels} r={radius}: {list(cases)}", flush=True)
            res = interleaved(__file__, cases, reps)
            base = baseline["peak_bytes"]
            ok = {k: v for k, v in res.items() if "error" not in v}
            notes += [f"{k}: {v['error']}" for k, v in res.items() if "error" in v]

            def ratio(impl: str, other: str, key) -> float | None:
                both = impl in ok and other in ok
                return paired_ratio(ok[impl]["runs"], ok[other]["runs"], key) if both else None

            def extra(run: dict) -> float:
                return run["peak_bytes"] - base

            rows.append(
                [f"{size}^3", channels, channels // 8, radius]
                + [fmt_s(work(ok[i]) if i in ok else None) for i in IMPLS]
                + [fmt_ratio(ratio("streaming", "reference", work)), fmt_ratio(ratio("fused", "streaming", work))]
                + [fmt_mib(extra(ok[i]) if i in ok else None) for i in IMPLS]
                + [fmt_ratio(ratio("streaming", "reference", extra)), fmt_ratio(ratio("fused", "streaming", extra))]
                + ["; ".join(notes)]
            )
    time_kind = work_unit(args.device)
    what = "forward (no grad)" if args.forward else "forward+backward"
    print(f"\nVEU {what}, batch 1, medians of {reps} interleaved runs (fresh process per run)")
    headers = (
        ["size", "C", "J", "r"]
        + [f"{SHORT[i]} {time_kind}" for i in IMPLS]
        + ["stream/ref time", "fused/stream time"]
        + [f"{SHORT[i]} extra MiB" for i in IMPLS]
        + ["stream/ref mem", "fused/stream mem", "note"]
    )
    print(markdown_table(headers, rows))
    save_table(str(Path(__file__).with_name("veu_forward.py")) if args.forward else __file__, args, headers, rows)


if __name__ == "__main__":
    main()
