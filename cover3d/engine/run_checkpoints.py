"""One handler that owns a training run's checkpoint folder: lock, fresh start or resume, periodic atomic saves."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from cover3d.engine.checkpoints import (
    RunLock,
    checkpoint_path,
    foreign_entries,
    list_checkpoints,
    move_aside,
    prune_checkpoints,
    remove_orphan_temporaries,
    save_atomic,
    write_json_atomic,
)
from cover3d.engine.settings import require_bool
from cover3d.errors import InputValueError
from cover3d.networks.weights import load_weights_only

__all__ = ["TrainingCheckpoints", "CheckpointMismatchError", "RunFolderError", "rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)
_SCHEDULER_COUNTERS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial", "lr_lambdas"}


class CheckpointMismatchError(InputValueError):
    """A checkpoint that does not fit the run's network, optimizer, schedule or training data, or no readable
    checkpoint at all (shown as one message)."""


class RunFolderError(InputValueError):
    """A checkpoint folder holding files that a cover3d run did not write (shown as one message)."""


def rng_state() -> dict[str, object]:
    """The global torch, numpy and Python random states as plain tensors / containers (``weights_only`` loadable)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},  # fmt: skip
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }


def set_rng_state(state: Mapping[str, object]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))


def _unwrap(obj: object) -> object:
    """The module inside a DDP / DataParallel wrapper (checkpoints hold no ``module.`` prefix, so single- and
    multi-process runs resume from each other's files)."""
    return getattr(obj, "module", obj) if isinstance(obj, torch.nn.Module) else obj


def _module_mismatch(name: str, module: torch.nn.Module, saved: Mapping[str, torch.Tensor]) -> str | None:
    """One line describing how ``saved`` does not fit ``module``'s state dict (None when it fits)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    for key, tensor in own.items():
        if key in saved and tuple(saved[key].shape) != tuple(tensor.shape):
            return f"{name} tensor {key!r} is {tuple(saved[key].shape)} in the checkpoint but {tuple(tensor.shape)} in this run"
    if missing or unexpected:
        first = (missing or unexpected)[0]
        return f"{name} has {len(missing)} tensor(s) the checkpoint lacks and it has {len(unexpected)} this run lacks (e.g. {first!r})"
    return None


def _load_scheduler(scheduler: LRScheduler, saved: Mapping[str, object]) -> str | None:
    """Load ``saved``'s position (step counters) into ``scheduler`` but keep the schedule this run configured (e.g. a
    longer ``t_total`` after raising ``--epochs``), so the run continues the schedule it is on now; the optimizer's
    learning rates are recomputed for that position. Returns a description of the changed settings (None if none)."""
    configured = scheduler.state_dict()
    changed = {k: v for k, v in configured.items() if k not in _SCHEDULER_COUNTERS and saved.get(k) != v}
    if changed and not isinstance(scheduler, LambdaLR):
        raise CheckpointMismatchError(
            f"the learning-rate schedule changed since the checkpoint ({', '.join(sorted(changed))}) and "
            f"{type(scheduler).__name__} cannot be recomputed at its saved position: keep the old settings or start over"
        )
    scheduler.load_state_dict({**saved, **changed})
    if not changed:
        return None
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr, base in zip(scheduler.optimizer.param_groups, lrs, scheduler.base_lrs):
        group["lr"], group["initial_lr"] = lr, base
    scheduler._last_lr = lrs
    return ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in sorted(changed.items()))


class TrainingCheckpoints:
    """Attach to a trainer to make its run resumable and its outputs safe. A run changes nothing but its own files:

    - before anything is written, ``save_dir`` must be new, empty or hold only what cover3d runs write there
      (``checkpoint_<n>.pt``, ``*.damaged``, ``.lock``, cover3d's ``.<name>.cover3d-<random>.tmp`` temporaries,
      ``previous_*/``, ``final_filename``, ``metadata_filename``, the ``run_outputs`` and ``runs/``, ``eval/``):
      a folder holding anything else (a data folder given as ``--ckpt_dir``) is refused with a one-line
      :class:`RunFolderError`;
    - takes an exclusive :class:`~cover3d.engine.checkpoints.RunLock` on ``save_dir`` (a second run into the same
      folder is refused with a clear message) and deletes the temporaries of cover3d's own interrupted writes;
    - ``resume=False``: moves the checkpoints (damaged ones included), ``final_filename``, ``metadata_filename``,
      the ``run_outputs`` (names in ``save_dir``, or paths such as the bundle's evaluation folder) and the earlier
      TensorBoard event files of ``log_dir`` (when it holds nothing else) of an earlier run into
      ``save_dir/previous_<time>/`` (a fresh start is really fresh: a later resume can never pick an old run's
      file, and the logs and evaluations of the old weights leave with them);
    - ``resume=True``: picks the newest readable ``checkpoint_<iteration>.pt`` (a damaged or unsafe newest file is
      renamed ``*.damaged`` with a warning and the previous one is used; when checkpoints exist but none is
      readable, a one-line :class:`CheckpointMismatchError`, nothing renamed), checks it fits (network shapes,
      epoch length, not past ``max_epochs``, same training data: one-line :class:`CheckpointMismatchError`
      otherwise) and loads every object of ``save_dict``; the schedule keeps this run's settings at the saved
      position (see ``_load_scheduler``). At ``STARTED`` it restores the engine's iteration/epoch, the AMP grad
      scaler and the global RNG states;
    - only then writes ``metadata`` (the weights' description, e.g. preprocessing and layout) to
      ``save_dir/metadata_filename``: a refused run leaves the earlier run's metadata as it was.

    ``data_fingerprint`` identifies the training data (see :func:`cover3d.data.datalist_fingerprint`); it is stored
    in every checkpoint and a resume whose fingerprint differs is refused. Checkpoints written before fingerprints
    existed hold none: they are resumed with a warning naming the file.

    While training it writes ``checkpoint_<iteration>.pt`` atomically every ``epoch_interval`` epochs and every
    ``iteration_interval`` iterations (0: off), keeping the newest ``keep`` (>= 2, so a damaged newest file has a
    fallback) and those at the iterations in ``keep_iterations`` (snapshots of a long run), and at the end
    ``final_filename``: the plain state dict of ``save_dict[final_key]`` (the weights users load; no ``module.``
    prefix). In a distributed run only rank 0 writes; every rank loads.

    Written instead of MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` because they write non-atomically, keep no
    fallback, find the file only at config time and restore the checkpoint's schedule over the configured one.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, object],
        resume: bool = True,
        epoch_interval: int = 1,
        iteration_interval: int = 0,
        keep: int = 2,
        keep_iterations: Sequence[int] = (),
        final_filename: str | None = "model.pt",
        final_key: str = "network",
        run_outputs: Sequence[str | os.PathLike] = (),
        map_location: str | torch.device | None = None,
        metadata: Mapping[str, object] | None = None,
        metadata_filename: str = "metadata.json",
        data_fingerprint: str | None = None,
        log_dir: str | os.PathLike | None = None,
    ) -> None:
        if final_filename is not None and final_key not in save_dict:
            raise ValueError(f"final_key {final_key!r} is not in save_dict keys {sorted(save_dict)}")
        if keep < 2:
            raise ValueError(f"keep must be >= 2 (a damaged newest checkpoint needs a previous one), got {keep}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.resume = require_bool(resume, "resume")
        self.epoch_interval = epoch_interval
        self.iteration_interval = iteration_interval
        self.keep = keep
        self.keep_iterations = tuple(int(i) for i in keep_iterations)
        self.final_filename = final_filename
        self.final_key = final_key
        self.metadata = metadata
        self.metadata_filename = metadata_filename
        self.data_fingerprint = data_fingerprint
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.run_outputs = [*run_outputs, metadata_filename, *([final_filename] if final_filename else [])]
        self.map_location = map_location
        self.lock = RunLock(self.save_dir)
        self.loaded: Path | None = None
        self._saved: dict | None = None
        self._last_saved_iteration = -1

    @property
    def is_writer(self) -> bool:
        return idist.get_rank() == 0

    def attach(self, engine: Engine) -> None:
        self._refuse_foreign_folder()
        if self.is_writer:
            self.lock.acquire()
        try:
            self._prepare_folder(engine)
        except BaseException:
            self.lock.release()
            raise
        engine.add_event_handler(Events.STARTED, self._resume_engine)
        engine.add_event_handler(Events.STARTED, self._register_saves)
        engine.add_event_handler(Events.COMPLETED, self._complete)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _own_names(self) -> tuple[set[str], set[str]]:
        """(file names, folder names) that cover3d runs write directly into ``save_dir``."""
        files = {Path(o).name for o in self.run_outputs if not Path(o).is_absolute()}
        outputs = [*self.run_outputs, *([self.log_dir] if self.log_dir is not None else [])]
        inside = self.save_dir.resolve()
        folders = {"runs", "eval"} | {Path(o).name for o in outputs if (self.save_dir / o).resolve().parent == inside}
        return files, folders

    def _refuse_foreign_folder(self) -> None:
        if self.save_dir.exists() and not self.save_dir.is_dir():
            raise RunFolderError(f"--ckpt_dir {self.save_dir} is a file: give the run a folder (a new or empty one)")
        foreign = foreign_entries(self.save_dir, *self._own_names())
        if foreign:
            shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
            raise RunFolderError(
                f"--ckpt_dir {self.save_dir} holds files a cover3d run did not write ({shown}): a run writes its "
                "checkpoints, weights and logs there and moves or deletes its own files, so give it a new or empty "
                "folder (e.g. --ckpt_dir DIR/models)"
            )

    def _prepare_folder(self, engine: Engine) -> None:
        if self.is_writer:
            for orphan in remove_orphan_temporaries(self.save_dir, self._own_names()[0]):
                logger.warning(f"removed {orphan}, left behind by an interrupted write")
            if not self.resume and (moved := move_aside(self.save_dir, self.run_outputs, self.log_dir)) is not None:
                logger.warning(f"fresh start (resume False): the previous run's checkpoints, weights, metadata and "
                               f"logs were moved to {moved}")  # fmt: skip
        if idist.get_world_size() > 1:
            idist.barrier()  # the other ranks look for checkpoints only after rank 0 has tidied the folder
        if self.resume:
            self._resume_objects(engine)
        if self.is_writer and self.metadata is not None:
            write_json_atomic(self.metadata, self.save_dir / self.metadata_filename)

    def _read_newest(self) -> tuple[Path, dict] | None:
        """The newest readable checkpoint (None when there is none at all). Unreadable newer ones are renamed
        ``*.damaged`` only once a readable one is found; if none is, nothing is renamed and the run is refused."""
        unreadable: list[tuple[Path, str]] = []
        for path in reversed(list_checkpoints(self.save_dir)):
            try:
                found = path, load_weights_only(path, map_location=self.map_location)
            except ValueError as error:  # truncated, empty, not a zip, or holding pickled objects (refused unread)
                logger.warning(f"checkpoint {path} is damaged or unsafe ({error}); falling back to the previous one")
                unreadable.append((path, str(error)))
                continue
            if self.is_writer:
                for bad, _ in unreadable:
                    bad.rename(bad.with_name(bad.name + ".damaged"))
            return found
        if unreadable:
            raise CheckpointMismatchError(
                f"no readable checkpoint in {self.save_dir}: all {len(unreadable)} are damaged or unsafe (newest: "
                f"{unreadable[0][1]}); start over with --resume False (they are moved aside), or use another --ckpt_dir"
            )
        return None

    def _resume_objects(self, engine: Engine) -> None:
        found = self._read_newest()
        if found is None:
            return
        path, saved = found
        self._check_fits(path, saved, engine)
        schedule_note = None
        for key, obj in self.save_dict.items():
            if key not in saved:
                raise CheckpointMismatchError(f"{path} has no {key!r} (it holds {sorted(saved)}): it was written by another kind of run")
            if isinstance(obj, LRScheduler):
                schedule_note = _load_scheduler(obj, saved[key])
            else:
                try:
                    _unwrap(obj).load_state_dict(saved[key])
                except (ValueError, KeyError, RuntimeError) as error:
                    raise CheckpointMismatchError(f"{path} does not fit this run's {key}: {str(error).splitlines()[0]}") from None
        self.loaded, self._saved = path, saved
        self._set_engine_state(engine)  # before run(), so ignite announces the right starting point
        done = saved["trainer"]["iteration"]
        logger.info(f"resuming from {path}: iteration {done} of {engine.state.max_epochs * engine.state.epoch_length}")
        if schedule_note:
            logger.info(f"learning-rate schedule settings differ from the checkpoint's ({schedule_note}): continuing on this run's schedule")

    def _check_fits(self, path: Path, saved: Mapping, engine: Engine) -> None:
        start_over = "start over with --resume False (the old checkpoints are moved aside) or use another --ckpt_dir"
        if self.data_fingerprint is not None:
            saved_data = saved.get("data_fingerprint")
            if saved_data is None:
                logger.warning(f"{path} records no training-data fingerprint (written by an older cover3d): resuming "
                               "without checking that this run trains on the same data")  # fmt: skip
            elif saved_data != self.data_fingerprint:
                raise CheckpointMismatchError(
                    f"{path} was trained on other data ({saved_data}; this run: {self.data_fingerprint}): resume with "
                    f"that run's --dataset_dir and --datalist, or {start_over}"
                )
        for key, obj in self.save_dict.items():
            if isinstance(obj, torch.nn.Module) and key in saved:
                if (problem := _module_mismatch(key, _unwrap(obj), saved[key])) is not None:
                    raise CheckpointMismatchError(
                        f"{path} was written with other network settings: {problem} (were --channels or other network "
                        f"settings changed?). Continue with the checkpoint's settings, or {start_over}"
                    )
        state = saved.get("trainer", {})
        if state.get("epoch_length") != engine.state.epoch_length:
            raise CheckpointMismatchError(
                f"{path} was written with {state.get('epoch_length')} iterations per epoch, this run has "
                f"{engine.state.epoch_length}: keep --iterations_per_epoch {state.get('epoch_length')}, or {start_over}"
            )
        done, total = state.get("iteration", 0), engine.state.max_epochs * engine.state.epoch_length
        if done > total:
            raise CheckpointMismatchError(
                f"{path} has already trained {done} iterations ({done // engine.state.epoch_length} epochs), more than "
                f"this run's {engine.state.max_epochs} epochs: raise --epochs, or {start_over}"
            )

    def _set_engine_state(self, engine: Engine) -> None:
        """Iteration / epoch from the checkpoint, ``max_epochs`` from this run."""
        trainer = {k: v for k, v in self._saved["trainer"].items() if k not in ("max_epochs", "max_iters")}
        engine.load_state_dict({**trainer, "max_epochs": engine.state.max_epochs})

    def _resume_engine(self, engine: Engine) -> None:
        if self._saved is None:
            return
        max_epochs = engine.state.max_epochs
        if engine.state.iteration != self._saved["trainer"]["iteration"]:  # ignite restarts a finished run's state
            self._set_engine_state(engine)
        saved, self._saved = self._saved, None
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        if "rng" in saved:
            set_rng_state(saved["rng"])
        self._last_saved_iteration = engine.state.iteration
        if engine.state.iteration >= max_epochs * engine.state.epoch_length:
            logger.info(f"{self.loaded} has finished all {max_epochs} epochs: nothing left to train (raise --epochs to continue)")

    def _register_saves(self, engine: Engine) -> None:
        """Register the periodic saves once every other handler is attached, so a checkpoint is written after them
        (after the iteration's scheduler step, after the epoch's validation) and holds a consistent state."""
        if not engine.has_event_handler(self.save):
            if self.epoch_interval:
                engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.save)
            if self.iteration_interval:
                engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self.save)

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint_<iteration>.pt`` now (rank 0), then keep the newest ``keep``."""
        iteration = engine.state.iteration
        if not self.is_writer or iteration == self._last_saved_iteration:
            return
        state = {key: _unwrap(obj).state_dict() for key, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        if getattr(engine, "scaler", None) is not None:
            state["scaler"] = engine.scaler.state_dict()
        state["rng"] = rng_state()
        if self.data_fingerprint is not None:
            state["data_fingerprint"] = self.data_fingerprint
        save_atomic(state, checkpoint_path(self.save_dir, iteration))
        self._last_saved_iteration = iteration
        prune_checkpoints(self.save_dir, self.keep, self.keep_iterations)

    def _complete(self, engine: Engine) -> None:
        if self.is_writer and self.final_filename is not None:
            path = self.save_dir / self.final_filename
            save_atomic(_unwrap(self.save_dict[self.final_key]).state_dict(), path)
            logger.info(f"final weights written to {path}")
        self.lock.release()

    def _failed(self, engine: Engine, error: BaseException) -> None:
        self.lock.release()
        raise error
