"""Run checkpoints: exact resume (schedule, optimizer, data stream), fresh starts, damaged files, locks, mismatches."""

from __future__ import annotations

import json
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

from cover3d.data import StreamDataset, StreamSampler, datalist_fingerprint
from cover3d.engine import (
    CheckpointMismatchError,
    RunFolderError,
    RunLock,
    RunLockedError,
    TrainingCheckpoints,
    list_checkpoints,
    require_bool,
)
from cover3d.engine.checkpoints import prune_checkpoints, remove_orphan_temporaries, save_atomic
from python_command import run_module

EPOCH_LENGTH = 4


class Interrupt(RuntimeError):
    """Stands for a crash at a given iteration."""


def make_run(save_dir, epochs: int, resume: bool = True, width: int = 8, iteration_interval: int = 0, stop_at: int = 0,
             **checkpoint_settings):
    """A small real training run (SupervisedTrainer, AdamW, warm-up cosine schedule, seeded random transform on a
    stream of 5 samples); returns (trainer, network, lrs, images): ``lrs`` / ``images`` record the learning rate and
    a fingerprint of the batch of every iteration actually trained. ``checkpoint_settings`` go to
    :class:`TrainingCheckpoints` (metadata, data_fingerprint, run_outputs, log_dir)."""
    set_determinism(seed=0)
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.1)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=2, t_total=epochs * EPOCH_LENGTH)
    items = [{"image": torch.full((6,), float(i)), "label": torch.tensor([float(i % 2)])} for i in range(5)]
    stream = StreamDataset(Dataset(items, Compose([RandGaussianNoised("image", prob=1.0, std=0.5)])), seed=3)
    sampler = StreamSampler(batch_size=2)
    checkpoints = TrainingCheckpoints(save_dir, {"network": network, "optimizer": optimizer, "lr_scheduler": scheduler},
                                      resume=resume, iteration_interval=iteration_interval, **checkpoint_settings)  # fmt: skip
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
    (tmp_path / ".checkpoint_16.pt.cover3d-abc123.tmp").write_bytes(b"partial")  # a write killed mid-way
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



def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> content)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_metadata_is_written_only_after_the_lock_and_the_fit_check(tmp_path):
    make_run(tmp_path, epochs=1, metadata={"patch_size": 32})[0].run()
    first = (tmp_path / "metadata.json").read_bytes()
    assert json.loads(first) == {"patch_size": 32}
    holder = RunLock(tmp_path)  # a run still training there
    holder.acquire()
    with pytest.raises(RunLockedError):
        make_run(tmp_path, epochs=2, metadata={"patch_size": 48})
    holder.release()
    with pytest.raises(CheckpointMismatchError, match="other network settings"):
        make_run(tmp_path, epochs=2, width=16, metadata={"channels": [4, 64]})
    assert (tmp_path / "metadata.json").read_bytes() == first  # neither refused run touched the first run's metadata
    make_run(tmp_path, epochs=2, metadata={"patch_size": 32, "resumed": True})[0].run()
    assert json.loads((tmp_path / "metadata.json").read_text()) == {"patch_size": 32, "resumed": True}


def test_bundles_write_metadata_through_the_checkpoint_handler_only():
    """``initialize`` runs before the handler takes the lock: it must not write into the checkpoint folder."""
    bundles = Path(__file__).resolve().parents[1] / "bundles"
    for name in ("cover_ct", "cover_mri", "cover_seg"):
        for config in ("train.json", "multi_gpu_train.json"):
            content = json.loads((bundles / name / config).read_text())
            writes = [step for step in content["initialize"] if "@ckpt_dir" in step or "write_json" in step]
            assert not writes, (name, config)
        train = json.loads((bundles / name / "train.json").read_text())["train"]
        (handler,) = [h for h in train["every_rank_handlers"] if isinstance(h, dict) and "TrainingCheckpoints" in h["_target_"]]
        assert handler["data_fingerprint"] == "$cd.datalist_fingerprint(@train#datalist, @dataset_dir)"
        assert handler["log_dir"] == "@output_dir" and "$os.path.join(@bundle_root, 'eval')" in handler["run_outputs"]
        assert handler.get("metadata") == (None if name == "cover_seg" else "@weights_metadata")


def test_fresh_start_moves_metadata_logs_and_evaluations_aside(tmp_path):
    models, runs, evaluations = tmp_path / "models", tmp_path / "runs", tmp_path / "eval"
    settings = {"metadata": {"run": 1}, "log_dir": runs, "run_outputs": [evaluations]}
    make_run(models, epochs=1, **settings)[0].run()
    runs.mkdir()
    (runs / "events.out.tfevents.1.host.1.0").write_bytes(b"old curves")
    evaluations.mkdir()
    (evaluations / "field_accuracy.json").write_text("{}")
    old = {"models": folder_state(models), "runs": folder_state(runs), "eval": folder_state(evaluations)}
    own = runs / f"events.out.tfevents.2.host.{os.getpid()}.0"  # this run's TensorBoard writer: open already
    own.write_bytes(b"new curves")
    make_run(models, epochs=1, resume=False, **{**settings, "metadata": {"run": 2}})[0].run()
    (aside,) = models.glob("previous_*")
    assert folder_state(aside / "runs") == old["runs"] and folder_state(aside / "eval") == old["eval"]
    moved = {k: v for k, v in old["models"].items() if k != ".lock"}
    assert {k: v for k, v in folder_state(aside).items() if "/" not in k} == moved  # metadata.json included
    assert json.loads((models / "metadata.json").read_text()) == {"run": 2} and not evaluations.exists()
    assert folder_state(runs) == {own.name: b"new curves"}


def test_fresh_start_leaves_a_log_folder_holding_other_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    make_run(tmp_path / "models", epochs=1, log_dir=mine)[0].run()
    make_run(tmp_path / "models", epochs=1, resume=False, log_dir=mine)[0].run()
    assert folder_state(mine) == {"notes.txt": b"the user's"}


def test_cleanup_removes_only_cover3d_temporaries(tmp_path):
    users = {".notes.tmp": b"mine", ".good.nii.gz.partial.tmp": b"half a download", ".x.abcdefgh.tmp": b"other tool"}
    for name, content in users.items():
        (tmp_path / name).write_bytes(content)
    save_atomic({"w": torch.ones(1)}, tmp_path / "model.pt")
    assert not list(tmp_path.glob("*cover3d*"))  # a successful write leaves no temporary
    ours = [".model.pt.cover3d-k2j4_x9q.tmp", ".checkpoint_8.pt.cover3d-abc.tmp", ".checkpoint_4.pt.ab12cd_z.tmp"]
    for name in ours:
        (tmp_path / name).write_bytes(b"partial")
    removed = remove_orphan_temporaries(tmp_path, file_names=["model.pt"])
    assert sorted(p.name for p in removed) == sorted(ours)
    assert {n: (tmp_path / n).read_bytes() for n in users} == users


def test_a_folder_holding_other_files_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("scan.nii.gz", ".notes.tmp", ".good.nii.gz.partial.tmp"):
        (data / name).write_bytes(b"the user's")
    before = folder_state(data)
    with pytest.raises(RunFolderError) as caught:
        make_run(data, epochs=1, metadata={"patch_size": 32})
    message = str(caught.value)
    assert "\n" not in message and f"--ckpt_dir {data} holds files" in message
    assert ".good.nii.gz.partial.tmp, .notes.tmp, scan.nii.gz" in message and "new or empty folder" in message
    assert folder_state(data) == before and not (data / ".lock").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is a file"):
        make_run(tmp_path / "file", epochs=1)
    # what a run leaves (checkpoints, weights, metadata, damaged files, logs, earlier runs) is accepted again
    run = tmp_path / "run"
    make_run(run, epochs=1, metadata={}, run_outputs=["eval"], log_dir=run / "runs")[0].run()
    for folder in ("runs", "eval", "previous_20260101-000000"):
        (run / folder).mkdir()
    (run / "checkpoint_2.pt.damaged").write_bytes(b"")
    make_run(run, epochs=2, metadata={}, run_outputs=["eval"], log_dir=run / "runs")[0].run()


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
    make_run(tmp_path, epochs=2)[0].run()  # checkpoint_4 and checkpoint_8
    for path in list_checkpoints(tmp_path):
        path.write_bytes(path.read_bytes()[:100])
    before = folder_state(tmp_path)
    with pytest.raises(CheckpointMismatchError) as caught:
        make_run(tmp_path, epochs=3)
    message = str(caught.value)
    assert "\n" not in message and f"no readable checkpoint in {tmp_path}: all 2 are damaged" in message
    assert "checkpoint_8.pt" in message and "--resume False" in message
    assert folder_state(tmp_path) == before  # nothing renamed: the same command fails the same way again
    trainer, _, lrs, _ = make_run(tmp_path, epochs=1, resume=False)
    trainer.run()
    assert len(lrs) == EPOCH_LENGTH and len(list(next(tmp_path.glob("previous_*")).glob("checkpoint_*.pt"))) == 2


def test_an_unsafe_checkpoint_is_refused_unread(tmp_path):
    marker = tmp_path / "executed"
    make_run(tmp_path / "run", epochs=1)[0].run()
    (planted := tmp_path / "run" / "checkpoint_4.pt").unlink()
    torch.save({"network": RunsCode(marker)}, planted)  # the only checkpoint: a code-executing pickle
    with pytest.raises(CheckpointMismatchError, match=r"no readable checkpoint.*global posix\.system"):
        make_run(tmp_path / "run", epochs=2)
    assert not marker.exists()


class RunsCode:
    """Unpickling this creates ``marker`` through ``os.system``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_resume_over_other_training_data_is_refused(tmp_path, caplog):
    make_run(tmp_path, epochs=1, data_fingerprint="3 entries, sha256 aaaa")[0].run()
    with pytest.raises(CheckpointMismatchError) as caught:
        make_run(tmp_path, epochs=2, data_fingerprint="5 entries, sha256 bbbb")
    message = str(caught.value)
    assert "\n" not in message and "checkpoint_4.pt was trained on other data (3 entries, sha256 aaaa; this run: 5" in message
    assert "--dataset_dir and --datalist" in message and "--resume False" in message
    make_run(tmp_path, epochs=2, data_fingerprint="3 entries, sha256 aaaa")[0].run()  # the same data resumes


def test_checkpoints_without_a_fingerprint_resume_with_a_warning(tmp_path, caplog):
    make_run(tmp_path, epochs=1)[0].run()  # as written before fingerprints existed
    with caplog.at_level(logging.WARNING):
        trainer, _, lrs, _ = make_run(tmp_path, epochs=2, data_fingerprint="3 entries, sha256 aaaa")
    assert f"{tmp_path / 'checkpoint_4.pt'} records no training-data fingerprint" in caplog.text
    trainer.run()
    assert len(lrs) == EPOCH_LENGTH
    assert torch.load(tmp_path / "checkpoint_8.pt", weights_only=True)["data_fingerprint"] == "3 entries, sha256 aaaa"


def test_datalist_fingerprint_follows_the_files_not_the_folder(tmp_path):
    def dataset(folder, sizes):
        folder.mkdir(parents=True)
        for name, size in sizes.items():
            (folder / name).write_bytes(b"x" * size)
        return [{"image": str(folder / name), "group": 1} for name in sizes]

    a = dataset(tmp_path / "a", {"v1.nii.gz": 10, "v2.nii.gz": 20})
    moved = dataset(tmp_path / "elsewhere" / "a", {"v2.nii.gz": 20, "v1.nii.gz": 10})
    other = dataset(tmp_path / "b", {"v1.nii.gz": 10, "v2.nii.gz": 21})  # same names, one file differs in size
    fingerprint = datalist_fingerprint(a, tmp_path / "a")
    assert fingerprint.startswith("2 entries, sha256 ")
    assert fingerprint == datalist_fingerprint(moved, tmp_path / "elsewhere" / "a")
    assert datalist_fingerprint(other, tmp_path / "b") != fingerprint
    assert datalist_fingerprint(a[:1], tmp_path / "a") != fingerprint
    assert datalist_fingerprint([{**a[0], "group": 2}, a[1]], tmp_path / "a") != fingerprint


@pytest.mark.slow
def test_bundle_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    """A real ``kill -9`` of the cover_ct bundle mid-run, then the same command again: it resumes from the newest
    checkpoint and ends with the weights of an uninterrupted run."""
    config = Path(__file__).resolve().parents[1] / "bundles" / "cover_ct" / "train.json"
    settings = ["--epochs", "2", "--iterations_per_epoch", "6", "--checkpoint_interval", "1", "--batch_size", "1",
                "--validation_pairs", "1", "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]",
                "--channels", "[4,8,8,16,16]", "--groups", "[2,2,2,1,1]", "--learning_rate", "0.01"]  # fmt: skip

    def arguments(folder):
        return ["run", "--config_file", str(config), *settings, "--ckpt_dir", str(folder / "models"),
                "--output_dir", str(folder / "runs")]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = run_module("monai.bundle", arguments(tmp_path / "whole"), cwd=tmp_path, env=env)
    assert whole.returncode == 0, (whole.stdout + whole.stderr)[-3000:]
    victim = subprocess.Popen([sys.executable, "-m", "monai.bundle", *arguments(tmp_path / "killed")],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    killed = tmp_path / "killed" / "models"
    # no deadline: the wait ends at the 4th checkpoint (or a newer one, should a loaded machine delay this loop past
    # its pruning) or when the run itself ends
    while victim.poll() is None and max((int(p.stem.split("_")[1]) for p in list_checkpoints(killed)), default=0) < 4:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = max(int(p.stem.split("_")[1]) for p in list_checkpoints(killed))
    assert 4 <= done < 12  # killed mid-run
    resumed = run_module("monai.bundle", arguments(tmp_path / "killed"), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]  # the lock died with the process
    assert f"checkpoint_{done}.pt: iteration {done} of 12" in resumed.stdout + resumed.stderr
    whole = torch.load(tmp_path / "whole" / "models" / "model.pt", weights_only=True)
    again = torch.load(tmp_path / "killed" / "models" / "model.pt", weights_only=True)
    for key in whole:
        torch.testing.assert_close(again[key], whole[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_refused_bundle_runs_leave_the_first_runs_folder_unchanged(tmp_path):
    """The cover_ct bundle for real: a run over another datalist (and with other --channels) is refused in one last
    line, and the first run's metadata.json (written by the bundle) is left as it was."""
    repo = Path(__file__).resolve().parents[1]
    settings = ["--epochs", "1", "--iterations_per_epoch", "2", "--batch_size", "1", "--validation_pairs", "1",
                "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]", "--groups", "[2,2,2,1,1]",
                "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def bundle(*extra):
        config = str(repo / "bundles" / "cover_ct" / "train.json")
        return run_module("monai.bundle", ["run", "--config_file", config, *settings, *extra], cwd=tmp_path, env=env)

    first = bundle("--channels", "[4,8,8,16,16]")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    metadata = (tmp_path / "models" / "metadata.json").read_bytes()
    assert json.loads(metadata)["pretraining"]["backbone_channels"] == [4, 8, 8, 16, 16]
    checkpoint = torch.load(tmp_path / "models" / "checkpoint_2.pt", weights_only=True)
    assert checkpoint["data_fingerprint"].startswith("3 entries, sha256 ")

    fewer = tmp_path / "two_volumes.json"
    sample = json.loads((repo / "data_lists" / "sample_ct.json").read_text())
    fewer.write_text(json.dumps({**sample, "training": sample["training"][:2]}))
    refused = bundle("--channels", "[8,8,16,16,16]", "--datalist", str(fewer))  # other data and other settings
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and "was trained on other data (3 entries" in last and "--datalist" in last
    assert (tmp_path / "models" / "metadata.json").read_bytes() == metadata
