"""A run's logged scalars (TensorBoard folder of a bundle run) as one CSV and a JSON summary.

Reads every scalar tag of the run's ``output_dir`` (e.g. ``epe``, ``health_cosine``, ``val_epe``) with TensorBoard's
``EventAccumulator`` and writes ``<output>.csv`` (tag, step, value; at most ``--points`` evenly spaced values per tag;
a step is an iteration or, for the per-epoch validation tags such as ``val_epe``, an epoch) and ``<output>.json`` (per tag: first, last, min and max value and
their steps), so a tracked file shows e.g. whether the feature-collapse measure stayed low through a whole run::

    python benchmarks/training_curve.py --run-dir bundles/cover_mri/runs --output benchmarks/results/my_run_curve
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the TensorBoard event files below ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    tags = events.Tags()["scalars"]
    if not tags:
        raise FileNotFoundError(f"no TensorBoard scalars below {run_dir}")
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def summarise(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, float]]:
    """Per tag: first / last / min / max value and the step of each."""
    summary = {}
    for tag, points in scalars.items():
        low, high = min(points, key=lambda p: p[1]), max(points, key=lambda p: p[1])
        summary[tag] = {"points": len(points), "first": points[0][1], "first_step": points[0][0],
                        "last": points[-1][1], "last_step": points[-1][0], "min": low[1], "min_step": low[0],
                        "max": high[1], "max_step": high[0]}  # fmt: skip
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="TensorBoard folder of the run (the bundle's output_dir)")
    parser.add_argument("--output", required=True, help="output path without suffix (.csv and .json are written)")
    parser.add_argument("--points", type=int, default=300, help="values per tag in the CSV (the JSON uses all)")
    args = parser.parse_args(argv)
    scalars = read_scalars(args.run_dir)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag", "step", "value"])
        for tag in sorted(scalars):
            points = scalars[tag]
            kept = points[:: max(1, -(-len(points) // args.points))]
            writer.writerows([tag, step, f"{value:.6g}"] for step, value in kept)
    summary = summarise(scalars)
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    for tag in ("health_cosine", "health_rank", "epe", "val_epe", "val_epe_identity"):
        if tag in summary:
            s = summary[tag]
            print(f"{tag}: first {s['first']:.3f}, last {s['last']:.3f}, min {s['min']:.3f} (step {s['min_step']}), "
                  f"max {s['max']:.3f} (step {s['max_step']})")
    return summary


if __name__ == "__main__":
    main()
