"""Atomic checkpoints and resumption for bundle training runs."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

__all__ = ["save_atomic", "write_json_atomic", "latest_checkpoint", "AtomicCheckpointSaver", "ResumeFromLatest"]

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)\.pt$")


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``: readers never see a
    partial file, and a failure leaves the previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    _write_atomic(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj: object, path: str | os.PathLike) -> None:
    """``json.dump(obj)`` (indented) to ``path`` atomically."""
    _write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def latest_checkpoint(save_dir: str | os.PathLike) -> Path | None:
    """Newest ``checkpoint_<epoch>.pt`` written by :class:`AtomicCheckpointSaver` in ``save_dir`` (None if none)."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob("checkpoint_*.pt") if (m := _CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


class AtomicCheckpointSaver:
    """Every ``save_interval`` epochs, atomically write ``checkpoint_<epoch>.pt`` (all of ``save_dict`` plus the
    attached engine's state under ``"trainer"``, keeping the newest ``n_saved``); at the end of training, atomically write ``final_filename`` holding the plain state dict
    of ``save_dict[final_key]`` (the weights users load). MONAI's ``CheckpointSaver`` writes non-atomically
    (``DiskSaver(atomic=False)``), so a crash mid-write could leave a corrupt checkpoint.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, object],
        save_interval: int = 1,
        n_saved: int = 1,
        final_filename: str | None = "model.pt",
        final_key: str = "network",
    ) -> None:
        if final_filename is not None and final_key not in save_dict:
            raise ValueError(f"final_key {final_key!r} is not in save_dict keys {sorted(save_dict)}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.final_filename = final_filename
        self.final_key = final_key

    def attach(self, engine: Engine) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = Checkpoint(
            {**self.save_dict, "trainer": engine},
            DiskSaver(str(self.save_dir), require_empty=False, atomic=True),
            filename_prefix="",
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), checkpoint)
        if self.final_filename is not None:
            engine.add_event_handler(Events.COMPLETED, self._save_final)

    def _save_final(self, engine: Engine) -> None:
        network = self.save_dict[self.final_key]
        network = getattr(network, "module", network)  # DDP / DataParallel: save without the "module." prefix
        path = self.save_dir / self.final_filename
        save_atomic(network.state_dict(), path)
        logger.info(f"final weights written to {path}")


class ResumeFromLatest:
    """At start, load the newest ``checkpoint_<epoch>.pt`` of ``save_dir`` into ``load_dict`` (network, optimizer,
    scheduler) and the attached engine (key ``"trainer"``) with MONAI's ``CheckpointLoader`` (``weights_only=True``); does nothing when there is none
    or ``enabled`` is False. MONAI's loader needs the file name at config time; this finds it at start."""

    def __init__(
        self,
        save_dir: str | os.PathLike,
        load_dict: Mapping[str, object],
        enabled: bool = True,
        map_location: str | torch.device | None = None,
    ) -> None:
        self.save_dir = save_dir
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        path = latest_checkpoint(self.save_dir) if self.enabled else None
        if path is None:
            return
        logger.info(f"resuming from {path}")
        load_dict = {**self.load_dict, "trainer": engine}
        CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=self.map_location).attach(engine)
