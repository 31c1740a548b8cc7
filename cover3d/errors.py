"""Errors in the user's configuration or data, shown as one message at the end of the output.

MONAI bundles call cover3d's checks from config expressions, so a pre-flight error reaches the console wrapped in
``RuntimeError: Failed to evaluate ConfigExpression`` under a long traceback, with the message at its top.
``import cover3d`` installs :func:`excepthook`: when an uncaught exception has an :class:`InputError` anywhere
in its cause/context chain, only that error's message is printed, last; any other exception, or any exception
with ``COVER3D_TRACEBACK=1`` in the environment, gets Python's usual traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import TracebackType

__all__ = [
    "TRACEBACK_ENV",
    "read_json_object",
    "InputError",
    "InputFileNotFoundError",
    "InputValueError",
    "excepthook",
    "find_input_error",
    "install_excepthook",
]

TRACEBACK_ENV = "COVER3D_TRACEBACK"


class InputError(Exception):
    """A problem in the user's configuration or data that the message alone explains (no traceback needed)."""


class InputValueError(InputError, ValueError):
    """Bad configuration value or data content (a ``ValueError``)."""


class InputFileNotFoundError(InputError, FileNotFoundError):
    """A file the configuration names does not exist (a ``FileNotFoundError``)."""


def find_input_error(error: BaseException | None) -> InputError | None:
    """The first :class:`InputError` in ``error``'s chain (itself, then ``__cause__`` / ``__context__``), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, previous=sys.__excepthook__
) -> None:
    """``sys.excepthook``: an :class:`InputError` in the chain is printed as its message alone, as the last lines
    of the output (after a one-line header naming ``COVER3D_TRACEBACK``); everything else goes to ``previous``."""
    found = find_input_error(exc)
    if found is None or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        previous(exc_type, exc, tb)
        return
    sys.stdout.flush()
    print(f"cover3d: stopped by a configuration or data error ({TRACEBACK_ENV}=1 shows the traceback):",
          file=sys.stderr)
    print(str(found), file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Make :func:`excepthook` the interpreter's hook, delegating other exceptions to the current one (idempotent)."""
    current = sys.excepthook
    if getattr(current, "_cover3d", False):
        return

    def hook(exc_type, exc, tb):
        excepthook(exc_type, exc, tb, previous=current)

    hook._cover3d = True
    sys.excepthook = hook


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object (dict) stored in ``path``, a file the user named as ``what`` (e.g. "datalist"); one-line
    :class:`InputFileNotFoundError` when it is missing, :class:`InputValueError` when it is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"{what} not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputValueError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(content, dict):
        raise InputValueError(f"{what} {path} is not a JSON object (found a {type(content).__name__})")
    return content
