"""On-disk store of preprocessed volumes: one ``.npy`` file per volume and key, read back as memory maps.

Layout of a store folder (written by ``python -m cover3d.prepare``, read by :class:`~cover3d.data.StoreDataset`)::

    manifest.json               {"format", "version", "settings", "entries": [record, ...], "failed": [...], "complete"}
    entries/<id>.json           the record of one datalist entry, written after its arrays
    entries/<id>.<key>.npy      the preprocessed array of ``key`` (e.g. ``image``: float32 (C, X, Y, Z))

An entry's ``<id>`` is derived from its datalist paths relative to the dataset folder (so the dataset folder may be
moved or mounted elsewhere). A record holds, per source key, the source path, size (bytes) and modification time
(ns), and per stored key the file, shape, dtype, voxel spacing (mm), affine and intensity statistics; the manifest's
``settings`` are the preprocessing settings of the bundle that prepared the store (e.g. ``pixdim``, ``hu_window``,
``in_channels``). Every file is written atomically (temporary file + ``os.replace``): a killed prepare leaves
complete entries only. Uncompressed ``.npy`` was chosen by measurement (docs/performance.md "On-disk store").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from monai.utils import ensure_tuple

from cover3d.data.datalists import PATH_KEYS
from cover3d.errors import InputFileNotFoundError, InputValueError

__all__ = [
    "MANIFEST",
    "STORE_FORMAT",
    "STORE_VERSION",
    "StoreIncompleteError",
    "StoreOutdatedError",
    "StoreSettingsError",
    "entry_id",
    "entry_record",
    "open_store",
    "prepare_command",
    "read_entry_record",
    "read_manifest",
    "save_entry",
    "settings_difference",
    "source_changes",
    "source_signature",
    "write_manifest",
]

STORE_FORMAT = "cover3d-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
ENTRIES = "entries"


class StoreIncompleteError(InputFileNotFoundError):
    """The store is missing, or lacks entries the run needs; the message names the prepare command that finishes it."""


class StoreSettingsError(InputValueError):
    """The store was prepared with other preprocessing settings than the run's; the message names one and both values."""


class StoreOutdatedError(InputValueError):
    """A source volume changed (size or modification time) since the store was prepared."""


def prepare_command(store: str | os.PathLike, config_file: str = "bundles/<bundle>/train.json",
                    argv: Sequence[str] | None = None) -> str:
    """The ``python -m cover3d.prepare`` command that prepares (or finishes) ``store``: the arguments of the running
    ``monai.bundle run`` / ``cover3d.prepare`` command when there is one (prepare accepts the same overrides),
    else ``--config_file <config_file> --store <store>``."""
    argv = list(sys.argv if argv is None else argv)
    if "--config_file" in " ".join(argv):
        args = argv[2:] if len(argv) > 1 and argv[1] == "run" else argv[1:]
        if not any(a == "--store" or a.startswith("--store=") for a in args):
            args += ["--store", str(store)]
        return "python -m cover3d.prepare " + shlex.join(args)
    return f"python -m cover3d.prepare --config_file {config_file} --store {shlex.quote(str(store))}"


def _relative(path: str, root: str | os.PathLike) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def _source_paths(item: Mapping) -> dict[str, list[str]]:
    """The source paths of a datalist entry: its ``image`` / ``label`` values (a value may list several files)."""
    return {key: [str(p) for p in ensure_tuple(item[key])] for key in PATH_KEYS if key in item}


def entry_id(item: Mapping, root: str | os.PathLike) -> str:
    """``<name>-<hash>`` of a datalist entry: ``name`` from its first file, ``hash`` (12 hex) of all its keys and
    values with paths relative to ``root`` (the dataset folder)."""
    sources = _source_paths(item)
    described = {k: [_relative(p, root) for p in sources[k]] if k in sources else v for k, v in item.items()}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]
    first = next(iter(sources.values()), ["entry"])[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(first).name.split(".")[0])[:40] or "entry"
    return f"{name}-{digest}"


def source_signature(path: str | os.PathLike, root: str | os.PathLike) -> dict:
    """``{"path", "size", "mtime_ns"}`` of a source file (a folder, e.g. a DICOM series: total size and newest
    modification time of its files); ``path`` relative to ``root``."""
    full = Path(path)
    files = [p for p in full.iterdir() if p.is_file()] if full.is_dir() else [full]
    stats = [p.stat() for p in files]
    return {"path": _relative(str(path), root), "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def source_changes(record: Mapping, item: Mapping, root: str | os.PathLike) -> list[str]:
    """How the sources of ``item`` differ from those ``record`` was prepared from (``[]``: unchanged). A source
    that does not exist on this machine is not compared (the store is enough to train)."""
    changes = []
    for key, paths in _source_paths(item).items():
        for path, stored in zip(paths, record["sources"][key]):
            if not os.path.exists(path):
                continue
            now = source_signature(path, root)
            if now["size"] != stored["size"]:
                changes.append(f"{path} changed since the store was prepared (size {stored['size']} -> {now['size']} bytes)")
            elif now["mtime_ns"] != stored["mtime_ns"]:
                changes.append(f"{path} changed since the store was prepared (modified after it was read)")
    return changes


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in its folder and ``os.replace`` (written here rather than taken from
    ``cover3d.engine.checkpoints``: the data layer does not import the engine)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_json(path: Path, content: object) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(content).encode()))


def entry_record(entry: str, item: Mapping, root: str | os.PathLike, arrays: Mapping[str, object]) -> dict:
    """The record of entry ``entry`` (see the module doc): sources of ``item`` and a description of each array
    (``torch.Tensor`` / ``MetaTensor`` / numpy, channel-first; spacing and affine from a MetaTensor's meta)."""
    described = {}
    for key, array in arrays.items():
        values = np.asarray(torch.as_tensor(array).detach().cpu())
        affine = getattr(array, "affine", None)
        described[key] = {
            "file": f"{entry}.{key}.npy",
            "shape": list(values.shape),
            "dtype": str(values.dtype),
            "spacing": None if affine is None else [float(s) for s in array.pixdim],
            "affine": None if affine is None else np.asarray(affine, dtype=float).tolist(),
            "intensity": {"min": float(values.min()), "max": float(values.max()),
                          "mean": float(values.mean(dtype=np.float64)), "std": float(values.std(dtype=np.float64))},
        }
    sources = {k: [source_signature(p, root) for p in paths] for k, paths in _source_paths(item).items()}
    return {"id": entry, "sources": sources, "arrays": described}


def save_entry(store: str | os.PathLike, item: Mapping, root: str | os.PathLike, arrays: Mapping[str, object]) -> dict:
    """Write the arrays of datalist entry ``item`` (each an ``.npy`` file), then its record; returns the record."""
    folder = Path(store) / ENTRIES
    folder.mkdir(parents=True, exist_ok=True)
    entry = entry_id(item, root)
    record = entry_record(entry, item, root, arrays)
    for key, array in arrays.items():
        values = np.ascontiguousarray(np.asarray(torch.as_tensor(array).detach().cpu()))
        _write_atomic(folder / record["arrays"][key]["file"], lambda f, v=values: np.save(f, v, allow_pickle=False))
    _write_json(folder / f"{entry}.json", record)
    return record


def read_entry_record(store: str | os.PathLike, entry: str) -> dict | None:
    """The record of ``entry`` when it and all its arrays are on disk, else None."""
    folder = Path(store) / ENTRIES
    try:
        record = json.loads((folder / f"{entry}.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not all((folder / a["file"]).is_file() for a in record["arrays"].values()):
        return None
    return record


def array_path(store: str | os.PathLike, record: Mapping, key: str) -> Path:
    """Path of the ``.npy`` file of ``key`` in entry ``record``."""
    return Path(store) / ENTRIES / record["arrays"][key]["file"]


def write_manifest(store: str | os.PathLike, settings: Mapping, records: Sequence[Mapping],
                   failed: Sequence[Mapping] = (), complete: bool = False) -> None:
    """Write ``store/manifest.json`` atomically (``records`` sorted by id; ``failed``: ``{"id", "source", "reason"}``)."""
    Path(store).mkdir(parents=True, exist_ok=True)
    manifest = {"format": STORE_FORMAT, "version": STORE_VERSION, "settings": dict(settings),
                "entries": sorted(records, key=lambda r: r["id"]), "failed": list(failed), "complete": bool(complete)}
    _write_json(Path(store) / MANIFEST, manifest)


def read_manifest(store: str | os.PathLike, command: str | None = None) -> dict:
    """The manifest of ``store``; :class:`StoreIncompleteError` naming ``command`` (the prepare command) when the
    store or its manifest is missing, :class:`InputValueError` when it is not a cover3d store."""
    how = f": prepare it with: {command or prepare_command(store)}"
    path = Path(store) / MANIFEST
    if not Path(store).is_dir():
        raise StoreIncompleteError(f"store {store} not found{how}")
    if not path.is_file():
        raise StoreIncompleteError(f"store {store} has no {MANIFEST} (prepare never finished){how}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputValueError(f"store {store}: {MANIFEST} is not valid JSON ({e}){how}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise InputValueError(f"store {store}: {MANIFEST} is not a {STORE_FORMAT} manifest")
    if manifest.get("version") != STORE_VERSION:
        raise InputValueError(f"store {store} has format version {manifest.get('version')}, this cover3d reads "
                              f"version {STORE_VERSION}{how}")
    return manifest


def settings_difference(stored: Mapping, wanted: Mapping) -> tuple[str, object, object] | None:
    """The first setting (in ``wanted``'s order) whose value differs between the two, as ``(name, stored, wanted)``
    (lists and tuples compare equal, as do ``2`` and ``2.0``); None when they agree."""
    normal = json.loads(json.dumps({"stored": dict(stored), "wanted": dict(wanted)}, default=str))
    for name in list(normal["wanted"]) + [k for k in normal["stored"] if k not in normal["wanted"]]:
        if normal["stored"].get(name) != normal["wanted"].get(name):
            return name, normal["stored"].get(name), normal["wanted"].get(name)
    return None


def open_store(store: str | os.PathLike, data: Sequence[Mapping], settings: Mapping, root: str | os.PathLike,
               command: str | None = None) -> list[dict]:
    """The records of the datalist entries ``data`` in ``store``, in the order of ``data``, after checking that the
    store was prepared with ``settings`` and from the current sources.

    Raises:
        StoreIncompleteError: the store, its manifest, an entry or an array file is missing (the message names
            ``command``, the prepare command that finishes it).
        StoreSettingsError: a setting differs (its name, the store's value and this run's).
        StoreOutdatedError: a source that exists here changed since it was prepared.
    """
    command = command or prepare_command(store)
    manifest = read_manifest(store, command)
    difference = settings_difference(manifest["settings"], settings)
    if difference is not None:
        name, stored, wanted = difference
        raise StoreSettingsError(
            f"store {store} was prepared with {name} {stored!r}, this run has {name} {wanted!r}: train with the "
            f"store's settings, or prepare another store (another --store folder) with: {command}")
    records = {r["id"]: r for r in manifest["entries"]}
    failed = {f["id"]: f["reason"] for f in manifest.get("failed", [])}
    found, missing = [], []
    for item in data:
        entry = entry_id(item, root)
        record = records.get(entry)
        if record is None or not all(array_path(store, record, k).is_file() for k in record["arrays"]):
            missing.append((item, failed.get(entry)))
        else:
            found.append(record)
    if missing:
        item, reason = missing[0]
        first = next(iter(_source_paths(item).values()), [str(item)])[0]
        why = f"; it failed in prepare: {reason}" if reason else ""
        raise StoreIncompleteError(f"store {store} lacks {len(missing)} of {len(data)} entries of the datalist (first: "
                                   f"{first}{why}): finish it with: {command}")
    changes = [change for item, record in zip(data, found) for change in source_changes(record, item, root)]
    if changes:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise StoreOutdatedError(f"{changes[0]}{more}: update the store with: {command}")
    return found
