"""Checkpoint files of a training run: atomic writes, discovery, pruning, moving a previous run aside, one run per
folder."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
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
_TEMPORARY = ".tmp"


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``: readers never see a
    partial file, and a failure leaves the previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY)
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


def remove_orphan_temporaries(save_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that an atomic write killed mid-way left in ``save_dir`` (``.<name>.<random>.tmp``).
    Only safe while holding the folder's :class:`RunLock`."""
    orphans = [p for p in Path(save_dir).glob(f".*{_TEMPORARY}") if p.is_file()]
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def move_aside(save_dir: str | os.PathLike, names: list[str]) -> Path | None:
    """Move the checkpoints and the files called ``names`` of ``save_dir`` into a new
    ``save_dir/previous_<UTC time>/`` folder, so that a fresh run neither resumes from nor mixes with them.
    Returns the new folder (None when there was nothing to move)."""
    save_dir = Path(save_dir)
    files = list_checkpoints(save_dir) + [save_dir / n for n in names if (save_dir / n).is_file()]
    if not files:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = save_dir / f"previous_{stamp}"
    suffix = 1
    while target.exists():
        target, suffix = save_dir / f"previous_{stamp}_{suffix}", suffix + 1
    target.mkdir()
    for path in files:
        path.rename(target / path.name)
    return target


class RunLockedError(InputError, RuntimeError):
    """Another process is training into the same checkpoint folder (shown as one message)."""


class RunLock:
    """An exclusive ``flock`` on ``save_dir/.lock`` for the lifetime of a training run, so a second run started into
    the same folder is refused instead of overwriting (or deleting) the first one's checkpoints. The operating system
    releases the lock when the process ends, however it ends (``kill -9`` included): it can never go stale."""

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.path = Path(save_dir) / ".lock"
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
