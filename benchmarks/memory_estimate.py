"""How close the dry run's step-memory estimate comes to the measured peaks of ``benchmarks/memory_by_patch.py``.

    python benchmarks/memory_estimate.py

``cover3d.dryrun.estimate_step_memory`` for CoverNet widths 32-512 (plain and ``checkpoint_backbone``) at the patch
and batch sizes of docs/performance.md "What fits where", printed next to the measured fp32 CPU peaks copied from that table, and
written to ``benchmarks/results/memory_estimate.json``. One CPU thread, about a minute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import GiB, markdown_table  # noqa: E402

from cover3d.dryrun import MEASURED_CHANNELS, estimate_step_memory  # noqa: E402
from cover3d.losses import CoverLoss  # noqa: E402
from cover3d.networks import CoverNet  # noqa: E402

# (patch, batch) -> measured extra peak GiB, plain and checkpoint_backbone (docs/performance.md "What fits where")
MEASURED = {(64, 1): (1.80, 1.38), (64, 2): (3.09, 2.00), (96, 1): (4.84, 2.93), (96, 2): (9.19, 4.78),
            (128, 1): (10.71, 5.65)}  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    rows, records = [], []
    for checkpointed in (False, True):
        network = CoverNet(channels=MEASURED_CHANNELS, checkpoint_backbone=checkpointed)
        for (patch, batch), measured in MEASURED.items():
            estimate = estimate_step_memory(network, CoverLoss(), 1, (patch,) * 3, batch, torch.device("cpu")) / GiB
            truth = measured[checkpointed]
            name = "checkpoint_backbone" if checkpointed else "plain"
            rows.append([name, f"{patch}^3", batch, f"{truth:.2f}", f"{estimate:.2f}", f"{estimate / truth - 1:+.0%}"])
            records.append(
                {"case": name, "patch": patch, "batch": batch, "measured_gib": truth, "estimated_gib": estimate}
            )
    print(markdown_table(["step", "patch", "batch", "measured GiB", "estimated GiB", "error"], rows))
    out = Path(__file__).resolve().parent / "results" / "memory_estimate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
