"""Training volumes read from an on-disk store (memory maps) instead of a RAM cache."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, RandomizableTrait, Transform

from cover3d.data.store import array_path, open_store

__all__ = ["StoreDataset", "first_random_index", "preprocessed_volumes"]


def first_random_index(transform: Compose) -> int | None:
    """Index of the first random (or non-``Transform``) step of ``transform``: the steps before it are the
    deterministic preprocessing that ``CacheDataset`` caches and ``python -m cover3d.prepare`` stores (the same rule
    as ``monai.data.CacheDataset``); None when every step is deterministic."""
    return transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))


class StoreDataset(Dataset):
    """The items ``CacheDataset(data, transform)`` would give, with the deterministic preprocessing read from
    ``store`` instead of a RAM cache: item ``i`` is datalist entry ``data[i]`` whose stored keys are read-only memory
    maps of their ``.npy`` files, passed through the random steps of ``transform`` (those from
    :func:`first_random_index` on). Holds paths only: nothing of the store is read before a sample needs it, and a
    transform that crops (``CoverPaird``) reads only its crop. Picklable for DataLoader worker processes.

    Args:
        store: folder written by ``python -m cover3d.prepare``.
        data: datalist entries (``load_datalist``), each prepared in the store.
        transform: the whole chain, preprocessing then random steps (as given to ``CacheDataset``).
        settings: the run's preprocessing settings; the store's must be the same.
        root: the dataset folder the datalist paths are relative to (entry identity).
        command: the prepare command named in errors (default: derived from the command line).

    Raises:
        StoreIncompleteError / StoreSettingsError / StoreOutdatedError: see :func:`~cover3d.data.store.open_store`.
    """

    def __init__(self, store: str | os.PathLike, data: Sequence[Mapping], transform: Compose, settings: Mapping,
                 root: str | os.PathLike, command: str | None = None) -> None:
        records = open_store(store, data, settings, root, command)
        self.files = [{key: str(array_path(store, record, key)) for key in record["arrays"]} for record in records]
        self.first_random = first_random_index(transform)
        super().__init__(data=list(data), transform=transform)

    def _transform(self, index: int):
        item = dict(self.data[index])
        item.update({key: np.load(path, mmap_mode="r") for key, path in self.files[index].items()})
        return item if self.first_random is None else self.transform(item, start=self.first_random)


def preprocessed_volumes(data: Sequence[Mapping], transform: Compose, store: str | os.PathLike | None = None,
                         settings: Mapping | None = None, root: str | os.PathLike | None = None,
                         **cache_args) -> Dataset:
    """The training volumes of a bundle: ``CacheDataset(data, transform, **cache_args)`` (every preprocessed volume
    in RAM) without ``store``, else a :class:`StoreDataset` over ``store`` (``settings`` and ``root`` required)."""
    if store is None:
        return CacheDataset(data=data, transform=transform, **cache_args)
    return StoreDataset(store, data, transform, settings, root)
