"""Prepare once: run a bundle's own preprocessing on every training entry of its datalist, in worker processes, and
write each result into an on-disk store (:mod:`cover3d.data.store`) that ``--store DIR`` trains from.

The preprocessing is the bundle's: the steps of its ``train#cache#transform`` before the first random one (what
``CacheDataset`` would cache), built from the config with the same overrides as ``monai.bundle run``. Resumable: an
entry already in the store and whose source is unchanged is skipped, so rerunning a killed prepare finishes the rest.
A volume that fails is listed with its reason in the summary and the others go on. Nothing is written outside the
store, which may not lie inside the dataset folder.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import optional_import

from cover3d.data.store import (
    ENTRIES,
    StoreSettingsError,
    entry_id,
    prepare_command,
    read_entry_record,
    read_manifest,
    save_entry,
    settings_difference,
    source_changes,
    write_manifest,
)
from cover3d.data.store_dataset import first_random_index
from cover3d.errors import InputValueError, find_input_error

__all__ = ["PrepareSummary", "default_prepare_workers", "prepare_store"]

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

SETTINGS_KEY = "preprocessing_settings"  # the bundle config key holding the settings a store is checked against


@dataclass
class PrepareSummary:
    """What a prepare did: entries written now, entries already in the store, and failures ``(source, reason)``."""

    store: str
    prepared: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        ready = self.prepared + self.skipped
        head = (f"store {self.store}: {ready} entries ready ({self.prepared} prepared now, {self.skipped} already "
                f"there), {len(self.failed)} failed")
        return [head] + [f"  failed: {source}: {reason}" for source, reason in self.failed]


def default_prepare_workers() -> int:
    """Worker processes of a prepare: the cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


class _EntryWriter:
    """Preprocesses one datalist entry (the deterministic steps of ``transform``) and saves it; picklable."""

    def __init__(self, transform, end: int | None, store: str, root: str) -> None:
        self.transform, self.end, self.store, self.root = transform, end, store, root

    def __call__(self, item: Mapping) -> tuple[dict | None, str | None]:
        """``(record, None)`` or ``(None, reason)``."""
        try:
            out = self.transform(dict(item), end=self.end, threading=True)
            arrays = {k: v for k, v in out.items() if isinstance(v, (np.ndarray, torch.Tensor))}
            return save_entry(self.store, item, self.root, arrays), None
        except Exception as error:  # a bad volume is reported, the others go on
            return None, _reason(error)


def _reason(error: BaseException) -> str:
    """One line: the InputError in ``error``'s chain, else the innermost cause (MONAI wraps transform errors)."""
    found = find_input_error(error)
    if found is None:
        found = error
        while found.__cause__ is not None:
            found = found.__cause__
        return f"{type(found).__name__}: {' '.join(str(found).split())}"
    return " ".join(str(found).split())


_WRITER: _EntryWriter | None = None


def _start_worker(writer: _EntryWriter) -> None:
    global _WRITER
    torch.set_num_threads(1)  # one process per core
    _WRITER = writer


def _write_in_worker(item: Mapping) -> tuple[dict | None, str | None]:
    return _WRITER(item)


def _source(item: Mapping) -> str:
    return str(item.get("image", item))


def prepare_store(config_file: str | Sequence[str], store: str | os.PathLike, workers: int | None = None,
                  progress: bool = True, **override: object) -> PrepareSummary:
    """Prepare (or finish) ``store`` for the training datalist of the bundle config ``config_file`` (a file or a list
    of files, as ``monai.bundle run`` takes) with ``override`` (``{"dataset_dir": ..., "pixdim": [...]}``).

    Args:
        workers: worker processes (default :func:`default_prepare_workers`); 0 preprocesses in this process.
        progress: show a progress bar (tqdm, when installed).

    Returns:
        the :class:`PrepareSummary` (also printed).

    Raises:
        InputValueError: a bad setting (the bundle's own checks), a store inside the dataset folder, a store prepared
            with other settings, or, after every other entry is written, the count of entries that failed.
    """
    workers = default_prepare_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputValueError(f"--workers must be an integer >= 0 (0: in this process), got {workers!r}")
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update({"store": str(store), **override})
    if SETTINGS_KEY not in parser:
        raise InputValueError(f"--config_file {config_file} has no '{SETTINGS_KEY}': a store is prepared for a "
                              "pretraining bundle (bundles/cover_ct/train.json, bundles/cover_mri/train.json)")
    parser.get_parsed_content("checked_settings")  # the bundle's own checks of every setting
    root = os.path.abspath(parser.get_parsed_content("dataset_dir"))
    store = os.path.abspath(store)
    if os.path.commonpath([store, root]) == root:
        raise InputValueError(f"--store {store} lies inside the dataset folder {root}, which prepare never writes: "
                              "choose a folder outside it")
    settings = parser.get_parsed_content(SETTINGS_KEY)
    data = parser.get_parsed_content("train#datalist")
    transform = parser.get_parsed_content("train#cache#transform")
    command = prepare_command(store)
    if Path(store, "manifest.json").is_file():
        difference = settings_difference(read_manifest(store, command)["settings"], settings)
        if difference is not None:
            name, stored, wanted = difference
            raise StoreSettingsError(f"store {store} was prepared with {name} {stored!r}, this config has {name} "
                                  f"{wanted!r}: prepare into another --store folder (or delete this one)")
    entries = Path(store, ENTRIES)
    entries.mkdir(parents=True, exist_ok=True)
    for leftover in entries.glob(".*.tmp-*"):  # of a killed prepare
        leftover.unlink()
    summary = PrepareSummary(store)
    todo = []
    for item in data:
        record = read_entry_record(store, entry_id(item, root))
        if record is not None and not source_changes(record, item, root):
            summary.skipped += 1
        else:
            todo.append(item)
    write_manifest(store, settings, _all_records(store), complete=False)  # claims the settings before writing
    writer = _EntryWriter(transform, first_random_index(transform), store, root)
    failed = []
    bar = tqdm(total=len(todo), desc="prepare", unit="volume") if progress and has_tqdm and todo else None
    for item, (record, reason) in _run(writer, todo, workers):
        if record is None:
            failed.append({"id": entry_id(item, root), "source": _source(item), "reason": reason})
            summary.failed.append((_source(item), reason))
        else:
            summary.prepared += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    write_manifest(store, settings, _all_records(store), failed, complete=not failed)
    print("\n".join(summary.lines()), flush=True)
    if failed:
        raise InputValueError(f"{len(failed)} of {len(data)} entries failed (listed above; the others are in the "
                              f"store): fix or remove them from the datalist, then rerun: {command}")
    return summary


def _run(writer: _EntryWriter, items: list[Mapping], workers: int):
    """``(item, writer(item))`` for each item, as they finish: in this process (``workers`` 0) or in a pool of
    spawned processes (spawn, not fork: the parent may already run torch threads)."""
    if workers == 0 or not items:
        yield from ((item, writer(item)) for item in items)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(items)), mp_context=context,
                                                initializer=_start_worker, initargs=(writer,)) as pool:
        futures = {pool.submit(_write_in_worker, item): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()


def _all_records(store: str) -> list[dict]:
    """Every complete entry record in ``store`` (a store may serve several datalists with the same settings)."""
    records = (read_entry_record(store, p.stem) for p in Path(store, ENTRIES).glob("*.json"))
    return [r for r in records if r is not None]
