"""Training speed of the default cover_ct bundle by CPU thread count, on an idle CPU and beside one busy process.

Each case is a real ``python -m monai.bundle run`` of ``bundles/cover_ct/train.json`` (default settings,
``--iterations_per_epoch`` iterations, ``--num_threads T``) into a temporary folder; the reported speed is the
bundle's own ``it_per_s`` (over its last 10 iterations, wall clock: what a user waits for). "busy" starts one
single-threaded matrix-multiplication loop beside the run, as another user's job would. Cases are interleaved
(A, B, C, D, A, ...) and medians reported; the ratios compare each case with 1 thread under the same load.
Writes ``benchmarks/results/threads.json``::

    python benchmarks/threads.py            # about 4 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

from cover3d.engine import write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUSY_LOOP = "import torch\ntorch.set_num_threads(1)\na = torch.rand(768, 768)\nwhile True:\n    a = (a @ a).tanh()\n"


def bundle_speed(threads: int, iterations: int, busy: bool) -> float:
    """``it_per_s`` of the last logged iteration of a short default cover_ct run."""
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles" / "cover_ct" / "train.json"),
                       "--epochs", "1", "--iterations_per_epoch", str(iterations), "--log_interval", "1",
                       "--validation_pairs", "1", "--num_threads", str(threads),
                       "--ckpt_dir", f"{folder}/models", "--output_dir", f"{folder}/runs"]  # fmt: skip
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            log = done.stdout + done.stderr
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(re.findall(r"it_per_s: ([0-9.]+)", log)[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=14, help="per run (the speed is over the last 10)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "threads.json"))
    args = parser.parse_args(argv)
    cases = [(load, threads) for load in ("idle", "busy") for threads in args.threads]
    speeds: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for rep in range(args.reps):
        for load, threads in cases:
            speeds[(load, threads)].append(bundle_speed(threads, args.iterations, busy=load == "busy"))
            print(f"rep {rep + 1}: {load:4s} {threads} thread(s): {speeds[(load, threads)][-1]:.3f} it/s", flush=True)
    medians = {case: statistics.median(v) for case, v in speeds.items()}
    rows = [[load, threads, f"{medians[(load, threads)]:.3f}", f"{medians[(load, threads)] / medians[(load, args.threads[0])]:.2f}x"]
            for load, threads in cases]  # fmt: skip
    print(markdown_table(["CPU", "threads", "it/s (median)", f"vs {args.threads[0]} thread(s)"], rows))
    result = {"cpu_count": os.cpu_count(), "iterations": args.iterations, "reps": args.reps,
              "cases": [{"load": load, "threads": t, "it_per_s": speeds[(load, t)], "median": medians[(load, t)]} for load, t in cases]}  # fmt: skip
    write_json_atomic(result, args.output)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
