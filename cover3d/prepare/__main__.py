"""``python -m cover3d.prepare --config_file bundles/cover_ct/train.json [--dataset_dir D --datalist L ...] --store DIR
[--workers N]``: preprocess a bundle's training datalist once into an on-disk store (see :mod:`cover3d.prepare`);
then train with the same command line plus ``--store DIR``."""

from __future__ import annotations

import fire

import cover3d  # noqa: F401  (installs the one-line error hook for bad input)
from cover3d.prepare import prepare_store


def prepare(config_file: str, store: str, workers: int | None = None, **override: object) -> None:
    """Preprocess the training datalist of the bundle config ``config_file`` into the store folder ``store``.

    Args:
        config_file: the pretraining bundle's train.json (or a list of config files, as monai.bundle run takes).
        store: the store folder (created; rerun the same command to finish a killed prepare).
        workers: worker processes (default: the cores this process may use, at most 8; 0: in this process).
        override: bundle settings, as on the monai.bundle run command line (--dataset_dir, --datalist, --pixdim ...).
    """
    prepare_store(config_file, store, workers, **override)


if __name__ == "__main__":
    fire.Fire(prepare)
