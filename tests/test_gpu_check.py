"""benchmarks/gpu_check.py: one clear line and exit 0 without CUDA; its training step runs, its profiler breakdown
charges forward and backward time to the model's parts, and its smoke mode runs every part (here on CPU, tiny)."""

from __future__ import annotations

import importlib.util
import json
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
    sys.modules[spec.name] = module  # its dataclasses look their module up there
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
    gpu_check = load_gpu_check()
    step = gpu_check.build_step(gpu_check.StepCase(32, 1, "fp32", widths=(4, 8, 8, 16, 16), device="cpu"))
    losses = [float(step()["loss"]) for _ in range(4)]  # the same batch: the step must lower its own loss
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_breakdown_charges_backward_time_to_the_forward_part_that_caused_it():
    """One profiled CPU step: every part of the model appears, and the backward of the backbone's convolutions and of
    the VEU's custom autograd Function lands on them (not on ``other``) via autograd sequence numbers."""
    gpu_check = load_gpu_check()
    case = gpu_check.StepCase(32, 1, "fp32", widths=(8,) * 5, radii=(1,) * 5, device="cpu")
    totals, wall = gpu_check.profile_step(case, steps=1)
    expected = {"backbone", "pyramid projections", "pyramid warps", "loss warp (L_con)", "loss", "optimizer",
                *(f"level {k} VEU" for k in range(5))}  # fmt: skip
    assert expected <= set(totals), sorted(totals)
    backbone = totals["backbone"]
    assert backbone["backward"] > 0.8 * backbone["forward"]  # a convolution's backward costs about 2x its forward
    assert all(totals[f"level {k} VEU"]["backward"] > 0 for k in range(5))
    charged = sum(t["forward"] + t["backward"] for t in totals.values())
    assert totals.get("other", {"forward": 0, "backward": 0})["backward"] < 0.1 * charged
    assert wall > 0


def test_component_names():
    component = load_gpu_check().component
    assert component("cover3d.level3.veu") == "level 3 VEU"
    assert component("cover3d.level1.warp") == component("cover3d.level4.warp") == "pyramid warps"
    assert component("cover3d.loss.warp") == "loss warp (L_con)"
    assert component("cover3d.optimizer") == "optimizer"


@pytest.mark.slow
def test_smoke_mode_runs_every_part_on_the_cpu(tmp_path):
    """``--smoke``: the GPU run's parts at 32^3 on the CPU (the compiled case in its own process, TorchDynamo's
    ``eager`` backend), written as the GPU run writes them."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget-s", "100000", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check_cpu_smoke.json").read_text())["rows"]
    status = {(r["part"], r["case"]): r["status"] for r in rows}
    for case in ("32^3 b1 bf16", "32^3 b1 fp32", "32^3 b1 bf16 channels_last", "32^3 b1 fp32 channels_last"):
        assert status[("step vs backbone", f"{case} step")] == "ok"
        assert status[("step vs backbone", f"{case} backbone alone")] == "ok"
    assert status[("compile", "32^3 b1 bf16 compile eager VEU reference step")] == "ok", rows
    breakdown = {r["case"]: r for r in rows if r["part"] == "breakdown 32^3 b1 bf16"}
    assert {"backbone", "level 4 VEU", "optimizer", "profiled CPU time vs wall"} <= set(breakdown)
    assert {r["case"].rsplit(" ", 1)[1] for r in rows if r["part"] == "VEU fwd+bwd"} >= {"reference", "streaming"}
    assert status[("pair generation", "CoverPaird on a cpu volume 48^3")] == "ok"
    summary = [r for r in rows if r["part"] == "summary"]
    assert [r["case"].split(",")[0] for r in summary] == ["step / backbone", "bf16 vs fp32", "1e5 its at 32^3 b1"]
    seconds = {r["case"]: r["seconds"] for r in rows if r["part"] == "step vs backbone"}
    ratio = seconds["32^3 b1 bf16 step"] / seconds["32^3 b1 bf16 backbone alone"]
    assert summary[0]["result"].startswith(f"{ratio:.2f}x")


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
