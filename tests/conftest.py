"""Shared fixtures: one short real pretraining run whose weights several tests check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# cover_ct at its default widths (so the notebook's network fits the weights), small patches: ~1 CPU minute
SHORT_PRETRAINING = ["--epochs", "5", "--iterations_per_epoch", "24", "--learning_rate", "0.002",
                     "--warmup_iterations", "10", "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]",
                     "--validation_pairs", "1"]  # fmt: skip


@pytest.fixture(scope="session")
def trained_ct_weights(tmp_path_factory) -> Path:
    """``model.pt`` of a 120-iteration ``cover_ct`` run on the embedded sample (trained, if briefly)."""
    folder = tmp_path_factory.mktemp("short_pretraining")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles" / "cover_ct" / "train.json"),
               *SHORT_PRETRAINING, "--ckpt_dir", str(folder / "models"), "--output_dir", str(folder / "runs")]  # fmt: skip
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return folder / "models" / "model.pt"
