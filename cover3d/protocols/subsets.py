"""Labelled subsets of a pool datalist: nested (the first n of one seeded shuffle), so that smaller subsets lie
inside larger ones and every mode of a protocol trains on the same volumes for a seed."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from cover3d.errors import InputFileNotFoundError, InputValueError

__all__ = ["nested_subset", "read_pool", "subset_sizes"]


def read_pool(path: str | Path, keys: Sequence[str]) -> list[dict]:
    """Entries of lists ``keys`` of datalist ``path`` (paths unchanged, relative to the dataset folder).

    Raises:
        InputFileNotFoundError: ``path`` does not exist.
        InputValueError: a list of ``keys`` is missing from the datalist.
    """
    if not Path(path).is_file():
        raise InputFileNotFoundError(f"--pool: datalist {path} not found")
    content = json.loads(Path(path).read_text())
    missing = [k for k in keys if not isinstance(content.get(k), list)]
    if missing:
        raise InputValueError(f"--pool-keys: datalist {path} has no list(s) {missing} (found: {sorted(content)})")
    return [entry for key in keys for entry in content[key]]


def subset_sizes(sizes: Sequence[str], pool_size: int, option: str = "--sizes") -> list[int]:
    """Sizes (integers or ``all`` = the whole pool; the values of ``option``), sorted and without repeats.

    Raises:
        InputValueError: a size is not an integer in ``[1, pool_size]`` or ``all``.
    """
    try:
        parsed = sorted({pool_size if s == "all" else int(s) for s in sizes})
    except ValueError:
        parsed = []
    if not parsed or parsed[0] < 1 or parsed[-1] > pool_size:
        raise InputValueError(f"{option} must be in [1, {pool_size}] (the pool size) or 'all', got {list(sizes)}")
    return parsed


def nested_subset(pool: Sequence[dict], size: int, seed: int) -> list[dict]:
    """The first ``size`` entries of the pool shuffled with ``seed`` (so smaller subsets are inside larger ones)."""
    return random.Random(seed).sample(list(pool), len(pool))[:size]
