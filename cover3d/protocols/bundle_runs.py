"""Running the repository's MONAI bundles from a protocol, and the files their runs leave."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from cover3d.engine import locate_bundle
from cover3d.errors import InputValueError

__all__ = ["bundle_folder", "parse_assignments", "read_metrics", "run_bundle", "write_csv"]


def bundle_folder(name: str) -> Path:
    """``<repository>/bundles/<name>``: the bundle next to the installed cover3d sources."""
    return Path(locate_bundle(name, argv=[]))


def parse_assignments(items: Sequence[str], option: str = "--set") -> dict:
    """``["key=value", ...]`` (the values of ``option``) -> dict; values parsed as JSON when possible
    (``patch_size=[48,48,32]``), else kept as strings.

    Raises:
        InputValueError: an item is not ``key=value``.
    """
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputValueError(f"{option}: expected key=value, got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def run_bundle(config_files: Sequence[Path], **overrides) -> None:
    """``python -m monai.bundle run`` in this process (no re-import of torch/MONAI for each of the many runs); the
    bundle's ``metadata.json`` and ``logging.conf`` are those next to the first config file."""
    from monai.bundle import run

    bundle = Path(config_files[0]).parent
    run(
        config_file=[str(c) for c in config_files],
        meta_file=str(bundle / "metadata.json"),
        logging_file=str(bundle / "logging.conf"),
        **overrides,
    )


def read_metrics(eval_dir: Path) -> dict[str, float]:
    """``metrics.csv`` written by MONAI's ``MetricsSaver`` (``name,value`` lines) as a dict."""
    with open(eval_dir / "metrics.csv", newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if row}


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """``rows`` (dicts with the keys of the first) as a CSV file with a header line."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
