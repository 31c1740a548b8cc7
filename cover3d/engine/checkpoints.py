"""Checkpoint files of a training run: atomic writes, discovery, pruning, moving a previous run aside, one run per
folder, and what a run folder may hold.

Every temporary file cover3d writes is named ``.<name>.cover3d-<random>.tmp``, a name no other program writes, so a
start-up cleanup can delete the temporaries an interrupted write left behind without ever touching a user's files."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO

import torch

from cover3d.errors import InputError

__all__ = [
    "RunLock",
    "RunLockedError",
    "foreign_entries",
    "list_checkpoints",
    "latest_checkpoint",
    "checkpoint_path",
    "move_aside",
    "prune_checkpoints",
    "remove_orphan_temporaries",
    "save_atomic",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)\.pt$")
_DAMAGED = re.compile(r"^checkpoint_\d+\.pt\.damaged$")
_TEMPORARY_MARK, _TEMPORARY_SUFFIX = ".cover3d-", ".tmp"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.cover3d-[A-Za-z0-9_]+\.tmp$")
# how earlier cover3d versions named their temporaries (``.<name>.<8 random characters>.tmp``): recognised only for
# the names cover3d writes, so that a run resumed over an interrupted older run's folder can tidy it
_LEGACY_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_LOCK = ".lock"
_TENSORBOARD_EVENTS = "events.out.tfevents."
_PREVIOUS = "previous_"


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``: readers never see a
    partial file, and a failure leaves the previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TEMPORARY_MARK}", suffix=_TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
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


def checkpoint_path(save_dir: str | os.PathLike, iteration: int) -> Path:
    """``save_dir/checkpoint_<iteration>.pt``: checkpoints are named by the number of training iterations done."""
    return Path(save_dir) / f"checkpoint_{iteration}.pt"


def list_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint_<n>.pt`` files of ``save_dir``, oldest (smallest n) first."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob("checkpoint_*.pt") if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(save_dir: str | os.PathLike) -> Path | None:
    """Newest ``checkpoint_<n>.pt`` of ``save_dir`` (None if none)."""
    found = list_checkpoints(save_dir)
    return found[-1] if found else None


def prune_checkpoints(save_dir: str | os.PathLike, keep: int, keep_iterations: Collection[int] = ()) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints of ``save_dir``, sparing ``checkpoint_<i>.pt`` for every ``i``
    in ``keep_iterations`` (snapshots of a long run); returns the deleted paths."""
    spared = {checkpoint_path(save_dir, i) for i in keep_iterations}
    doomed = [p for p in (list_checkpoints(save_dir)[:-keep] if keep > 0 else []) if p not in spared]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def _is_checkpoint_file(name: str) -> bool:
    return bool(_CHECKPOINT.match(name) or _DAMAGED.match(name))


def _is_temporary(name: str, file_names: Collection[str]) -> bool:
    """Whether ``name`` is a temporary file of an atomic write by cover3d (of a file called one of ``file_names``,
    or of a checkpoint, for the legacy naming)."""
    if _TEMPORARY.match(name):
        return True
    legacy = _LEGACY_TEMPORARY.match(name)
    return legacy is not None and (legacy["name"] in file_names or _is_checkpoint_file(legacy["name"]))


def remove_orphan_temporaries(save_dir: str | os.PathLike, file_names: Collection[str] = ()) -> list[Path]:
    """Delete the temporary files that an atomic write killed mid-way left in ``save_dir``: only cover3d's own
    (``.<name>.cover3d-<random>.tmp``, and the older ``.<name>.<random>.tmp`` when ``name`` is a checkpoint or one of
    ``file_names``); any other file is left alone. Only safe while holding the folder's :class:`RunLock`."""
    orphans = [p for p in Path(save_dir).glob(".*.tmp") if p.is_file() and _is_temporary(p.name, file_names)]
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def foreign_entries(
    save_dir: str | os.PathLike, file_names: Collection[str], folder_names: Collection[str]
) -> list[str]:
    """Names in ``save_dir`` that a cover3d run did not write there, sorted (empty for a missing or empty folder).

    A run folder holds only ``checkpoint_<n>.pt`` (and ``checkpoint_<n>.pt.damaged``), ``.lock``, cover3d's
    temporaries, ``previous_*/`` folders of earlier runs, the files called ``file_names`` (e.g. ``model.pt``,
    ``metadata.json``) and the folders called ``folder_names`` (e.g. ``runs``, ``eval``)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    foreign = []
    for entry in save_dir.iterdir():
        name = entry.name
        if entry.is_dir() and not entry.is_symlink():
            known = name.startswith(_PREVIOUS) or name in folder_names
        else:
            known = name == _LOCK or name in file_names or _is_checkpoint_file(name) or _is_temporary(name, file_names)
        if not known:
            foreign.append(name + ("/" if entry.is_dir() else ""))
    return sorted(foreign)


def _earlier_event_files(log_dir: Path) -> list[Path] | None:
    """The TensorBoard event files in ``log_dir`` but this process's own (its writer is open already:
    ``events.out.tfevents.<time>.<host>.<pid>.<n>``); None when ``log_dir`` holds anything else."""
    files = [p for p in log_dir.rglob("*") if not p.is_dir()]
    if not all(p.name.startswith(_TENSORBOARD_EVENTS) for p in files):
        return None
    return [p for p in files if p.name.split(".")[-2] != str(os.getpid())]


def move_aside(
    save_dir: str | os.PathLike, outputs: Collection[str | os.PathLike], log_dir: str | os.PathLike | None = None
) -> Path | None:
    """Move an earlier run out of the way into a new ``save_dir/previous_<UTC time>/`` folder, so that a fresh run
    neither resumes from nor mixes with it: the checkpoints of ``save_dir`` (damaged ones included), the ``outputs``
    (files or folders, relative to ``save_dir`` or absolute, e.g. an evaluation folder; never ``save_dir`` or one
    of its parents) and the TensorBoard event files of ``log_dir`` (into ``previous_<time>/<log_dir name>/``; a
    ``log_dir`` holding other files is left in place with a warning). Returns the new folder (None when there was
    nothing to move)."""
    save_dir = Path(save_dir)
    inside = save_dir.resolve()
    paths = [p for p in save_dir.iterdir() if p.is_file() and _is_checkpoint_file(p.name)] if save_dir.is_dir() else []
    for output in outputs:
        path = save_dir / output
        if path.exists() and path.resolve() not in (inside, *inside.parents) and path not in paths:
            paths.append(path)
    events: list[Path] = []
    if log_dir is not None and Path(log_dir).is_dir():
        found = _earlier_event_files(Path(log_dir))
        if found is None:
            logger.warning(f"fresh start: {log_dir} holds files other than TensorBoard event files, left in place")
        events = found or []
    if not paths and not events:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = save_dir / f"{_PREVIOUS}{stamp}"
    suffix = 1
    while target.exists():
        target, suffix = save_dir / f"{_PREVIOUS}{stamp}_{suffix}", suffix + 1
    target.mkdir()
    for path in paths:
        destination, suffix = target / path.name, 1
        while destination.exists():  # two outputs of one name, e.g. <bundle>/eval and <ckpt_dir>/eval
            destination, suffix = target / f"{path.name}_{suffix}", suffix + 1
        shutil.move(path, destination)  # a rename, or a copy and delete across file systems
    for path in events:
        destination = target / Path(log_dir).name / path.relative_to(log_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, destination)
    return target


class RunLockedError(InputError, RuntimeError):
    """Another process is training into the same checkpoint folder (shown as one message)."""


class RunLock:
    """An exclusive ``flock`` on ``save_dir/.lock`` for the lifetime of a training run, so a second run started into
    the same folder is refused instead of overwriting (or deleting) the first one's checkpoints. The operating system
    releases the lock when the process ends, however it ends (``kill -9`` included): it can never go stale."""

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.path = Path(save_dir) / _LOCK
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(
                f"another training run (pid {owner}) is writing checkpoints into {self.path.parent}: wait for it to "
                "finish, or give this run its own folder (--bundle_root DIR, or --ckpt_dir DIR)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None
