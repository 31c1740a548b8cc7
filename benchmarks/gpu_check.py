"""GPU check: everything cover3d does on CUDA, in one run of <= 8 minutes, as one table.

    python benchmarks/gpu_check.py [--budget-s 470] [--output-dir benchmarks/results]

Parts (each stops starting new cases when its own time budget is spent; a case that fails or runs out of memory is a
row with its error, never an abort):

1. the CUDA-only tests: ``pytest -k cuda`` on the test files that skip without CUDA;
2. one pretraining step (``CoverTrainer``'s own iteration: CoverNet on both views, CoverLoss, backward, clipping,
   AdamW, GradScaler under AMP) at 96^3 and 128^3, batch 1, widths 32-512, in fp32, AMP fp16 and AMP bf16:
   median time of 3 steps after a warm-up step and peak memory (``torch.cuda.max_memory_allocated``);
3. streaming vs reference VEU, forward + backward, time and peak memory;
4. pair generation on the GPU (``CoverPaird`` with CT appearance on a CUDA volume), pairs/s;
5. a ~2-minute real pretraining run of the ``cover_ct`` bundle (widths 32-512, 64^3 patches at 1.5 mm, AMP,
   iterations sized from part 2's step time) and the end-point error of its weights from ``evaluate.json``.

Prints the table (markdown) and writes it as ``gpu_check_<gpu>.json`` and ``.csv`` under ``--output-dir``. Without
CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MiB, markdown_table, synchronize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (32, 64, 128, 256, 512)
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# part: seconds; the sum (+ start-up) stays under 8 minutes
BUDGETS = {"tests": 90.0, "step": 120.0, "veu": 45.0, "pairs": 25.0, "run": 170.0}
HEADERS = ("part", "case", "status", "seconds", "peak MiB", "result")


def make_step(
    patch: int, batch: int, channels: tuple[int, ...], device: torch.device, amp_dtype: torch.dtype | None
) -> Callable[[], dict]:
    """One real training iteration of ``CoverTrainer`` on a fixed random pair batch; returns a callable that runs
    it and returns the iteration output (``loss``, ``epe``, ...). ``amp_dtype`` None = fp32."""
    from cover3d.engine import CoverTrainer
    from cover3d.losses import CoverLoss
    from cover3d.networks import CoverNet

    gen = torch.Generator().manual_seed(0)
    size = (patch,) * 3
    coarse = torch.randn((batch, 3, *(max(patch // 16, 1),) * 3), generator=gen) * 3
    batchdata = {
        "image": torch.rand((batch, 1, *size), generator=gen),
        "image_b": torch.rand((batch, 1, *size), generator=gen),
        "ddf": torch.nn.functional.interpolate(coarse, size=size, mode="trilinear", align_corners=False),
        "mask": torch.ones((batch, 1, *size)),
    }
    torch.manual_seed(0)
    network = CoverNet(channels=channels).to(device)
    trainer = CoverTrainer(
        device=device, max_epochs=1, train_data_loader=[batchdata], network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-4), loss_function=CoverLoss(),
        amp=amp_dtype is not None, amp_kwargs={"dtype": amp_dtype} if amp_dtype is not None else {},
    )  # fmt: skip
    return lambda: trainer._iteration(trainer, batchdata)


def _measure(fn: Callable[[], object], device: torch.device, reps: int) -> tuple[float, int]:
    """Median wall seconds of ``reps`` calls after one warm-up call, and the peak memory of all of them."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), int(torch.cuda.max_memory_allocated(device))


def _case(rows: list, part: str, case: str, fn: Callable[[], tuple[float | None, int | None, str]]) -> None:
    """Append one row (``fn`` returns seconds, peak bytes, result; the row holds the peak in MiB); an exception (OOM
    included) becomes the row's status."""
    try:
        seconds, peak, result = fn()
        rows.append([part, case, "ok", seconds, None if peak is None else peak / MiB, result])
    except Exception as error:  # noqa: BLE001 - every failure is reported as a row, the check goes on
        rows.append([part, case, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}", None, None, ""])
    finally:
        torch.cuda.empty_cache()


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


def check_steps(rows: list, device: torch.device, budget: float) -> float | None:
    """Returns the fp16 96^3 step time (sizes part 5), or None."""
    deadline, step_96 = time.perf_counter() + budget, None
    for patch in (96, 128):
        for name, dtype in DTYPES.items():
            if time.perf_counter() > deadline:
                rows.append(["pretraining step", f"{patch}^3 {name}", "skipped: part budget spent", None, None, ""])
                continue
            if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
                rows.append(["pretraining step", f"{patch}^3 {name}", "skipped: no bf16 on this GPU", None, None, ""])
                continue

            def run(patch=patch, dtype=dtype) -> tuple[float, int, str]:
                step = make_step(patch, 1, WIDTHS, device, dtype)
                seconds, peak = _measure(step, device, reps=3)
                return seconds, peak, f"loss {float(step()['loss']):.3f}"

            _case(rows, "pretraining step", f"{patch}^3 b1 widths 32-512 {name}", run)
            if patch == 96 and name == "fp16" and rows[-1][2] == "ok":
                step_96 = rows[-1][3]
    return step_96


def check_veu(rows: list, device: torch.device, budget: float) -> None:
    from cover3d.networks.blocks.veu import VectorEmbeddingUnit

    deadline = time.perf_counter() + budget
    for size, channels, radius in ((64, 32, 2), (96, 8, 2), (128, 8, 1)):
        for impl in ("reference", "streaming"):
            case = f"{size}^3 C={channels} J={channels // 8} r={radius} {impl}"
            if time.perf_counter() > deadline:
                rows.append(["VEU fwd+bwd", case, "skipped: part budget spent", None, None, ""])
                continue

            def run(size=size, channels=channels, radius=radius, impl=impl) -> tuple[float, int, str]:
                shape = (1, channels, size, size, size)
                query = torch.randn(shape, device=device, requires_grad=True)
                key = torch.randn(shape, device=device, requires_grad=True)
                unit = VectorEmbeddingUnit(radius, channels // 8, impl)
                seconds, peak = _measure(lambda: unit(query, key).sum().backward(), device, reps=3)
                return seconds, peak, ""

            _case(rows, "VEU fwd+bwd", case, run)


def check_pairs(rows: list, device: torch.device, budget: float) -> None:
    from cover3d.transforms import CoverPaird, appearance_augmentation

    def run() -> tuple[float, int, str]:
        volume = torch.rand((1, 200, 200, 200), device=device)
        transform = CoverPaird("image", 96, 144, appearance=appearance_augmentation("ct"), reach=59.0)
        transform.set_random_state(0)
        seconds, peak = _measure(lambda: transform({"image": volume}), device, reps=8)
        return seconds, peak, f"{1 / seconds:.1f} pairs/s (patch 96^3, context 144^3, CT appearance)"

    if budget > 0:
        _case(rows, "pair generation", "CoverPaird on a CUDA volume 200^3", run)


def check_run(rows: list, step_96: float | None, budget: float) -> None:
    """A real ``cover_ct`` bundle run sized to ~2 minutes, then ``evaluate.json`` on its weights."""
    # a 64^3 batch-2 step costs about 2 x (64/96)^3 = 0.6 of a 96^3 batch-1 step; aim at 100 s of training
    iterations = 200 if step_96 is None else int(min(max(100 / max(0.6 * step_96, 0.02), 40), 4000))
    per_epoch = max(iterations // 4, 10)
    with tempfile.TemporaryDirectory() as out:
        common = ["--ckpt_dir", f"{out}/models", "--output_dir", f"{out}/runs", "--resume", "False",
                  "--channels", "[32,64,128,256,512]", "--patch_size", "[64,64,64]", "--context_size", "[96,96,96]",
                  "--pixdim", "[1.5,1.5,1.5]", "--num_workers", "8",
                  "--epochs", "4", "--iterations_per_epoch", str(per_epoch),
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

        _case(rows, "2-minute pretraining", f"cover_ct 64^3 x2 widths 32-512 AMP, {4 * per_epoch} its", run)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=470.0, help="total seconds (parts scale to fit)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check on this machine")
        return 0
    device = torch.device("cuda:0")
    gpu = torch.cuda.get_device_name(device)
    print(f"gpu_check on {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    scale, start, rows = args.budget_s / sum(BUDGETS.values()), time.perf_counter(), []
    torch.backends.cudnn.benchmark = True
    check_tests(rows, BUDGETS["tests"] * scale)
    step_96 = check_steps(rows, device, BUDGETS["step"] * scale)
    check_veu(rows, device, BUDGETS["veu"] * scale)
    check_pairs(rows, device, BUDGETS["pairs"] * scale)
    remaining = args.budget_s - (time.perf_counter() - start)
    check_run(rows, step_96, min(BUDGETS["run"] * scale, remaining))
    table = markdown_table(HEADERS, format_rows(rows))
    print(table)
    stem = write_results(rows, args.output_dir, gpu)
    print(f"total {time.perf_counter() - start:.0f} s; wrote {stem}.json and {stem}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
