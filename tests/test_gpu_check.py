"""benchmarks/gpu_check.py: one clear line and exit 0 without CUDA; its training step runs (here on CPU, tiny)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_exits_zero_with_one_line_without_cuda(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check on this machine"
    ]
    assert not list(tmp_path.iterdir())


def test_step_function_trains_at_a_tiny_size_on_cpu():
    step = load_gpu_check().make_step(32, 1, (4, 8, 8, 16, 16), torch.device("cpu"), None)
    losses = [float(step()["loss"]) for _ in range(4)]  # the same batch: the step must lower its own loss
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_results_table_is_written_as_json_and_csv(tmp_path):
    gpu_check = load_gpu_check()
    rows = [["pretraining step", "96^3 fp16", "ok", 0.25, 3.0, "loss 1.0"], ["VEU", "x", "OOM", None, None, ""]]
    stem = gpu_check.write_results(rows, tmp_path, "NVIDIA H200 (test)")
    assert stem.name == "gpu_check_nvidia_h200_test"
    csv_lines = stem.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(gpu_check.HEADERS) and csv_lines[1] == "pretraining step,96^3 fp16,ok,0.25,3.0,loss 1.0"
    assert gpu_check.format_rows(rows)[0][3:5] == ["0.250", "3"]


def test_a_case_row_holds_its_peak_in_mib_and_a_failure_as_its_status():
    gpu_check = load_gpu_check()
    rows = []
    gpu_check._case(rows, "part", "measured", lambda: (0.5, 3 * 1024**2, "fine"))

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    gpu_check._case(rows, "part", "too big", out_of_memory)
    assert rows[0] == ["part", "measured", "ok", 0.5, 3.0, "fine"]  # the "peak MiB" column: MiB, not bytes
    assert rows[1] == ["part", "too big", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", None, None, ""]
