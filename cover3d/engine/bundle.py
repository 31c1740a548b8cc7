"""Where a bundle's outputs go: its own folder, whatever the working directory."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cover3d.errors import InputValueError

__all__ = ["locate_bundle", "require_base_config"]


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


def require_base_config(overlay: str, base: str = "train.json", argv: list[str] | None = None) -> None:
    """Stop with one line when the command line runs the config ``overlay`` (e.g. ``inference.json``) without the
    config ``base`` it completes listed before it: MONAI would otherwise fail on the first setting the overlay takes
    from ``base`` (``@seed is not defined``). The first ``initialize`` step of such an overlay, evaluated before any
    reference; silent when the config files are not on the command line (a Python caller)."""
    files = _config_files_from_argv(sys.argv if argv is None else argv)
    names = [Path(f).name for f in files]
    if overlay in names and base not in names[: names.index(overlay)]:
        folder = Path(files[names.index(overlay)]).parent
        pair = f"\"['{folder / base}','{folder / overlay}']\""
        raise InputValueError(f"--config_file: {folder / overlay} completes {folder / base} and cannot run alone: "
                              f"run --config_file {pair}")
