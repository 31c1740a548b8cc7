"""What an evaluation or inference run reads and writes: the weights it loads and the files it writes are logged,
and an inference run refuses to replace outputs of an earlier run unless told to (``--overwrite True``).

One behaviour for every bundle's ``inference.json``: before anything is computed, the files the run would write
are listed; if one exists the run stops with one line naming it and the two ways out (``--overwrite True``, or
another output folder).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from monai.data import FolderLayout
from monai.utils import ensure_tuple

from cover3d.errors import InputValueError
from cover3d.networks.weights import read_state_dict

__all__ = ["load_weights", "log_written", "refuse_existing", "segmentation_output_paths"]

logger = logging.getLogger(__name__)


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """``network`` with the state dict of ``path`` loaded (strict, via :func:`read_state_dict`, weights only),
    logging the file's absolute path."""
    network.load_state_dict(read_state_dict(path))
    logger.info(f"loaded weights {Path(path).resolve()}")
    return network


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool, output_setting: str) -> None:
    """Raise :class:`InputValueError` naming the first of ``paths`` that exists (and how many do) unless
    ``overwrite``; ``output_setting`` is the setting that chooses the output folder, named in the message."""
    existing = [str(p) for p in paths if os.path.exists(p)]
    if existing and overwrite is not True:
        more = f" (and {len(existing) - 1} more output(s) of this run)" if len(existing) > 1 else ""
        raise InputValueError(
            f"output {existing[0]} already exists{more}: pass --overwrite True to replace it, or another "
            f"--{output_setting}"
        )


def log_written(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Log each of ``paths`` that exists (what a run wrote); return them."""
    written = [str(Path(p).resolve()) for p in paths if os.path.exists(p)]
    for path in written:
        logger.info(f"wrote {path}")
    return written


def segmentation_output_paths(
    datalist: Sequence[dict],
    output_dir: str | os.PathLike,
    postfix: str,
    extension: str = ".nii.gz",
    key: str = "image",
) -> list[str]:
    """The files ``SaveImaged(output_dir=output_dir, output_postfix=postfix, output_ext=extension,
    separate_folder=False)`` writes for the entries of ``datalist`` (named after each entry's first ``key`` path),
    computed with MONAI's own ``FolderLayout`` so they match what it writes."""
    layout = FolderLayout(str(output_dir), postfix=postfix, extension=extension, parent=False, makedirs=False)
    return [layout.filename(subject=str(ensure_tuple(entry[key])[0])) for entry in datalist]
