"""Checks and defaults of bundle settings."""

from __future__ import annotations

import logging
import os

import torch

from cover3d.errors import InputValueError

__all__ = ["default_num_threads", "require_bool", "require_bools", "set_num_threads"]


def require_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool, else an :class:`~cover3d.errors.InputValueError` naming the setting. On the ``monai.bundle`` command line
    ``--flag false`` arrives as the (truthy) string ``'false'``: only ``--flag False`` / ``--flag True`` are bools."""
    if isinstance(value, bool):
        return value
    hint = f" (on the command line write --{name} {str(value).strip().capitalize()})" if str(value).strip().lower() in ("true", "false") else ""
    raise InputValueError(f"setting {name!r} must be True or False, got {value!r}{hint}")


def require_bools(**settings: object) -> None:
    """:func:`require_bool` for every keyword, e.g. ``require_bools(resume=@resume, amp=@amp)`` in a bundle's
    ``initialize`` list, so a wrong flag stops the run before anything is read or trained."""
    for name, value in settings.items():
        require_bool(value, name)


def default_num_threads() -> int:
    """Torch CPU threads for a bundle run: ``OMP_NUM_THREADS`` when set; else the cores this process may use, less
    those other processes keep busy (1-minute load average), split between the processes of a ``torchrun`` launch;
    at least 1. On a shared CPU, more threads than free cores makes every thread wait (measured: README
    "Threads")."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, (cores - min(busy, cores - 1)) // local_processes)


def set_num_threads(num_threads: int) -> None:
    """``torch.set_num_threads`` with a log line saying how many (bundles call it first in ``initialize``)."""
    torch.set_num_threads(int(num_threads))
    logging.getLogger(__name__).info(f"using {int(num_threads)} CPU thread(s) (--num_threads; default: free cores)")
