"""Cost of one COVER pretraining step vs two forward+backward passes of the backbone alone.

    python benchmarks/pretraining_step.py [--quick] [--patch 96] [--batch 1] [--reps 3] [--threads 1]

Cases (each in a fresh subprocess, interleaved, medians over ``--reps``):

- ``step``: ``CoverNet`` forward on both views + ``CoverLoss`` + backward + grad clipping (1.0) + ``AdamW`` step, as
  the engine's iteration does (fp32; AMP is a CUDA option).
- ``step, checkpoint_backbone``: the same with ``CoverNet(checkpoint_backbone=True)``.
- ``step, checkpoint_levels``: the same with all pyramid levels checkpointed.
- ``backbone x2``: ``net.backbone`` forward + backward on view a, then on view b (batch B each): the cost any
  siamese pretraining pays at least. Its loss is the sum of the 5 feature means, so every decoder scale is used.
- ``backbone pair``: one backbone forward + backward on both views stacked (batch 2B), i.e. both views' activations
  held at once, as ``CoverNet`` does without backbone checkpointing.

Time = one step after a warm-up step at 32^3 in the same process: CPU time of the single-threaded child (wall time
on CUDA); ratios are medians over repetitions of the ratio to the interleaved ``backbone x2`` run. Memory = peak
(CPU: max RSS) minus the peak of a baseline child that only imports and allocates the inputs (views, field, mask).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    add_common_arguments,
    child_main,
    fmt_mib,
    fmt_ratio,
    fmt_s,
    interleaved,
    machine_line,
    markdown_table,
    paired_ratio,
    save_table,
    timed,
    work_seconds,
    work_unit,
)

DEFAULT_CHANNELS = (32, 64, 128, 256, 512)
REDUCED_CHANNELS = (16, 32, 64, 128, 256)


def make_inputs(patch: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked views ``(B, 2, P, P, P)``, a smooth random field (|psi| <= ~4 voxels) and an all-valid mask."""
    gen = torch.Generator().manual_seed(0)
    views = torch.rand((batch, 2, patch, patch, patch), generator=gen)
    coarse = torch.rand((batch, 3, 4, 4, 4), generator=gen) * 8 - 4
    ddf = torch.nn.functional.interpolate(coarse, size=(patch,) * 3, mode="trilinear", align_corners=False)
    mask = torch.ones((batch, 1, patch, patch, patch))
    return views.to(device), ddf.to(device), mask.to(device)


def build(case: dict, device: torch.device):
    from cover3d.losses import CoverLoss
    from cover3d.networks import CoverNet

    torch.manual_seed(0)
    net = CoverNet(
        channels=tuple(case["channels"]),
        checkpoint_backbone=case.get("checkpoint_backbone", False),
        checkpoint_levels=case.get("checkpoint_levels", False),
    ).to(device)
    return net.train(), CoverLoss().to(device)


def cover_step(net, loss_fn, optimizer, views, ddf, mask) -> None:
    optimizer.zero_grad(set_to_none=True)
    terms = loss_fn(net(views), ddf, mask)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()


def backbone_passes(backbone, views: torch.Tensor, stacked: bool) -> None:
    backbone.zero_grad(set_to_none=True)
    inputs = [torch.cat(views.split(1, dim=1), dim=0)] if stacked else list(views.split(1, dim=1))
    for x in inputs:
        sum(f.mean() for f in backbone(x)).backward()


def run_case(case: dict, device: torch.device) -> dict | None:
    views, ddf, mask = make_inputs(case["patch"], case["batch"], device)
    if case["kind"] == "baseline":
        return None
    net, loss_fn = build(case, device)
    small = [t[:, :, :32, :32, :32].contiguous() for t in (views, ddf, mask)]
    if case["kind"] == "step":
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def run(v, d, m):
            cover_step(net, loss_fn, optimizer, v, d, m)
    else:

        def run(v, d, m):
            backbone_passes(net.backbone, v, stacked=case["kind"] == "backbone_pair")

    run(*small)  # warm-up: lazy initialisation, optimizer state
    return timed(lambda: run(views, ddf, mask), device)


CASES = {
    "step": {"kind": "step"},
    "step, checkpoint_backbone": {"kind": "step", "checkpoint_backbone": True},
    "step, checkpoint_levels": {"kind": "step", "checkpoint_levels": True},
    "backbone x2": {"kind": "backbone_x2"},
    "backbone pair": {"kind": "backbone_pair"},
}


def measure(args: argparse.Namespace, channels: tuple[int, ...], reps: int) -> list[list[str]]:
    common = dict(patch=args.patch, batch=args.batch, channels=channels, device=args.device, threads=args.threads)
    cases = {name: {**common, **spec} for name, spec in CASES.items()}
    print(f"channels {channels}: baseline + {len(cases)} cases x {reps} reps", flush=True)
    base = interleaved(__file__, {"baseline": {**common, "kind": "baseline"}}, 1)["baseline"]["peak_bytes"]
    results = interleaved(__file__, cases, reps)
    ref = results["backbone x2"]
    work = partial(work_seconds, device=args.device)
    rows = []
    for name, res in results.items():
        if "error" in res or "error" in ref:
            rows.append([name, str(channels), "-", "-", "-", "-", "-", res.get("error", ref.get("error"))])
            continue
        rows.append(
            [
                name,
                str(channels),
                fmt_s(work(res)),
                fmt_ratio(paired_ratio(res["runs"], ref["runs"], work)),
                fmt_s(res["seconds"]),
                fmt_ratio(paired_ratio(res["runs"], ref["runs"], lambda r: r["seconds"])),
                fmt_mib(res["peak_bytes"] - base),
                fmt_ratio(paired_ratio(res["runs"], ref["runs"], lambda r: r["peak_bytes"] - base)),
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--patch", type=int, default=None, help="cubic patch (default 96; 64 with --quick)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reduced", action="store_true", help=f"also measure widths {REDUCED_CHANNELS}")
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), run_case)
        return
    args.patch = args.patch or (64 if args.quick else 96)
    reps = args.reps or (1 if args.quick else 3)
    print(machine_line(args))
    rows = measure(args, DEFAULT_CHANNELS, reps)
    if args.reduced:
        rows += measure(args, REDUCED_CHANNELS, reps)
    print(f"\npretraining step vs backbone alone: patch {args.patch}^3, batch {args.batch}, medians of {reps}")
    print("ratios: median over repetitions of the ratio to the interleaved 'backbone x2' run of the same repetition")
    time_kind = work_unit(args.device)
    headers = [
        "case", "widths", time_kind, f"{time_kind} / backbone x2", "wall s", "wall / backbone x2", "extra peak MiB",
        "mem / backbone x2",
    ]  # fmt: skip
    print(markdown_table(headers, rows))
    save_table(__file__, args, headers, rows)


if __name__ == "__main__":
    main()
