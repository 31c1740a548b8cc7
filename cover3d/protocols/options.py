"""Argument types of the protocols' command lines: a bad value ends the output with one line naming the option,
the value and what is allowed (``argparse`` prints ``error: argument --x: ...`` last and exits with status 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "existing_dir", "existing_file", "non_negative_float", "non_negative_int", "positive_float", "positive_int",
]


def _bounded(parse: type, allowed: str, accept: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: ``parse(text)`` (``int`` or ``float``) for which ``accept(value)`` holds, else one message
    naming the value and ``allowed`` (e.g. "an integer >= 1")."""
    kind = "an integer" if parse is int else "a number"

    def check(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind} ({allowed} is allowed)") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{value} is not allowed ({allowed} is)")
        return value

    check.__doc__ = f"{allowed[0].upper()}{allowed[1:]}."
    return check


positive_int = _bounded(int, "an integer >= 1", lambda v: v >= 1)
non_negative_int = _bounded(int, "an integer >= 0", lambda v: v >= 0)  # a seed
non_negative_float = _bounded(float, "a finite number >= 0", lambda v: 0 <= v < float("inf"))
positive_float = _bounded(float, "a finite number > 0", lambda v: 0 < v < float("inf"))


def existing_file(text: str) -> str:
    """The path of an existing file, unchanged."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file {text} not found")
    return text


def existing_dir(text: str) -> str:
    """The path of an existing folder, unchanged."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"folder {text} not found")
    return text
