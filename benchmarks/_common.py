"""Shared benchmark machinery: one fresh subprocess per measured case, interleaved repetitions, medians, tables.

Why subprocesses: a process's peak RSS never goes down, so CPU peak memory is only honest when every case runs in a
fresh interpreter. Each benchmark script re-invokes itself with ``--child '<json case>'``; the child runs the case
and prints one JSON line ``{"seconds": ..., "cpu_seconds": ..., "peak_bytes": ...}``. "Extra" memory is a case's
peak minus the peak of a baseline child that only imports and allocates the same inputs. On CUDA the child reports
``torch.cuda.max_memory_allocated`` instead (RSS is meaningless there).

Time: on a CPU shared with other users, wall time mostly measures how often the scheduler ran us. With one torch
thread per case, the process CPU time of the timed region measures the work itself, so CPU-time ratios are what the
tables compare (wall time is printed next to it); on CUDA, where CPU time means nothing, wall time is used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

GiB = 1024**3
MiB = 1024**2


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer/smaller cases and one repetition")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions per case (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per child (1 = least noisy here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); a large number elsewhere so nothing is skipped for lack of it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def memory_budget(limit_gib: float = 16.0, headroom_gib: float = 3.0) -> int:
    """Largest peak a case may need: ``limit_gib``, and never more than what is free now minus ``headroom_gib``
    (the machine is shared; a case that would push others into swap/OOM is skipped instead)."""
    return int(min(limit_gib * GiB, available_bytes() - headroom_gib * GiB))


def peak_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA max allocated, or CPU max RSS (ru_maxrss is KiB on Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Run ``fn`` once: ``{"seconds": wall, "cpu_seconds": process CPU time}`` (device synchronised around it)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def work_seconds(report: dict, device: str) -> float:
    """The time a table compares: CPU seconds on CPU (threads=1), wall seconds on CUDA."""
    return report["cpu_seconds"] if device == "cpu" else report["seconds"]


def work_unit(device: str) -> str:
    """Column label of :func:`work_seconds`."""
    return "CPU s" if device == "cpu" else "wall s"


def shared_data() -> Path:
    """The project's shared data folder: ``$COVER3D_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get("COVER3D_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def child_main(case: dict, run_case: Callable[[dict, torch.device], dict | None]) -> None:
    """Run one case in this (fresh) process and print its JSON report; ``run_case`` returns :func:`timed`'s dict,
    or None for a baseline (inputs only)."""
    torch.set_num_threads(int(case.get("threads", 1)))
    device = torch.device(case["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = run_case(case, device) or {"seconds": None, "cpu_seconds": None}
    print(json.dumps({**times, "peak_bytes": peak_bytes(device)}), flush=True)


def run_child(script: str, case: dict, timeout: float | None = None) -> dict:
    """Run ``case`` in a fresh interpreter; returns the child's report, or ``{"error": ...}`` when it failed."""
    cmd = [sys.executable, script, "--child", json.dumps(case)]
    env = dict(os.environ, OMP_NUM_THREADS=str(case.get("threads", 1)))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def interleaved(script: str, cases: dict[str, dict], reps: int, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run every case ``reps`` times, interleaved (A, B, A, B, ...), each in a fresh process.

    Returns per name: ``seconds`` and ``cpu_seconds`` and ``peak_bytes`` (medians), ``runs`` (all reports), or
    ``error``.
    """
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for rep in range(reps):
        for name, case in cases.items():
            if runs[name] and "error" in runs[name][-1]:
                continue
            start = time.perf_counter()
            report = run_child(script, case)
            runs[name].append(report)
            log(f"  rep {rep + 1}/{reps} {name}: {report} ({time.perf_counter() - start:.0f}s wall)")
    summary = {}
    for name, reports in runs.items():
        errors = [r["error"] for r in reports if "error" in r]
        if errors:
            summary[name] = {"error": errors[0], "runs": reports}
            continue
        summary[name] = {key: _median(r[key] for r in reports) for key in ("seconds", "cpu_seconds", "peak_bytes")}
        summary[name]["runs"] = reports
    return summary


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratio(runs: Sequence[dict], reference_runs: Sequence[dict], key: Callable[[dict], float]) -> float | None:
    """Median over repetitions of ``key(run) / key(reference run of the same repetition)``: the runs were interleaved,
    so each pair saw about the same machine load."""
    ratios = [key(a) / key(b) for a, b in zip(runs, reference_runs) if "error" not in a and "error" not in b]
    return statistics.median(ratios) if ratios else None


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def save_table(script: str, args: argparse.Namespace, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Store a printed table as ``benchmarks/results/<script's name>.json`` (headers, rows, the machine line and the
    arguments), which ``readme_tables.py`` renders into the docs pages; ``--quick`` runs are not stored."""
    if args.quick:
        return
    path = Path(__file__).resolve().parent / "results" / f"{Path(script).stem}.json"
    arguments = {k: v for k, v in vars(args).items() if k != "child"}
    record = {"machine": machine_line(args), "arguments": arguments, "headers": list(headers),
              "rows": [list(row) for row in rows]}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"table stored in {path}")


def fmt_mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:,.0f}"


def fmt_s(s: float | None) -> str:
    return "-" if s is None else (f"{s:.3f}" if s < 10 else f"{s:.1f}")


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def machine_line(args: argparse.Namespace) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"device={args.device}, torch {torch.__version__}, threads per case={args.threads}, cpus={os.cpu_count()}, "
        f"load avg (1 min) at start={load:.2f}"
    )
