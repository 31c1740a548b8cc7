"""Run checkpoints: exact resume (schedule, optimizer, data stream), fresh starts, damaged files, locks, mismatches."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import Compose, RandGaussianNoised
from monai.utils import set_determinism

from cover3d.data import StreamDataset, StreamSampler
from cover3d.engine.checkpoints import prune_checkpoints
from cover3d.engine import (
    CheckpointMismatchError,
    RunLock,
    RunLockedError,
    TrainingCheckpoints,
    list_checkpoints,
    require_bool,
)

EPOCH_LENGTH = 4


class Interrupt(RuntimeError):
    """Stands for a crash at a given iteration."""


def make_run(save_dir, epochs: int, resume: bool = True, width: int = 8, iteration_interval: int = 0, stop_at: int = 0):
    """A small real training run (SupervisedTrainer, AdamW, warm-up cosine schedule, seeded random transform on a
    stream of 5 samples); returns (trainer, network, lrs, images): ``lrs`` / ``images`` record the learning rate and
    a fingerprint of the batch of every iteration actually trained."""
    set_determinism(seed=0)
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.1)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=2, t_total=epochs * EPOCH_LENGTH)
    items = [{"image": torch.full((6,), float(i)), "label": torch.tensor([float(i % 2)])} for i in range(5)]
    stream = StreamDataset(Dataset(items, Compose([RandGaussianNoised("image", prob=1.0, std=0.5)])), seed=3)
    sampler = StreamSampler(batch_size=2)
    checkpoints = TrainingCheckpoints(save_dir, {"network": network, "optimizer": optimizer, "lr_scheduler": scheduler},
                                      resume=resume, iteration_interval=iteration_interval)  # fmt: skip
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, epoch_length=EPOCH_LENGTH, network=network, optimizer=optimizer,
        train_data_loader=DataLoader(stream, batch_size=2, sampler=sampler), loss_function=torch.nn.MSELoss(),
        train_handlers=[checkpoints, sampler, LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)],
    )  # fmt: skip
    lrs, images = [], []

    @trainer.on(Events.ITERATION_STARTED)
    def record(engine):
        lrs.append(optimizer.param_groups[0]["lr"])
        images.append(round(float(engine.state.batch["image"].sum()), 5))

    if stop_at:

        @trainer.on(Events.ITERATION_COMPLETED(once=stop_at))
        def crash(engine):
            raise Interrupt(f"crash at iteration {stop_at}")

    return trainer, network, lrs, images


def parameters(network) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in network.parameters()])


def test_resume_after_a_crash_continues_exactly(tmp_path):
    trainer, network, lrs, images = make_run(tmp_path / "ref", epochs=3)
    trainer.run()
    reference = parameters(network)

    first, _, lrs_a, images_a = make_run(tmp_path / "run", epochs=3, iteration_interval=2, stop_at=7)
    with pytest.raises(Interrupt):
        first.run()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint_4.pt", "checkpoint_6.pt"]  # keep 2
    second, resumed, lrs_b, images_b = make_run(tmp_path / "run", epochs=3, iteration_interval=2)
    second.run()
    # iteration 7 ran before the crash but after checkpoint_6, so it is trained again: at most one interval lost
    assert lrs_a[:6] + lrs_b == lrs and images_a[:6] + images_b == images
    assert len(set(images)) == len(images)  # the stream never repeats itself, within or across epochs
    torch.testing.assert_close(parameters(resumed), reference, rtol=0, atol=1e-6)


def test_pruning_spares_the_snapshot_iterations(tmp_path):
    """A long run keeps its snapshots (e.g. 2,800 / 5,000 iterations) while pruning the rolling checkpoints."""
    for iteration in (200, 400, 600, 800, 1000):
        torch.save({}, tmp_path / f"checkpoint_{iteration}.pt")
    deleted = prune_checkpoints(tmp_path, keep=2, keep_iterations=[400, 1000])
    assert sorted(p.name for p in deleted) == ["checkpoint_200.pt", "checkpoint_600.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_400.pt", "checkpoint_800.pt", "checkpoint_1000.pt"]


def test_more_epochs_extend_the_schedule_instead_of_restarting_it(tmp_path):
    longer, _, lrs_long, images_long = make_run(tmp_path / "ref", epochs=3)
    longer.run()
    short, _, lrs_short, _ = make_run(tmp_path / "run", epochs=1)
    short.run()
    extended, _, lrs_more, images_more = make_run(tmp_path / "run", epochs=3)
    extended.run()
    assert lrs_short == [0.0, 0.05, 0.1, pytest.approx(0.05)]  # one epoch: warm-up then the whole cosine
    # the resumed iterations follow the 3-epoch schedule exactly, where the old code restarted the warm-up
    assert lrs_more == lrs_long[EPOCH_LENGTH:] and lrs_more[0] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.2)))
    assert images_more == images_long[EPOCH_LENGTH:]


def test_fewer_epochs_than_done_is_refused_clearly(tmp_path):
    make_run(tmp_path, epochs=2)[0].run()
    with pytest.raises(CheckpointMismatchError, match=r"already trained 8 iterations \(2 epochs\).*raise --epochs"):
        make_run(tmp_path, epochs=1)


def test_a_finished_run_is_not_retrained(tmp_path):
    make_run(tmp_path, epochs=2)[0].run()
    trainer, network, lrs, _ = make_run(tmp_path, epochs=2)
    before = parameters(network)
    trainer.run()
    assert lrs == [] and torch.equal(parameters(network), before)


def test_fresh_start_moves_the_old_run_aside(tmp_path):
    make_run(tmp_path, epochs=3)[0].run()
    old = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path)}
    trainer, _, lrs, _ = make_run(tmp_path, epochs=1, resume=False)  # no "epoch count larger than max_epochs" error
    trainer.run()
    assert lrs[0] == 0.0 and len(lrs) == EPOCH_LENGTH  # trained from the beginning
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_4.pt"]  # only the new run's
    (aside,) = tmp_path.glob("previous_*")
    assert {p.name: p.read_bytes() for p in list_checkpoints(aside)} == old and (aside / "model.pt").is_file()
    # a later normal run resumes from the new run, not from the old run's higher-numbered checkpoint_12.pt
    trainer, _, lrs, _ = make_run(tmp_path, epochs=2)
    trainer.run()
    assert len(lrs) == EPOCH_LENGTH


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    make_run(tmp_path, epochs=2)[0].run()  # checkpoint_4 and checkpoint_8
    newest = tmp_path / "checkpoint_8.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (tmp_path / "checkpoint_12.pt").write_bytes(b"")  # empty
    (tmp_path / ".checkpoint_16.pt.abc123.tmp").write_bytes(b"partial")  # a write killed mid-way
    with caplog.at_level(logging.WARNING):
        trainer, _, lrs, _ = make_run(tmp_path, epochs=2)
    assert "checkpoint_12.pt is damaged" in caplog.text and "checkpoint_8.pt is damaged" in caplog.text
    assert "removed" in caplog.text and not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "checkpoint_8.pt.damaged").is_file()
    trainer.run()
    assert len(lrs) == EPOCH_LENGTH  # resumed from checkpoint_4: one epoch left


def test_changed_network_is_explained_in_one_line(tmp_path):
    make_run(tmp_path, epochs=1)[0].run()
    with pytest.raises(CheckpointMismatchError) as caught:
        make_run(tmp_path, epochs=2, width=16)
    message = str(caught.value)
    assert "\n" not in message and "'0.weight' is (8, 6) in the checkpoint but (16, 6) in this run" in message
    assert "--channels" in message and "--resume False" in message
    make_run(tmp_path, epochs=2, width=16, resume=False)[0].run()  # the refused run released its lock


def test_second_run_into_the_same_folder_is_refused(tmp_path):
    holder = RunLock(tmp_path)
    holder.acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}.*{tmp_path}"):
        make_run(tmp_path, epochs=1)
    holder.release()
    make_run(tmp_path, epochs=1)[0].run()  # free again


def test_lock_is_released_when_a_run_fails(tmp_path):
    trainer = make_run(tmp_path, epochs=1, stop_at=1)[0]
    with pytest.raises(Interrupt):
        trainer.run()
    make_run(tmp_path, epochs=1)[0].run()


@pytest.mark.parametrize("value", ["false", "False", 0, "no"])
def test_flags_must_be_real_booleans(value):
    with pytest.raises(ValueError, match="'resume' must be True or False"):
        require_bool(value, "resume")
    if value == "false":
        with pytest.raises(ValueError, match="write --resume False"):
            require_bool(value, "resume")


def test_stream_positions_split_across_ranks_cover_the_single_process_stream():
    items = [{"image": torch.zeros(1)} for _ in range(3)]
    stream = StreamDataset(Dataset(items, Compose([RandGaussianNoised("image", prob=1.0)])), seed=1)
    passes = [sorted(stream.volume_index(p) for p in range(k * 3, k * 3 + 3)) for k in range(4)]
    assert passes == [[0, 1, 2]] * 4  # every pass is a permutation
    assert [stream.volume_index(p) for p in range(3)] != [stream.volume_index(p) for p in range(3, 6)] or \
        [stream.volume_index(p) for p in range(6, 9)] != [stream.volume_index(p) for p in range(3, 6)]  # reshuffled
    torch.testing.assert_close(stream[5]["image"], stream[5]["image"])  # a position always gives the same sample
    assert not torch.equal(stream[5]["image"], stream[8]["image"])
    with pytest.raises(TypeError, match="Randomizable"):
        StreamDataset(items)



@pytest.mark.slow
def test_bundle_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    """A real ``kill -9`` of the cover_ct bundle mid-run, then the same command again: it resumes from the newest
    checkpoint and ends with the weights of an uninterrupted run."""
    config = Path(__file__).resolve().parents[1] / "bundles" / "cover_ct" / "train.json"
    settings = ["--epochs", "2", "--iterations_per_epoch", "6", "--checkpoint_interval", "1", "--batch_size", "1",
                "--validation_pairs", "1", "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]",
                "--channels", "[4,8,8,16,16]", "--groups", "[2,2,2,1,1]", "--learning_rate", "0.01"]  # fmt: skip

    def command(folder):
        return [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), *settings,
                "--ckpt_dir", str(folder / "models"), "--output_dir", str(folder / "runs")]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True, env=env)
    victim = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    killed = tmp_path / "killed" / "models"
    # no deadline: the wait ends at the 4th checkpoint (or a newer one, should a loaded machine delay this loop past
    # its pruning) or when the run itself ends
    while victim.poll() is None and max((int(p.stem.split("_")[1]) for p in list_checkpoints(killed)), default=0) < 4:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = max(int(p.stem.split("_")[1]) for p in list_checkpoints(killed))
    assert 4 <= done < 12  # killed mid-run
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]  # the lock died with the process
    assert f"checkpoint_{done}.pt: iteration {done} of 12" in resumed.stdout + resumed.stderr
    whole = torch.load(tmp_path / "whole" / "models" / "model.pt", weights_only=True)
    again = torch.load(tmp_path / "killed" / "models" / "model.pt", weights_only=True)
    for key in whole:
        torch.testing.assert_close(again[key], whole[key], rtol=0, atol=1e-5)
