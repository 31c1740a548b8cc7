"""Engine pieces: atomic saving, checkpoint discovery, batch preparation, logging outputs."""

import os

import pytest
import torch

from cover3d.engine import latest_checkpoint, prepare_pair_batch, save_atomic, scalar_outputs


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_save_atomic_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(3)}, target)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_atomic({"w": torch.zeros(3), "bad": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    assert os.stat(target).st_mode & 0o777 == 0o644


def test_latest_checkpoint_picks_the_highest_epoch(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for name in ("checkpoint_2.pt", "checkpoint_10.pt", "checkpoint_9.pt", "model.pt", "checkpoint_x.pt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "checkpoint_10.pt"


def test_prepare_pair_batch_stacks_views_as_channels():
    batch = {"image": torch.zeros(2, 1, 4, 4, 4), "image_b": torch.ones(2, 1, 4, 4, 4),
             "ddf": torch.rand(2, 3, 4, 4, 4), "mask": torch.ones(2, 1, 4, 4, 4)}  # fmt: skip
    inputs, (ddf, mask) = prepare_pair_batch(batch, torch.device("cpu"))
    assert inputs.shape == (2, 2, 4, 4, 4) and inputs[:, 0].eq(0).all() and inputs[:, 1].eq(1).all()
    assert torch.equal(ddf, batch["ddf"]) and torch.equal(mask, batch["mask"])


def test_scalar_outputs_keeps_losses_and_metrics_only():
    output = {"image": torch.zeros(2), "pred": torch.zeros(3), "loss": torch.tensor(1.5), "loss_vec": torch.tensor(1.0),
              "epe": torch.tensor(2.0), "epe_identity": torch.tensor(3.0), "lr": 0.1, "it_per_s": 4.0}  # fmt: skip
    assert scalar_outputs(output) == {"loss": 1.5, "loss_vec": 1.0, "epe": 2.0, "epe_identity": 3.0, "lr": 0.1, "it_per_s": 4.0}
