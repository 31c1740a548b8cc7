"""Argument types of the protocols' command lines: a bad value ends the output with one line naming the option,
the value and what is allowed (``argparse`` prints ``error: argument --x: ...`` last and exits with status 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "existing_dir", "existing_file", "non_negative_float", "non_negative_int", "positive_float", "positive_int",
]


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (an integer >= 1 is allowed)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed (an integer >= 1 is)")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (an integer >= 0 is allowed)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed (an integer >= 0 is)")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a number >= 0 is allowed)") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not allowed (a finite number >= 0 is)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a number > 0 is allowed)") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not allowed (a finite number > 0 is)")
    return value


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
