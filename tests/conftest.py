"""Shared fixtures: one short real pretraining run whose weights the notebook test checks (only that test: the
bundle's own short-run test trains a cheaper setting in tests/test_bundles.py; drop this fixture once the notebook
reads the shipped weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# cover_ct at its default widths and patch size (the notebook builds the bundle's own network and pairs; weights
# trained on smaller patches do not transfer to 48^3), 160 iterations: about 6 minutes of CPU (estimated from
# 32^3 runs); no time limit on the run, which a loaded machine only slows
SHORT_PRETRAINING = ["--epochs", "4", "--iterations_per_epoch", "40", "--learning_rate", "0.002",
                     "--warmup_iterations", "20", "--validation_pairs", "1"]  # fmt: skip


@pytest.fixture(scope="session")
def trained_ct_weights(tmp_path_factory) -> Path:
    """``model.pt`` of a 160-iteration ``cover_ct`` run on the embedded sample (trained, if briefly)."""
    folder = tmp_path_factory.mktemp("short_pretraining")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles" / "cover_ct" / "train.json"),
               *SHORT_PRETRAINING, "--ckpt_dir", str(folder / "models"), "--output_dir", str(folder / "runs")]  # fmt: skip
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return folder / "models" / "model.pt"
