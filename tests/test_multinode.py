"""The several-node ``torchrun`` command of docs/performance.md, as 2 nodes x 1 process on this machine: two torchrun
invocations meet through a c10d rendezvous on localhost (gloo, CPU), train a tiny network for 3 iterations from one
store (``cover3d.prepare`` of the embedded CT sample), draw different samples (together the single-process stream),
and write one checkpoint set."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "bundle_worker.py"
DOCUMENTED = (
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0.example.org:29400 "
    "--rdzv_id cover_ct_run1 -m monai.bundle run "
    "--config_file \"['bundles/cover_ct/train.json','bundles/cover_ct/multi_gpu_train.json']\" --store /shared/cover_ct_store "
    "--batch_size 2"
)  # fmt: skip
ITERATIONS = 3
SETTINGS = {"iterations_per_epoch": ITERATIONS, "epochs": 1, "batch_size": 1, "validation_pairs": 1,
            "warmup_iterations": 1, "patch_size": [32, 32, 32], "context_size": [48, 48, 48], "num_threads": 1,
            "channels": [4, 8, 8, 16, 16], "groups": [2, 2, 2, 1, 1], "checkpoint_interval": 1, "log_interval": 1}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def node_commands(port: int, out: Path, overrides: dict) -> list[list[str]]:
    """The documented command for each of 2 nodes of this machine: its torchrun options with 1 process per node and
    the rendezvous on ``localhost:port``, running ``bundle_worker.py`` on the documented config files (``overrides``
    replace the command's own settings)."""
    words = shlex.split(DOCUMENTED)
    launcher = words[1 : words.index("-m")]
    launcher[launcher.index("--nproc_per_node") + 1] = "1"
    launcher[launcher.index("--rdzv_endpoint") + 1] = f"localhost:{port}"
    configs = [str(REPO / c) for c in json.loads(words[words.index("--config_file") + 1].replace("'", '"'))]
    worker = [str(WORKER), str(out), json.dumps(configs), json.dumps(overrides)]
    return [[sys.executable, "-m", "torch.distributed.run", *launcher, *worker] for _ in range(2)]


def run_nodes(commands: list[list[str]], cwd: Path) -> list[str]:
    """Start every node, wait for all; each node's output. A node that fails ends the others (their whole process
    groups: torchrun and its worker), so nothing is left behind."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    nodes = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for c in commands]  # fmt: skip
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate()[0])
            if node.returncode != 0:
                break
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    return logs + [node.communicate()[0] for node in nodes[len(logs) :]]


def test_documented_command_is_in_the_docs():
    assert DOCUMENTED in (REPO / "docs" / "performance.md").read_text().replace("\\\n    ", "")


@pytest.mark.slow
def test_two_nodes_draw_different_samples_and_write_one_checkpoint_set(tmp_path):
    from cover3d.prepare import prepare_store

    store = tmp_path / "store"
    prepare_store(str(REPO / "bundles" / "cover_ct" / "train.json"), store, workers=0, progress=False)
    models = tmp_path / "bundle" / "models"
    overrides = {**SETTINGS, "store": str(store), "ckpt_dir": str(models), "output_dir": str(tmp_path / "bundle" / "runs")}
    logs = run_nodes(node_commands(free_port(), tmp_path / "records", overrides), tmp_path)
    records = [torch.load(p, weights_only=True) for p in sorted((tmp_path / "records").glob("rank*.pt"))]
    assert len(records) == 2, "\n".join(log[-3000:] for log in logs)

    # what each rank drew: rank r trains on stream positions r, r + 2, r + 4, ... (the single-process stream)
    drawn = [torch.stack(r["images"]) for r in records]
    assert all(d.shape[0] == ITERATIONS for d in drawn)
    assert not any(torch.equal(a, b) for a in drawn[0] for b in drawn[1]), "two ranks drew the same sample"
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "cover_ct" / "train.json"))
    parser.update(overrides)
    stream = parser.get_parsed_content("train#dataset")
    assert type(stream.dataset).__name__ == "StoreDataset"  # the ranks read the store
    for rank, images in enumerate(drawn):
        for i, image in enumerate(images):
            torch.testing.assert_close(image[0], torch.as_tensor(stream[2 * i + rank]["image"]), rtol=0, atol=0)

    # one training (identical ranks), one writer, one intact checkpoint set
    assert torch.equal(records[0]["parameters"], records[1]["parameters"])
    assert sum(log.count("final weights written") for log in logs) == 1
    names = sorted(p.name for p in models.iterdir())
    assert [n for n in names if n.endswith(".pt")] == ["checkpoint_2.pt", "checkpoint_3.pt", "model.pt"], names
    final = torch.load(models / "model.pt", weights_only=True)
    saved = torch.cat([t.flatten() for t in final.values()]) if isinstance(final, dict) else None
    assert saved is not None and torch.equal(saved, records[0]["parameters"])
