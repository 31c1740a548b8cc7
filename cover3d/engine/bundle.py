"""Where a bundle's outputs go: its own folder, whatever the working directory."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["locate_bundle"]


def _config_files_from_argv(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--config_file=") else argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else None
        if value is not None:
            parsed = ast.literal_eval(value) if value.lstrip().startswith("[") else value
            return [parsed] if isinstance(parsed, str) else list(parsed)
    return []


def locate_bundle(name: str, argv: list[str] | None = None) -> str:
    """Absolute folder of bundle ``name``: the folder of the first ``--config_file`` on the command line when that
    folder is called ``name`` (so a copied bundle writes into its copy), else ``<repo>/bundles/<name>`` next to the
    installed cover3d sources. ``bundle_root`` can always be overridden on the command line."""
    for config in _config_files_from_argv(sys.argv if argv is None else argv):
        folder = Path(config).resolve().parent
        if folder.name == name:
            return str(folder)
    return str(Path(__file__).resolve().parents[2] / "bundles" / name)
