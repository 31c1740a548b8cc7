"""GPU check: where a pretraining step's time goes on CUDA, in one run of <= 8 minutes, as one table.

    python benchmarks/gpu_check.py [--budget-s 430] [--output-dir benchmarks/results] [--smoke]

Parts, in this order (each stops starting new cases when its share of ``--budget-s`` is spent; a case that fails or
runs out of memory is a row with its error as status, never an abort):

1. ``tests``: the CUDA-only tests (``pytest -k cuda`` on the test files that skip without CUDA).
2. ``step vs backbone``: one real ``CoverTrainer`` iteration (``CoverNet`` widths 32-512 on both views, ``CoverLoss``,
   backward, clipping, AdamW, GradScaler under AMP) vs the two-view backbone alone (both views stacked, forward +
   backward of the sum of its feature means, same precision and memory format), at 96^3 and 128^3, batch 1 / 2 / 4,
   fp32 / AMP bf16, contiguous / ``channels_last_3d``, and each non-default VEU implementation at 96^3 batch 2 bf16:
   median seconds of a few steps after a warm-up step, ``torch.cuda.max_memory_allocated``, and the ratio.
3. ``compile``: the same step with ``torch.compile`` (inductor) at 96^3 batch 2 (bf16, bf16 channels-last, fp32, and
   bf16 with each VEU implementation other than streaming and reference, i.e. the fused one where present), each case
   in its own process with the part's remaining time as timeout (compilation may take minutes; a timeout is the
   case's status).
4. ``breakdown``: ``torch.profiler`` over two steps; the GPU time of every operator is charged to the innermost
   ``cover3d.*`` range it ran under (``record_function`` ranges of the model and trainer: backbone, per pyramid level
   projection / warp / VEU, loss warp, loss, optimizer), backward operators to the range of the forward operator
   that created them (autograd sequence numbers); rows: seconds per step and share, and the GPU's busy fraction.
5. ``VEU fwd+bwd``: every ``VectorEmbeddingUnit`` implementation (reference, streaming, and fused where present).
6. ``pair generation``: ``CoverPaird`` on a CUDA volume, pairs/s.
7. ``pretraining``: a short real ``cover_ct`` bundle run (widths 32-512, 64^3 at 1.5 mm, AMP bf16, channels-last)
   and the end-point error of its weights.
8. ``summary``: the targets of issue 28 (step / backbone at 96^3 batch 2 bf16 <= 1.3x, bf16 faster than fp32) and
   the projected GPU-hours of 1e5 iterations at 96^3 batch 2 for the fastest setting measured.

Prints the table (markdown) and writes it as ``gpu_check_<gpu>.json`` and ``.csv`` under ``--output-dir``
(``readme_tables.py`` renders it into docs/performance.md). Without CUDA it prints one line and exits 0.
``--smoke`` runs every code path on the CPU at tiny sizes (32^3, widths 8, TorchDynamo's ``eager`` backend instead
of inductor, no tests and no bundle run) and writes only where ``--output-dir`` says (tests/test_gpu_check.py uses it).
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MiB, markdown_table, synchronize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (32, 64, 128, 256, 512)
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# part: relative share of --budget-s (scaled to it); 430 s + start-up + the overrun of each part's last case < 8 minutes
BUDGETS = {"tests": 35.0, "step": 150.0, "compile": 110.0, "breakdown": 35.0, "veu": 25.0, "pairs": 10.0, "run": 80.0}
HEADERS = ("part", "case", "status", "seconds", "peak MiB", "result")
ITERATIONS = 100_000  # the projection's length (the paper trains 1-2 x 10^5)


@dataclass(frozen=True)
class StepCase:
    """One measured configuration of the pretraining step (or of the backbone alone)."""

    patch: int
    batch: int
    dtype: str = "bf16"  # a key of DTYPES
    channels_last: bool = False
    compile: str | None = None  # a torch.compile backend ("inductor", "aot_eager") or None
    veu_impl: str = "streaming"
    widths: tuple[int, ...] = WIDTHS
    radii: tuple[int, ...] = (2, 2, 2, 1, 1)  # CoverNet's default, coarse to fine
    device: str = "cuda"

    @property
    def name(self) -> str:
        options = [o for o, on in (("channels_last", self.channels_last), (f"compile {self.compile}", self.compile),
                                   (f"VEU {self.veu_impl}", self.veu_impl != "streaming")) if on]  # fmt: skip
        return " ".join([f"{self.patch}^3 b{self.batch} {self.dtype}", *options])


def _batch(patch: int, batch: int) -> dict[str, torch.Tensor]:
    """A fixed random pair batch: two views, a smooth field (voxels) and an all-valid mask."""
    gen = torch.Generator().manual_seed(0)
    size = (patch,) * 3
    coarse = torch.randn((batch, 3, *(max(patch // 16, 1),) * 3), generator=gen) * 3
    return {
        "image": torch.rand((batch, 1, *size), generator=gen),
        "image_b": torch.rand((batch, 1, *size), generator=gen),
        "ddf": torch.nn.functional.interpolate(coarse, size=size, mode="trilinear", align_corners=False),
        "mask": torch.ones((batch, 1, *size)),
    }


def _memory_format(case: StepCase) -> torch.memory_format:
    return torch.channels_last_3d if case.channels_last else torch.preserve_format


def build_step(case: StepCase) -> Callable[[], dict]:
    """One real training iteration of ``CoverTrainer`` on a fixed random pair batch, wired as the bundles wire
    ``amp_dtype``, ``channels_last`` and ``compile``; returns a callable that runs it and returns the iteration
    output (``loss``, ``epe``, ...)."""
    from cover3d.engine import CoverTrainer
    from cover3d.losses import CoverLoss
    from cover3d.networks import CoverNet

    device, amp_dtype, memory_format = torch.device(case.device), DTYPES[case.dtype], _memory_format(case)
    batchdata = _batch(case.patch, case.batch)
    torch.manual_seed(0)
    network = CoverNet(channels=case.widths, radii=case.radii, veu_impl=case.veu_impl).to(device, memory_format=memory_format)
    trainer = CoverTrainer(
        device=device, max_epochs=1, train_data_loader=[batchdata], network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-4), loss_function=CoverLoss(),
        amp=amp_dtype is not None, amp_kwargs={"dtype": amp_dtype} if amp_dtype is not None else {},
        to_kwargs={"memory_format": memory_format}, compile=case.compile is not None,
        compile_kwargs={"backend": case.compile} if case.compile else None,
    )  # fmt: skip
    return lambda: trainer._iteration(trainer, batchdata)


def build_backbone_passes(case: StepCase) -> Callable[[], None]:
    """The two-view backbone alone, as ``CoverNet`` runs it (both views stacked, one pass): forward under the same
    autocast and memory format, backward of the sum of the feature means (every decoder scale is used)."""
    from cover3d.networks import CoverNet

    device, amp_dtype, memory_format = torch.device(case.device), DTYPES[case.dtype], _memory_format(case)
    data = _batch(case.patch, case.batch)
    views = torch.cat([data["image"], data["image_b"]], dim=0).to(device, memory_format=memory_format)
    torch.manual_seed(0)
    backbone = CoverNet(channels=case.widths).backbone.to(device, memory_format=memory_format)

    def run() -> None:
        backbone.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp_dtype is not None, dtype=amp_dtype):
            loss = sum(f.float().mean() for f in backbone(views))
        loss.backward()

    return run


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _measure(fn: Callable[[], object], device: torch.device, reps: int) -> tuple[float, int | None, object]:
    """Median wall seconds of ``reps`` calls after one warm-up call, the peak GPU memory of all of them (None on
    the CPU) and the last call's return value."""
    _reset_memory(device)
    fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak(device), result


def _case(rows: list, part: str, case: str, fn: Callable[[], tuple[float | None, int | None, str]]) -> None:
    """Append one row (``fn`` returns seconds, peak bytes, result; the row holds the peak in MiB); an exception (OOM
    included) becomes the row's status."""
    try:
        seconds, peak, result = fn()
        rows.append([part, case, "ok", seconds, None if peak is None else peak / MiB, result])
    except Exception as error:  # noqa: BLE001 - every failure is reported as a row, the check goes on
        rows.append([part, case, f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}", None, None, ""])
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _skip(rows: list, part: str, case: str, why: str) -> None:
    rows.append([part, case, f"skipped: {why}", None, None, ""])


def gpu_hours(step_seconds: float) -> float:
    """GPU-hours of :data:`ITERATIONS` iterations at ``step_seconds`` each."""
    return ITERATIONS * step_seconds / 3600


def check_tests(rows: list, budget: float) -> None:
    files = [str(p) for p in sorted((REPO / "tests").glob("test_*.py")) if "cuda.is_available()" in p.read_text()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-k", "cuda", *files]

    def run() -> tuple[float, None, str]:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget)
        summary = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
        if proc.returncode != 0:
            raise RuntimeError(f"pytest exit {proc.returncode}: {summary}")
        return time.perf_counter() - start, None, summary

    _case(rows, "CUDA-only tests", f"pytest -k cuda ({len(files)} files)", run)


def step_cases(sizes: list[tuple[int, int]], base: StepCase, veu_impls: list[str]) -> list[StepCase]:
    """The step-vs-backbone cases, most important first (the budget skips the tail): per (patch, batch), bf16 and
    fp32, contiguous and channels-last; each other VEU implementation (the fused one) right after the first size's
    cases, in bf16 at that size."""
    cases = [replace(base, patch=p, batch=b, dtype=d, channels_last=cl)
             for p, b in sizes for d in ("bf16", "fp32") for cl in (False, True)]  # fmt: skip
    others = [replace(base, veu_impl=v) for v in veu_impls if v != "streaming"]
    return cases[:4] + others + cases[4:]


def check_steps(rows: list, cases: list[StepCase], budget: float, reps: int) -> None:
    """Rows ``step vs backbone``: the backbone alone (once per size, precision and memory format) and the step
    (seconds, peak, loss, ratio to that backbone, GPU-hours of 1e5 iterations)."""
    deadline, backbone_seconds = time.perf_counter() + budget, {}
    for case in cases:
        if time.perf_counter() > deadline:
            _skip(rows, "step vs backbone", f"{case.name} step", "part budget spent")
            continue
        device, key = torch.device(case.device), replace(case, veu_impl="streaming")

        def backbone(case=case, key=key) -> tuple[float, int | None, str]:
            backbone_seconds[key], peak, _ = _measure(build_backbone_passes(case), device, reps)
            return backbone_seconds[key], peak, "two-view backbone forward + backward"

        def step(case=case, key=key) -> tuple[float, int | None, str]:
            seconds, peak, output = _measure(build_step(case), device, reps)
            ratio = f", {seconds / backbone_seconds[key]:.2f}x the backbone" if key in backbone_seconds else ""
            return seconds, peak, f"loss {float(output['loss']):.3f}{ratio}, 1e5 its {gpu_hours(seconds):.1f} h"

        if key not in backbone_seconds:
            _case(rows, "step vs backbone", f"{key.name} backbone alone", backbone)
        _case(rows, "step vs backbone", f"{case.name} step", step)


def compiled_step_report(case: StepCase, reps: int) -> dict:
    """Run in a child process: the compiled step's seconds (after a warm-up that compiles), peak, loss and the
    compilation seconds."""
    torch.backends.cudnn.benchmark = True
    run = build_step(case)
    device = torch.device(case.device)
    start = time.perf_counter()
    run()  # compiles
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    seconds, peak, output = _measure(run, device, reps)
    return {"seconds": seconds, "peak": peak, "loss": float(output["loss"]), "compile_seconds": compile_seconds}


def check_compile(rows: list, cases: list[StepCase], budget: float, reps: int) -> None:
    """Rows ``compile``: each case in a fresh process (``--child``) so that a compilation past the part's remaining
    time is stopped and reported."""
    deadline = time.perf_counter() + budget
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for case in cases:
        remaining = deadline - time.perf_counter()
        if remaining <= 5:
            _skip(rows, "compile", case.name, "part budget spent")
            continue

        def run(case=case, remaining=remaining) -> tuple[float, int | None, str]:
            child = json.dumps({"case": asdict(case), "reps": reps})
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", child], cwd=REPO, capture_output=True,
                                      text=True, timeout=remaining, env=env)  # fmt: skip
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"still compiling or running after {remaining:.0f} s (the part's remaining time)")
            reports = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not reports:
                raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
            r = json.loads(reports[-1])
            return r["seconds"], r["peak"], (f"loss {r['loss']:.3f}, first step (compiles) {r['compile_seconds']:.0f} s,"
                                             f" 1e5 its {gpu_hours(r['seconds']):.1f} h")  # fmt: skip

        _case(rows, "compile", f"{case.name} step", run)


def component(range_name: str) -> str:
    """The breakdown's component for a ``cover3d.*`` profiler range: ``cover3d.level2.veu`` -> ``level 2 VEU``,
    every level's warps -> ``pyramid warps``, every level's projections -> ``pyramid projections``."""
    parts = range_name.split(".")[1:]
    if parts[0].startswith("level"):
        level, what = parts[0][len("level") :], parts[1]
        return f"level {level} VEU" if what == "veu" else f"pyramid {what}s"
    return {"loss.warp": "loss warp (L_con)"}.get(".".join(parts), parts[0])


def attribute_times(events, time_attr: str) -> dict[str, dict[str, float]]:
    """Microseconds per component and direction (``forward`` / ``backward``) from ``torch.profiler``'s events.

    Each operator's own time (``time_attr``: ``self_device_time_total`` on CUDA, ``self_cpu_time_total`` on the
    CPU) goes to its innermost enclosing ``cover3d.*`` range (forward, optimizer), or, under an autograd
    ``evaluate_function`` (backward), to the component of the forward operator that created that autograd node: the
    forward operator with the largest sequence number <= the node's, in the node's forward thread. Operators under
    neither go to ``other``."""
    from torch.autograd import DeviceType

    def owner(event) -> tuple[str | None, object]:
        """(component, None) for a forward range, (None, backward event) under an autograd node, (None, None)."""
        node = event
        while node is not None:
            if node.name.startswith("autograd::engine::evaluate_function"):
                return None, node
            if node.name.startswith("cover3d."):
                return component(node.name), None
            node = node.cpu_parent
        return None, None

    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    forward: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for e in cpu_events:
        name, backward = owner(e)
        if e.sequence_nr >= 0 and backward is None and not e.name.startswith("autograd::"):
            forward[e.thread].append((e.sequence_nr, name or "other"))
    for entries in forward.values():
        entries.sort()
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for e in cpu_events:
        own = getattr(e, time_attr)
        if own <= 0:
            continue
        name, backward = owner(e)
        if backward is None:
            totals[name or "other"]["forward"] += own
            continue
        entries = forward.get(backward.fwd_thread) or next(iter(forward.values()), [])
        index = bisect.bisect_right(entries, (backward.sequence_nr, "\uffff")) - 1
        totals[entries[index][1] if index >= 0 else "other"]["backward"] += own
    return dict(totals)


def profile_step(case: StepCase, steps: int = 2) -> tuple[dict[str, dict[str, float]], float]:
    """Per component microseconds (forward, backward) summed over ``steps`` profiled steps after a warm-up step,
    and the wall seconds of those steps."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(case.device)
    run = build_step(case)
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run()
        synchronize(device)
        wall = time.perf_counter() - start
    time_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return attribute_times(prof.events(), time_attr), wall


def check_breakdown(rows: list, cases: list[StepCase], budget: float, steps: int = 2) -> None:
    """Rows ``breakdown <case>``: per component, GPU seconds per step (forward + backward) and its share; then the
    profiled total against the wall time of the same steps (the GPU's busy fraction: low = launch-bound)."""
    deadline = time.perf_counter() + budget
    for case in cases:
        part = f"breakdown {case.name}"
        if time.perf_counter() > deadline:
            _skip(rows, part, "all components", "part budget spent")
            continue
        try:
            totals, wall = profile_step(case, steps)
        except Exception as error:  # noqa: BLE001 - reported as a row
            rows.append([part, "all components", f"{type(error).__name__}: {str(error)[:120]}", None, None, ""])
            continue
        busy = sum(t["forward"] + t["backward"] for t in totals.values()) / 1e6 / steps
        for name, t in sorted(totals.items(), key=lambda item: -sum(item[1].values())):
            seconds = (t["forward"] + t["backward"]) / 1e6 / steps
            rows.append([part, name, "ok", seconds, None, f"{seconds / busy:.0%} (forward {t['forward'] / 1e6 / steps:.3f}"
                         f" s, backward {t['backward'] / 1e6 / steps:.3f} s)"])  # fmt: skip
        kind = "GPU" if case.device == "cuda" else "CPU"
        share = f"{kind} busy {busy / (wall / steps):.0%} of the {wall / steps:.3f} s wall step (under the profiler)"
        rows.append([part, f"profiled {kind} time vs wall", "ok", busy, None, share])


def check_veu(rows: list, device: torch.device, budget: float, sizes: tuple[tuple[int, int, int], ...],
              impls: list[str]) -> None:
    """The VEU alone, forward + backward, per implementation (the warm-up call compiles the fused one)."""
    from cover3d.networks.blocks.veu import VectorEmbeddingUnit

    deadline = time.perf_counter() + budget
    for size, channels, radius in sizes:
        for impl in impls:
            case = f"{size}^3 C={channels} J={max(channels // 8, 1)} r={radius} {impl}"
            if time.perf_counter() > deadline:
                _skip(rows, "VEU fwd+bwd", case, "part budget spent")
                continue

            def run(size=size, channels=channels, radius=radius, impl=impl) -> tuple[float, int | None, str]:
                shape = (1, channels, size, size, size)
                query = torch.randn(shape, device=device, requires_grad=True)
                key = torch.randn(shape, device=device, requires_grad=True)
                unit = VectorEmbeddingUnit(radius, max(channels // 8, 1), impl)
                seconds, peak, _ = _measure(lambda: unit(query, key).sum().backward(), device, reps=3)
                return seconds, peak, ""

            _case(rows, "VEU fwd+bwd", case, run)


def check_pairs(rows: list, device: torch.device, budget: float, volume: int, patch: int) -> None:
    from cover3d.transforms import CoverPaird, appearance_augmentation

    def run() -> tuple[float, int | None, str]:
        image = torch.rand((1, volume, volume, volume), device=device)
        transform = CoverPaird("image", patch, patch * 3 // 2, appearance=appearance_augmentation("ct"), reach=59.0)
        transform.set_random_state(0)
        seconds, peak, _ = _measure(lambda: transform({"image": image}), device, reps=8)
        return seconds, peak, f"{1 / seconds:.1f} pairs/s (patch {patch}^3, context {patch * 3 // 2}^3, CT appearance)"

    if budget > 0:
        _case(rows, "pair generation", f"CoverPaird on a {device.type} volume {volume}^3", run)


def check_run(rows: list, step_seconds: float | None, budget: float) -> None:
    """A real ``cover_ct`` bundle run sized to about half the part's budget, then ``evaluate.json`` on its weights."""
    # a 64^3 batch-2 step costs about (64/96)^3 = 0.3 of a 96^3 batch-2 step
    train_s = budget / 2
    iterations = 200 if step_seconds is None else int(min(max(train_s / max(0.3 * step_seconds, 0.02), 40), 4000))
    per_epoch = max(iterations // 4, 10)
    with tempfile.TemporaryDirectory() as out:
        common = ["--ckpt_dir", f"{out}/models", "--output_dir", f"{out}/runs", "--resume", "False",
                  "--channels", "[32,64,128,256,512]", "--patch_size", "[64,64,64]", "--context_size", "[96,96,96]",
                  "--pixdim", "[1.5,1.5,1.5]", "--num_workers", "8", "--amp_dtype", "bfloat16",
                  "--channels_last", "True", "--epochs", "4", "--iterations_per_epoch", str(per_epoch),
                  "--warmup_iterations", str(per_epoch // 2), "--log_interval", str(per_epoch)]  # fmt: skip
        train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cover_ct/train.json", *common]
        config = "['bundles/cover_ct/train.json','bundles/cover_ct/evaluate.json']"
        evaluate = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *common,
                    "--eval_file", f"{out}/eval.json"]  # fmt: skip

        def run() -> tuple[float, None, str]:
            start, logs = time.perf_counter(), ""
            for cmd in (train, evaluate):
                remaining = budget - (time.perf_counter() - start)
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(remaining, 1))
                if proc.returncode != 0:
                    raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
                logs += proc.stdout + proc.stderr
            result = json.loads(Path(out, "eval.json").read_text())
            rates = re.findall(r"it_per_s: ([0-9.]+)", logs)
            return time.perf_counter() - start, None, (
                f"{4 * per_epoch} its: EPE {result['epe']:.2f} vs identity {result['epe_identity']:.2f} voxels"
                + (f", {float(rates[-1]):.1f} it/s" if rates else "")
            )

        _case(rows, "pretraining", f"cover_ct 64^3 x2 widths 32-512 bf16 channels_last, {4 * per_epoch} its", run)


def _ok_seconds(rows: list, part: str, case: str) -> float | None:
    return next((r[3] for r in rows if r[0] == part and r[1] == case and r[2] == "ok"), None)


def summarize(rows: list, target: StepCase) -> None:
    """Rows ``summary``: issue 28's targets at ``target`` (96^3 batch 2 bf16) and the projection of the fastest
    measured setting at that size."""
    plain, fp32 = target.name, replace(target, dtype="fp32").name
    step = _ok_seconds(rows, "step vs backbone", f"{plain} step")
    backbone = _ok_seconds(rows, "step vs backbone", f"{plain} backbone alone")
    if step and backbone:
        ratio = step / backbone
        rows.append(["summary", f"step / backbone, {plain}", "met" if ratio <= 1.3 else "not met", step, None,
                     f"{ratio:.2f}x (target <= 1.3x); backbone alone {backbone:.3f} s"])  # fmt: skip
    step_fp32 = _ok_seconds(rows, "step vs backbone", f"{fp32} step")
    if step and step_fp32:
        rows.append(["summary", f"bf16 vs fp32, {target.patch}^3 b{target.batch}", "met" if step < step_fp32 else "not met",
                     step, None, f"bf16 {step:.3f} s vs fp32 {step_fp32:.3f} s ({step / step_fp32:.2f}x)"])  # fmt: skip
    prefix = f"{target.patch}^3 b{target.batch} "
    measured = [(r[3], r[1]) for r in rows if r[0] in ("step vs backbone", "compile") and r[2] == "ok"
                and r[1].startswith(prefix) and r[1].endswith(" step")]  # fmt: skip
    if measured:
        seconds, case = min(measured)
        hours = gpu_hours(seconds)
        rows.append(["summary", f"1e5 its at {target.patch}^3 b{target.batch}, fastest: {case[: -len(' step')]}",
                     "met" if hours <= 8 else "not met", seconds, None, f"{hours:.1f} GPU-hours (target <= 8)"])  # fmt: skip


def write_results(rows: list, output_dir: Path, gpu: str) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', gpu).strip('_').lower()}"
    records = [dict(zip(HEADERS, row)) for row in rows]
    meta = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": records}, indent=1))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADERS)
        writer.writerows(rows)
    return stem


def format_rows(rows: list) -> list[list[str]]:
    """Rows as printed: seconds to the millisecond, peak MiB to the MiB, ``-`` where a case has none."""
    return [
        [part, case, status, "-" if s is None else f"{s:.3f}", "-" if p is None else f"{p:,.0f}", result]
        for part, case, status, s, p, result in rows
    ]


@dataclass(frozen=True)
class Plan:
    """What one run measures: the GPU plan, or the CPU smoke plan (every code path, tiny)."""

    device: str
    sizes: list[tuple[int, int]]  # (patch, batch), the first is the target's
    widths: tuple[int, ...]
    radii: tuple[int, ...]
    compile_backend: str
    compile_cases: int  # how many of (bf16, bf16 channels-last, fp32) to compile
    compile_veu: str  # the VEU of the compiled cases (the fused one is compiled too where present)
    reps: int
    veu_sizes: tuple[tuple[int, int, int], ...]
    veu_impls: tuple[str, ...] | None  # None: every VectorEmbeddingUnit.IMPLEMENTATIONS (the fused one where present)
    pair_volume: int
    pair_patch: int
    with_tests_and_run: bool


GPU_PLAN = Plan("cuda", [(96, 2), (96, 1), (96, 4), (128, 2), (128, 1), (128, 4)], WIDTHS, (2, 2, 2, 1, 1), "inductor", 3,
                "streaming", 2, ((64, 32, 2), (96, 8, 2), (128, 8, 1)), None, 200, 96, True)  # fmt: skip
# the smoke plan compiles with TorchDynamo alone ("eager" backend), the reference VEU: the child-process path, cheaply
# (capturing the streaming VEU's unrolled per-offset loops took 4x the CPU time: 110 vs 28 s with aot_eager)
SMOKE_PLAN = Plan("cpu", [(32, 1)], (8, 8, 8, 8, 8), (1, 1, 1, 1, 1), "eager", 1, "reference", 1, ((16, 8, 1),),
                  ("reference", "streaming"), 48, 32, False)  # fmt: skip


def run_checks(plan: Plan, budget_s: float) -> list:
    """Every part of the check under ``plan`` within about ``budget_s`` seconds; returns the rows."""
    scale, start, rows = budget_s / sum(BUDGETS.values()), time.perf_counter(), []
    device = torch.device(plan.device)
    base = StepCase(*plan.sizes[0], widths=plan.widths, radii=plan.radii, device=plan.device)
    if plan.with_tests_and_run:
        check_tests(rows, BUDGETS["tests"] * scale)
    from cover3d.networks.blocks.veu import VectorEmbeddingUnit

    impls = list(plan.veu_impls or VectorEmbeddingUnit.IMPLEMENTATIONS)
    check_steps(rows, step_cases(plan.sizes, base, impls), BUDGETS["step"] * scale, plan.reps)
    compiled = [replace(base, compile=plan.compile_backend, dtype=d, channels_last=cl, veu_impl=plan.compile_veu)
                for d, cl in (("bf16", False), ("bf16", True), ("fp32", False))][: plan.compile_cases]  # fmt: skip
    compiled += [replace(compiled[0], veu_impl=v) for v in impls if v not in ("streaming", "reference")]
    check_compile(rows, compiled, BUDGETS["compile"] * scale, plan.reps)
    profiled = list(dict.fromkeys([base, replace(base, dtype="fp32"), replace(base, patch=plan.sizes[-1][0])]))
    check_breakdown(rows, profiled, BUDGETS["breakdown"] * scale)
    check_veu(rows, device, BUDGETS["veu"] * scale, plan.veu_sizes, impls)
    check_pairs(rows, device, BUDGETS["pairs"] * scale, plan.pair_volume, plan.pair_patch)
    if plan.with_tests_and_run:
        remaining = budget_s - (time.perf_counter() - start)
        check_run(rows, _ok_seconds(rows, "step vs backbone", f"{base.name} step"), min(BUDGETS["run"] * scale, remaining))
    summarize(rows, base)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=430.0,
                        help="total seconds (parts scale to fit; each part's last case may overrun it by seconds)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the JSON / CSV go (default benchmarks/results; with --smoke: nowhere)")
    parser.add_argument("--smoke", action="store_true", help="every code path on the CPU at tiny sizes (for tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        case = StepCase(**{**spec["case"], **{k: tuple(spec["case"][k]) for k in ("widths", "radii")}})
        print(json.dumps(compiled_step_report(case, spec["reps"])), flush=True)
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check on this machine")
        return 0
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    name = "cpu smoke" if args.smoke else torch.cuda.get_device_name(0)
    print(f"gpu_check on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    rows = run_checks(plan, args.budget_s)
    print(markdown_table(HEADERS, format_rows(rows)))
    output_dir = args.output_dir or (None if args.smoke else REPO / "benchmarks" / "results")
    if output_dir is not None:
        stem = write_results(rows, output_dir, name)
        print(f"wrote {stem}.json and {stem}.csv")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
