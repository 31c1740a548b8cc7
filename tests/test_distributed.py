"""multi_gpu_train.json with 2 gloo processes on the CPU: one training, identical ranks, one writer, the same
first step as one process with the same global batch, and an exact resume after a crash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cover_ct"
WORKER = Path(__file__).resolve().parent / "bundle_worker.py"
SETTINGS = {"iterations_per_epoch": 4, "epochs": 3, "batch_size": 1, "validation_pairs": 1, "warmup_iterations": 2,
            "learning_rate": 0.01, "patch_size": [32, 32, 32], "context_size": [48, 48, 48],
            "channels": [4, 8, 8, 16, 16], "groups": [2, 2, 2, 1, 1], "checkpoint_interval": 2, "log_interval": 1}  # fmt: skip


def launch(tmp_path: Path, name: str, processes: int, stop_at: int = 0, **settings) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the bundle (with the multi-GPU overlay when ``processes`` > 1) into ``tmp_path / 'bundle' / 'models'``; returns the
    process result and each rank's record (see ``bundle_worker.py``)."""
    configs = [str(BUNDLE / "train.json")] + ([str(BUNDLE / "multi_gpu_train.json")] if processes > 1 else [])
    outputs = {"ckpt_dir": str(tmp_path / "bundle" / "models"), "output_dir": str(tmp_path / "bundle" / "runs")}
    overrides = {**SETTINGS, **settings, **outputs}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable]  # fmt: skip
    out = tmp_path / name
    tmp_path.mkdir(parents=True, exist_ok=True)
    command = [*launcher, str(WORKER), str(out), json.dumps(configs), json.dumps(overrides), str(stop_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # no time limit: a rank stuck in a collective is ended by gloo's own timeout (init_process_group's 30 min default)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    records = [torch.load(p, weights_only=True) for p in sorted(out.glob("rank*.pt"))]
    return result, records


def log_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_and_resume_exactly(tmp_path):
    result, (rank0, rank1) = launch(tmp_path, "ddp", processes=2)
    assert result.returncode == 0, log_of(result)[-4000:]
    per_epoch = torch.tensor([rank0["loss"], rank1["loss"]]).view(2, 3, 4).mean(dim=(0, 2))  # both ranks, by epoch
    assert per_epoch[-1] < 0.95 * per_epoch[0], per_epoch  # the training loss falls
    assert torch.equal(rank0["parameters"], rank1["parameters"])  # DDP keeps the ranks identical
    assert rank0["loss"] != rank1["loss"]  # ... while each rank draws its own pairs
    assert log_of(result).count("final weights written") == 1  # only rank 0 writes
    models = tmp_path / "bundle" / "models"
    assert sorted(p.name for p in models.glob("checkpoint_*.pt")) == ["checkpoint_10.pt", "checkpoint_12.pt"]
    assert (models / "model.pt").is_file()

    # one process with the 2x batch draws the same global batch: the first step's gradient matches
    single_result, (single,) = launch(tmp_path / "single", "one", processes=1, batch_size=2, epochs=1, iterations_per_epoch=1)
    assert single_result.returncode == 0, log_of(single_result)[-4000:]
    cosine = torch.nn.functional.cosine_similarity(single["first_gradients"], rank0["first_gradients"], dim=0)
    assert cosine > 0.99, cosine

    # killed after iteration 7 (newest checkpoint: 6), then restarted: same schedule, same weights
    crash, _ = launch(tmp_path / "crash", "crashed", processes=2, stop_at=7)
    assert crash.returncode != 0 and "simulated crash after iteration 7" in log_of(crash)
    resumed_result, (resumed0, resumed1) = launch(tmp_path / "crash", "resumed", processes=2)
    assert resumed_result.returncode == 0, log_of(resumed_result)[-4000:]
    assert "checkpoint_6.pt: iteration 6 of 12" in log_of(resumed_result)
    assert resumed0["lr"] == rank0["lr"][6:]
    torch.testing.assert_close(resumed0["parameters"], rank0["parameters"], rtol=0, atol=1e-5)
    assert torch.equal(resumed0["parameters"], resumed1["parameters"])


@pytest.mark.parametrize("name", ["cover_ct", "cover_mri", "cover_seg"])
def test_multi_gpu_overlay_runs_the_bundles_own_initialisation(name):
    """The overlay replaces ``initialize`` (the process group must come first): it must keep every step of the
    bundle's own list, in order, so the two cannot drift apart."""
    base = json.loads((REPO / "bundles" / name / "train.json").read_text())["initialize"]
    overlay = json.loads((REPO / "bundles" / name / "multi_gpu_train.json").read_text())["initialize"]
    assert overlay[0].startswith("$dist.is_initialized() or dist.init_process_group(")
    rank_zero_only = " if dist.get_rank() == 0 else None"
    assert [step.replace(rank_zero_only, "").replace("@network.module", "@network") for step in overlay[2:]] == base


def _handler_names(train: dict, value, rank: int) -> list[str]:
    """The handlers ``value`` (a train-section entry: a list, an ``@train#...`` reference or a ``$`` expression over
    such lists) stands for on ``rank``, each named ``<list>[<index>]`` or by what it constructs."""
    if isinstance(value, list):
        raise TypeError("expected a reference to a handler list")
    if value.startswith("@train#"):
        key = value[len("@train#"):]
        entry = train[key]
        return [f"{key}[{i}]" for i in range(len(entry))] if isinstance(entry, list) else _handler_names(train, entry, rank)
    expression = value[1:].replace("[ce.AverageLossGradients(@train#trainer#loss_function)]", "['AverageLossGradients']")
    expression = re.sub(r"@train#(\w+)", lambda m: repr(_handler_names(train, "@train#" + m[1], rank)), expression)
    return eval(expression, {"dist": SimpleNamespace(get_rank=lambda: rank)})  # the bundle's own text


@pytest.mark.parametrize("name", ["cover_ct", "cover_mri", "cover_seg"])
def test_multi_gpu_overlay_chooses_rank_handlers_by_name(name):
    """Rank 0 runs every handler of the single-process bundle; the other ranks only those every rank needs
    (checkpoint resume, the sampler's epoch, the LR schedule). The lists are named in train.json, so adding a
    handler cannot silently move one across ranks the way slicing by position did."""
    train = json.loads((REPO / "bundles" / name / "train.json").read_text())["train"]
    overlay = json.loads((REPO / "bundles" / name / "multi_gpu_train.json").read_text())
    every_rank = [h if isinstance(h, str) else h["_target_"] for h in train["every_rank_handlers"]]
    assert every_rank == ["cover3d.engine.TrainingCheckpoints", "@train#sampler", "LrScheduleHandler"]
    single = _handler_names(train, train["trainer"]["train_handlers"], rank=0)
    extra = ["AverageLossGradients"] if name != "cover_seg" else []  # pretext heads live outside DDP
    ddp = {rank: _handler_names(train, overlay["train#trainer#train_handlers"], rank) for rank in (0, 1)}
    assert ddp[0] == extra + single
    assert ddp[1] == extra + [f"every_rank_handlers[{i}]" for i in range(3)]
    assert not any(re.search(r"#\d+(#|$)", key) for key in overlay)  # no override addresses a handler by position
    if name != "cover_seg":
        assert train["field_validation"]["_target_"] == "cover3d.engine.FieldValidation"
        assert overlay["train#field_validation#network"] == "$@network.module"


def _average_in_process(rank: int, store: str, results) -> None:
    from cover3d.engine import AverageLossGradients

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    head = torch.nn.Linear(3, 2)
    for p in head.parameters():
        p.grad = torch.full_like(p, float(rank + 1))  # rank 0: ones, rank 1: twos
    AverageLossGradients(head)(None)
    results[rank] = torch.cat([p.grad.flatten() for p in head.parameters()])
    torch.distributed.destroy_process_group()


def test_loss_head_gradients_are_averaged_across_ranks(tmp_path):
    """A pretext head lives in the loss, outside DDP: its gradients are averaged by AverageLossGradients."""
    manager = torch.multiprocessing.get_context("spawn").Manager()
    results = manager.dict()
    torch.multiprocessing.spawn(_average_in_process, args=(str(tmp_path / "store"), results), nprocs=2)
    assert torch.equal(results[0], results[1]) and torch.allclose(results[0], torch.full((8,), 1.5))


@pytest.mark.parametrize("pretext", sorted(p.name for p in (REPO / "bundles" / "cover_mri").glob("pretext_*.json")))
def test_every_pretext_overlay_composes_with_the_multi_gpu_overlay(pretext, tmp_path):
    """Under DDP ``@network`` is the wrapper: a pretext overlay must reach the network's parts through
    ``@network_def`` (``DistributedDataParallel`` has no ``pyramid`` or ``backbone``), and the head gradients that
    ``AverageLossGradients`` averages must be those of the loss the trainer uses (the pretext loss, not ``@loss``)."""
    from monai.bundle import ConfigParser

    from cover3d.engine import AverageLossGradients

    bundle = REPO / "bundles" / "cover_mri"
    parser = ConfigParser()
    parser.read_config([str(bundle / "train.json"), str(bundle / pretext), str(bundle / "multi_gpu_train.json")])
    parser.update({"device": "$torch.device('cpu')", "channels": [4, 8, 8, 16, 16], "groups": [2, 2, 2, 1, 1]})
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        network = parser.get_parsed_content("network")
        assert isinstance(network, torch.nn.parallel.DistributedDataParallel)
        loss = parser.get_parsed_content("train#trainer#loss_function")
        assert loss is parser.get_parsed_content("pretext_loss")
        assert "AverageLossGradients(@train::trainer::loss_function)" in parser["train#trainer#train_handlers"]
        heads = {id(p) for p in AverageLossGradients(loss).parameters}
        assert heads == {id(p) for p in loss.parameters() if p.requires_grad}
    finally:
        torch.distributed.destroy_process_group()
