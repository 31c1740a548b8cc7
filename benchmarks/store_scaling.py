"""Does pretraining stay flat as the dataset grows? The in-RAM cache (``CacheDataset``) against the on-disk store
(``python -m cover3d.prepare`` + ``--store DIR``) at N = 20, 200 and 2,000 volumes (issue 26).

Volumes: derived from the shared research volumes (``../shared/data``: ``mri_samples``, ``la_mri_2018`` and
``ct_samples``), never committed: volume ``i`` (seeded by ``i``) takes one of the collections at random, then one of
its images, then a random crop of 75-100 % of each axis (never below ``MIN_EXTENT_MM``, so every volume covers the
96^3 patch at 1.5 mm as far as the preflight check demands; images thinner than that on an axis are not used: all
of ``la_mri_2018``, 55 mm deep, and 3 of the 19 others), a random flip of each axis and a random intensity change
(gamma 0.8-1.25 on the volume's own [min, max] range, then a linear scale 0.8-1.25 and a shift of +-5 % of the
range), written as int16 NIfTI (gzip) into ``SCRATCH/volumes``. ``SCRATCH/datalists/n<N>.json`` lists the first N
for training and volume 2,000 (in no training list) for validation.

Setting: ``bundles/cover_mri/train.json`` at 1.5 mm voxels, 96^3 patches from 144^3 contexts, a tiny network
(channels 4-16: the measured time is the data's, not the network's), batch 1, one torch thread.

Stages (each cell's result is kept in ``results/store_scaling/cells.json`` as soon as it is measured, and a rerun
skips finished cells, so the script resumes):

- ``generate``: the volumes and datalists (existing files are kept);
- ``prepare``: ``python -m cover3d.prepare --workers 1`` into a throw-away store and ``--workers 2`` into the kept
  store, side by side (wall and CPU seconds per volume), at each N <= ``--prepare-compare``; above, the kept store
  with 2 workers only. The N = 200 store is the first part of the N = 2,000 store (``store_of``);
- ``startup``: ``python -m monai.bundle run`` (in-RAM cache and/or store, ``--sources``) until its iteration-2 log
  line: wall seconds from the command's start to the iteration-1 log line and the CPU seconds of the rank's processes
  by then, and the peak RSS of the rank (its process plus its DataLoader workers, summed, sampled every 0.1 s; shared
  pages count once per process, so an upper bound) and of its main process alone;
- ``pairs``: pairs per second of one process (= one DataLoader worker) drawing ``train#dataset`` items, cache and
  store interleaved (``--reps`` rounds of ``--pairs`` pairs after one warm-up pair; medians; ratio per round);
- ``report``: ``store_scaling.csv`` / ``.json`` (the table docs/performance.md shows) and ``store_scaling.png``
  (needs matplotlib).

Machine load (1-minute load average, and the processes running at nice 19) is recorded with every cell. Run from
the repository root, one heavy process at a time::

    nice -n 5 python benchmarks/store_scaling.py --scratch /work/scaling_data
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, shared_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "store_scaling"
CONFIG = "bundles/cover_mri/train.json"
SOURCES = {"mri_samples": "images", "la_mri_2018": "imagesTr", "ct_samples": "images"}
VALIDATION_INDEX = 2000
MIN_EXTENT_MM = 72.0  # 48 voxels at 1.5 mm: the preflight check wants half the 96^3 patch on every axis
SETTING = {"pixdim": [1.5, 1.5, 1.5], "patch_size": [96, 96, 96], "context_size": [144, 144, 144],
           "channels": [4, 8, 8, 16, 16], "groups": [2, 2, 2, 1, 1], "batch_size": 1, "num_threads": 1}  # fmt: skip
RUN = {"epochs": 1, "iterations_per_epoch": 3, "validation_pairs": 1, "warmup_iterations": 1, "log_interval": 1}
FIRST_ITERATION = re.compile(r"Epoch: 1/\d+, Iter: 1/\d+")
SECOND_ITERATION = re.compile(r"Epoch: 1/\d+, Iter: 2/\d+")
STAGES = ("generate", "prepare", "startup", "pairs", "report")


# ---- machine load --------------------------------------------------------------------------------------------------
def machine_load() -> dict:
    """1-minute load average and the command lines of other processes using CPU at nice 19 (a background run)."""
    background = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[16]) == 19 and fields[0] == "R":
                background.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
        except (OSError, IndexError, ValueError):
            continue
    return {"load_1min": round(os.getloadavg()[0], 2), "running_at_nice_19": background, "time": time.strftime("%H:%M:%S")}


# ---- generate ------------------------------------------------------------------------------------------------------
def source_images() -> dict[str, list[Path]]:
    """The shared images at least ``MIN_EXTENT_MM`` on every axis, by collection (collections with none left out)."""
    import nibabel as nib

    root = shared_data()
    if not all((root / name / folder).is_dir() for name, folder in SOURCES.items()):
        raise SystemExit(f"the derived volumes need the shared volumes: {root}/{list(SOURCES)} not found")
    found = {}
    for name, folder in SOURCES.items():
        header = {p: nib.load(str(p)).header for p in sorted((root / name / folder).glob("*.nii.gz"))}
        usable = [p for p, h in header.items() if min(n * z for n, z in zip(h.get_data_shape(), h.get_zooms())) >= MIN_EXTENT_MM]
        if usable:
            found[name] = usable
    return found


def derive(index: int, sources: dict[str, list[Path]], load: Callable[[Path], tuple[np.ndarray, np.ndarray]]):
    """Volume ``index``: (int16 array, affine) derived as the module docstring says."""
    import nibabel as nib

    rng = np.random.default_rng([2026, index])
    collection = list(sources)[rng.integers(len(sources))]
    data, affine = load(sources[collection][rng.integers(len(sources[collection]))])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    size = [min(n, max(int(np.ceil(MIN_EXTENT_MM / z)), int(round(n * rng.uniform(0.75, 1.0))))) for n, z in zip(data.shape, spacing)]
    start = [int(rng.integers(0, n - s + 1)) for n, s in zip(data.shape, size)]
    crop = data[tuple(slice(a, a + s) for a, s in zip(start, size))].astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = start
    affine = affine @ shift
    for axis in range(3):
        if rng.random() < 0.5:
            crop = np.flip(crop, axis)
            flip = np.eye(4)
            flip[axis, axis], flip[axis, 3] = -1, crop.shape[axis] - 1
            affine = affine @ flip
    low, high = float(crop.min()), float(crop.max())
    span = max(high - low, 1e-6)
    crop = low + span * ((crop - low) / span) ** rng.uniform(0.8, 1.25)
    crop = crop * rng.uniform(0.8, 1.25) + rng.uniform(-0.05, 0.05) * span
    image = np.clip(np.round(crop), -32768, 32767).astype(np.int16)
    return nib.Nifti1Image(np.ascontiguousarray(image), affine)


def generate(scratch: Path, count: int, sizes: Sequence[int]) -> None:
    import nibabel as nib

    volumes, lists = scratch / "volumes", scratch / "datalists"
    volumes.mkdir(parents=True, exist_ok=True)
    lists.mkdir(exist_ok=True)
    sources, loaded = source_images(), {}

    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path not in loaded:
            image = nib.load(str(path))
            loaded[path] = (np.asarray(image.dataobj), image.affine)
        return loaded[path]

    start = time.perf_counter()
    for index in [*range(count), VALIDATION_INDEX]:
        path = volumes / f"derived_{index:05d}.nii.gz"
        if not path.exists():
            partial = path.with_name(f".{path.name}")
            nib.save(derive(index, sources, load), str(partial))
            partial.rename(path)
        if index % 200 == 0:
            print(f"generate: volume {index} ({time.perf_counter() - start:.0f} s)", flush=True)
    for n in sizes:
        names = [f"derived_{i:05d}.nii.gz" for i in range(n)]
        datalist = {"training": [{"image": f} for f in names],
                    "validation": [{"image": f"derived_{VALIDATION_INDEX:05d}.nii.gz"}]}  # fmt: skip
        (lists / f"n{n}.json").write_text(json.dumps(datalist, indent=1))


# ---- cells ---------------------------------------------------------------------------------------------------------
def read_cells() -> dict:
    path = RESULTS / "cells.json"
    return json.loads(path.read_text()) if path.exists() else {}


def keep_cell(name: str, result: dict) -> None:
    cells = read_cells()
    cells[name] = {**result, "load": machine_load()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = RESULTS / ".cells.json"
    partial.write_text(json.dumps(cells, indent=1) + "\n")
    partial.replace(RESULTS / "cells.json")
    print(f"{name}: {cells[name]}", flush=True)


def cli_settings(settings: dict) -> list[str]:
    return [word for key, value in settings.items() for word in (f"--{key}", json.dumps(value).replace(" ", ""))]


def data_settings(scratch: Path, n: int) -> dict:
    return {"dataset_dir": str(scratch / "volumes"), "datalist": str(scratch / "datalists" / f"n{n}.json"), **SETTING}


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# ---- prepare -------------------------------------------------------------------------------------------------------
def store_of(scratch: Path, n: int) -> Path:
    """The store measured at ``n``: N = 200 is the first part of the N = 2,000 store (prepare resumes, so the 2,000
    prepare adds only the other 1,800 entries; the N = 200 cells run before it)."""
    return scratch / "stores" / ("n2000" if n == 200 else f"n{n}")


def prepare(scratch: Path, n: int, workers: int, store: Path) -> dict:
    """Run ``python -m cover3d.prepare`` into ``store`` (entries already there are kept and skipped by prepare):
    wall and CPU seconds, per volume prepared."""
    done = len(list((store / "entries").glob("*.json"))) if store.is_dir() else 0
    command = [sys.executable, "-m", "cover3d.prepare", "--config_file", CONFIG, "--store", str(store),
               "--workers", str(workers), *cli_settings(data_settings(scratch, n))]  # fmt: skip
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True)
    seconds, used = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    if result.returncode != 0:
        raise RuntimeError(f"prepare failed: {(result.stdout + result.stderr)[-3000:]}")
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {"n": n, "workers": workers, "volumes_prepared": n - done, "seconds": seconds,
            "seconds_per_volume": seconds / (n - done), "cpu_seconds": cpu_seconds, "store_bytes": size}  # fmt: skip


def prepare_stage(scratch: Path, sizes: Sequence[int], compare: int) -> None:
    """At each N <= ``compare``: 1 worker into a throw-away store, then 2 workers into the kept store (side by side);
    above: the kept store with 2 workers only."""
    for n in sizes:
        store = store_of(scratch, n)
        if n <= compare and f"prepare_n{n}_w1" not in read_cells():
            throw_away = scratch / "stores" / "compare_w1"
            shutil.rmtree(throw_away, ignore_errors=True)
            keep_cell(f"prepare_n{n}_w1", prepare(scratch, n, 1, throw_away))
            shutil.rmtree(throw_away)
            shutil.rmtree(store, ignore_errors=True)
            keep_cell(f"prepare_n{n}_w2", prepare(scratch, n, 2, store))
        elif f"prepare_n{n}_w2" not in read_cells():
            keep_cell(f"prepare_n{n}_w2", prepare(scratch, n, 2, store))


# ---- start-up and memory -------------------------------------------------------------------------------------------
def process_tree(pid: int) -> dict:
    """Of ``pid`` and all its descendants, from /proc: ``rss`` (summed, bytes), ``main_rss`` (``pid`` alone) and
    ``cpu_seconds`` (user + system, including reaped children)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            status, stat = (proc / "status").read_text(), (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        p = int(proc.name)
        children.setdefault(int(fields["PPid"]), []).append(p)
        rss[p] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        cpu[p] = sum(int(v) for v in stat[11:15]) / tick  # utime stime cutime cstime
    found, stack = [], [pid]
    while stack:
        found.append(stack.pop())
        stack += children.get(found[-1], [])
    return {"rss": sum(rss.get(p, 0) for p in found), "main_rss": rss.get(pid, 0),
            "cpu_seconds": sum(cpu.get(p, 0.0) for p in found)}  # fmt: skip


def startup(scratch: Path, n: int, store: Path | None) -> dict:
    """``monai.bundle run`` until its second iteration's log line (then ended): wall and CPU seconds (the rank's
    processes together) from the command's start to the first iteration's log line, peak RSS up to the second."""
    run = scratch / "runs" / f"{'store' if store else 'cache'}_n{n}"
    shutil.rmtree(run, ignore_errors=True)
    settings = {**data_settings(scratch, n), **RUN, "ckpt_dir": str(run / "models"), "output_dir": str(run / "runs")}
    if store is not None:
        settings["store"] = str(store)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIG, *cli_settings(settings)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # fmt: skip
    peaks = {"rss": 0, "main_rss": 0}
    first: dict = {}
    lines: list[str] = []

    def sample() -> None:
        while process.poll() is None:
            now = process_tree(process.pid)
            peaks["rss"], peaks["main_rss"] = max(peaks["rss"], now["rss"]), max(peaks["main_rss"], now["main_rss"])
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if not first and FIRST_ITERATION.search(line):
                first = {"seconds": time.perf_counter() - start, "cpu_seconds": process_tree(process.pid)["cpu_seconds"]}
            elif first and SECOND_ITERATION.search(line):
                break
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        sampler.join()
    if not first:
        raise RuntimeError(f"run failed: {''.join(lines)[-3000:]}")
    return {"n": n, "source": "store" if store else "cache", "seconds_to_first_iteration": first["seconds"],
            "cpu_seconds_to_first_iteration": first["cpu_seconds"], "peak_rss_rank_bytes": peaks["rss"],
            "peak_rss_main_bytes": peaks["main_rss"]}  # fmt: skip


def startup_stage(scratch: Path, sizes: Sequence[int], cache_sizes: Sequence[int], sources: Sequence[str]) -> None:
    for n in sizes:
        for source in sources:
            name = f"startup_{source}_n{n}"
            if name in read_cells() or (source == "cache" and n not in cache_sizes):
                continue
            keep_cell(name, startup(scratch, n, store_of(scratch, n) if source == "store" else None))


# ---- pairs per worker ----------------------------------------------------------------------------------------------
def pairs_child(case: dict) -> None:
    """In this fresh process: draw ``case['pairs']`` items of ``train#dataset`` after one warm-up; print JSON."""
    import torch
    from monai.bundle import ConfigParser

    torch.set_num_threads(1)
    parser = ConfigParser()
    parser.read_config(str(REPO / CONFIG))
    parser.update(case["settings"])
    dataset = parser.get_parsed_content("train#dataset")
    dataset[0]
    wall, cpu = time.perf_counter(), time.process_time()
    for position in range(1, 1 + case["pairs"]):
        dataset[position]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"pairs_per_s": case["pairs"] / wall, "pairs_per_cpu_s": case["pairs"] / cpu}), flush=True)


def pairs(scratch: Path, n: int, source: str, count: int) -> dict:
    settings = data_settings(scratch, n)
    if source == "store":
        settings["store"] = str(store_of(scratch, n))
    case = json.dumps({"settings": settings, "pairs": count})
    result = subprocess.run([sys.executable, __file__, "--child", case], cwd=REPO, env=environment(),
                            capture_output=True, text=True)  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"pairs failed: {(result.stdout + result.stderr)[-3000:]}")
    return json.loads(lines[-1])


def pairs_stage(scratch: Path, sizes: Sequence[int], cache_sizes: Sequence[int], reps: int, count: int) -> None:
    for n in sizes:
        sources = ("cache", "store") if n in cache_sizes else ("store",)
        name = f"pairs_n{n}"
        if name in read_cells():
            continue
        rounds = [{source: pairs(scratch, n, source, count) for source in sources} for _ in range(reps)]  # interleaved
        keep_cell(name, {"n": n, "pairs_per_round": count, "rounds": rounds})


# ---- report --------------------------------------------------------------------------------------------------------
HEADERS = ["N", "to iteration 1, cache: wall (CPU)", "store: wall (CPU)", "peak RSS per rank, cache",
           "store (main process alone)", "pairs/s per worker, cache: wall (CPU)", "store: wall (CPU)", "store / cache: wall (CPU)",
           "prepare s/volume, 1 worker", "2 workers", "speed-up", "store size", "machine load (1-min avg)"]  # fmt: skip


def median(values: Sequence[float]) -> float:
    return float(np.median(values))


def extrapolated(cells: dict, key: str, n: int) -> float | None:
    """``key`` of the in-RAM cache at ``n``, on the line through its two smallest measured N."""
    measured = sorted((c["n"], c[key]) for name, c in cells.items() if name.startswith("startup_cache_"))
    if len(measured) < 2:
        return None
    (n0, y0), (n1, y1) = measured[:2]
    return y0 + (y1 - y0) * (n - n0) / (n1 - n0)


def summary_rows(cells: dict, sizes: Sequence[int]) -> list[dict]:
    """One record per N (missing cells: None); in-RAM figures not measured at N are linear extrapolations."""
    rows = []
    for n in sizes:
        cache, store = cells.get(f"startup_cache_n{n}"), cells.get(f"startup_store_n{n}")
        rounds = cells.get(f"pairs_n{n}", {}).get("rounds", [])
        w1, w2 = cells.get(f"prepare_n{n}_w1"), cells.get(f"prepare_n{n}_w2")
        row = {"n": n, "cache_measured": cache is not None,
               "loads": [c["load"]["load_1min"] for name, c in cells.items() if re.search(rf"_n{n}(_|$)", name)]}
        for key in ("seconds_to_first_iteration", "cpu_seconds_to_first_iteration", "peak_rss_rank_bytes"):
            row[f"cache_{key}"] = cache[key] if cache else extrapolated(cells, key, n)
            row[f"store_{key}"] = store[key] if store else None
        row["store_peak_rss_main_bytes"] = store["peak_rss_main_bytes"] if store else None
        for source in ("cache", "store"):
            row[f"{source}_pairs_per_s"] = median([r[source]["pairs_per_s"] for r in rounds]) if rounds and source in rounds[0] else None
            row[f"{source}_pairs_per_cpu_s"] = median([r[source]["pairs_per_cpu_s"] for r in rounds]) if rounds and source in rounds[0] else None
        paired = [r for r in rounds if "cache" in r]
        row["pairs_ratio_wall"] = median([r["store"]["pairs_per_s"] / r["cache"]["pairs_per_s"] for r in paired]) if paired else None
        row["pairs_ratio_cpu"] = median([r["store"]["pairs_per_cpu_s"] / r["cache"]["pairs_per_cpu_s"] for r in paired]) if paired else None
        row["prepare_w1_s_per_volume"] = w1["seconds_per_volume"] if w1 else None
        row["prepare_w2_s_per_volume"] = w2["seconds_per_volume"] if w2 else None
        row["prepare_speedup"] = w1["seconds"] / w2["seconds"] if w1 and w2 else None
        row["store_bytes"] = w2["store_bytes"] if w2 else None
        rows.append(row)
    return rows


def table_rows(rows: Sequence[dict]) -> list[list[str]]:
    """The docs table: one row per N; '-' where not measured; in-RAM figures beyond the measured N marked."""

    def value(x: float | None, form: str, unit: str = "") -> str:
        return "-" if x is None else f"{x:{form}}{unit}"

    def both(x: float | None, y: float | None, form: str, unit: str) -> str:
        return "-" if x is None else f"{x:{form}}{unit} ({y:{form}}{unit})"

    out = []
    for r in rows:
        guess = "" if r["cache_measured"] else " (linear extrapolation)"
        cache_startup = both(r["cache_seconds_to_first_iteration"], r["cache_cpu_seconds_to_first_iteration"], ",.0f", " s") + guess
        rss = {k: r[k] and r[k] / MiB for k in ("cache_peak_rss_rank_bytes", "store_peak_rss_rank_bytes", "store_peak_rss_main_bytes")}
        out.append([f"{r['n']:,}", cache_startup,
                    both(r["store_seconds_to_first_iteration"], r["store_cpu_seconds_to_first_iteration"], ".0f", " s"),
                    value(rss["cache_peak_rss_rank_bytes"], ",.0f", " MiB") + guess,
                    both(rss["store_peak_rss_rank_bytes"], rss["store_peak_rss_main_bytes"], ",.0f", " MiB"),
                    both(r["cache_pairs_per_s"], r["cache_pairs_per_cpu_s"], ".1f", ""),
                    both(r["store_pairs_per_s"], r["store_pairs_per_cpu_s"], ".1f", ""),
                    both(r["pairs_ratio_wall"], r["pairs_ratio_cpu"], ".2f", "x"),
                    value(r["prepare_w1_s_per_volume"], ".2f", " s"), value(r["prepare_w2_s_per_volume"], ".2f", " s"),
                    value(r["prepare_speedup"], ".2f", "x"), value(r["store_bytes"] and r["store_bytes"] / MiB, ",.0f", " MiB"),
                    "-" if not r["loads"] else f"{min(r['loads']):.1f}-{max(r['loads']):.1f}"])  # fmt: skip
    return out


def plot(rows: Sequence[dict], path: Path) -> None:
    """Start-up (wall; CPU dotted) and peak RSS per rank against N, in-RAM cache vs store; dashed: extrapolated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], ("seconds_to_first_iteration", "cpu_seconds_to_first_iteration"), "seconds to iteration 1", 1),
              (axes[1], ("peak_rss_rank_bytes",), "peak RSS per rank (MiB)", MiB))  # fmt: skip
    for axis, keys, label, scale in panels:
        for source, colour in (("cache", "tab:red"), ("store", "tab:blue")):
            for key, style in zip(keys, ("-", ":")):
                measured = [(r["n"], r[f"{source}_{key}"] / scale) for r in rows
                            if r[f"{source}_{key}"] is not None and (source == "store" or r["cache_measured"])]
                guessed = [(r["n"], r[f"{source}_{key}"] / scale) for r in rows
                           if source == "cache" and not r["cache_measured"] and r[f"{source}_{key}"] is not None]
                name = {"cache": "in-RAM cache", "store": "store"}[source] + (" (CPU s)" if style == ":" else "")
                if measured:
                    axis.plot(*zip(*measured), ls=style, marker="o", color=colour, label=name)
                if measured and guessed:
                    axis.plot(*zip(*(measured[-1:] + guessed)), ls="--", marker="x", color=colour, alpha=0.6,
                              label=f"{name}, linear extrapolation")
        axis.set_xscale("log")
        axis.set_xticks([r["n"] for r in rows], [f"{r['n']:,}" for r in rows])
        axis.minorticks_off()
        axis.set_ylim(bottom=0)
        axis.set_xlabel("training volumes N")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("cover_mri, 1.5 mm, 96^3 patches from 144^3 contexts, one rank (benchmarks/store_scaling.py)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report_stage(sizes: Sequence[int]) -> None:
    """``store_scaling.json`` (the table readme_tables.py renders), ``store_scaling.csv`` and ``store_scaling.png``."""
    import csv

    cells = read_cells()
    rows = summary_rows(cells, sizes)
    table = {"headers": HEADERS, "rows": table_rows(rows), "summary": rows, "setting": {**SETTING, **RUN, "config": CONFIG},
             "loads": {name: cell["load"] for name, cell in cells.items()}}  # fmt: skip
    (RESULTS / "store_scaling.json").write_text(json.dumps(table, indent=1) + "\n")
    with open(RESULTS / "store_scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / "store_scaling.png")
    print(json.dumps(rows, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", type=Path, default=Path("/work/scaling_data"),
                        help="folder for the derived volumes, datalists, stores and runs (outside the repository)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[20, 200, 2000])
    parser.add_argument("--cache-sizes", nargs="+", type=int, default=[20, 200],
                        help="N at which the in-RAM cache is run (its start-up grows ~0.6 s per volume)")
    parser.add_argument("--sources", nargs="+", choices=("cache", "store"), default=["cache", "store"],
                        help="what the startup stage runs (both by default, back to back at each N)")
    parser.add_argument("--prepare-compare", type=int, default=200, help="largest N prepared with 1 and with 2 workers")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds of the pairs-per-second stage")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per round")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return pairs_child(json.loads(args.child))
    if REPO in args.scratch.resolve().parents or args.scratch.resolve() == REPO:
        raise SystemExit(f"--scratch {args.scratch} is inside the repository: the derived volumes must stay outside")
    if "generate" in args.stages:
        generate(args.scratch, max(args.sizes), args.sizes)
    if "prepare" in args.stages:
        prepare_stage(args.scratch, args.sizes, args.prepare_compare)
    if "startup" in args.stages:
        startup_stage(args.scratch, args.sizes, args.cache_sizes, args.sources)
    if "pairs" in args.stages:
        pairs_stage(args.scratch, args.sizes, args.cache_sizes, args.reps, args.pairs)
    if "report" in args.stages:
        report_stage(args.sizes)


if __name__ == "__main__":
    main()
