"""Checks and defaults of bundle settings.

Each setting a user may type on a bundle's command line (``--epochs 10``) has one rule in :data:`SETTING_RULES`,
the same in every bundle. :func:`check_settings`, the first step of each bundle's ``initialize`` list, applies them,
so a bad value stops the run with one line naming the setting, its value and what is allowed, before anything is
read or trained. On the command line ``fire`` has already turned ``10`` into an int, ``1e-3`` into a float,
``[48,48,32]`` into a list and ``True`` into a bool; anything it cannot parse (``ten``, ``false``) stays a string.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import NoReturn

import torch

from cover3d.data.checks import patch_size_problems
from cover3d.errors import InputFileNotFoundError, InputValueError

__all__ = [
    "SETTING_RULES",
    "Rule",
    "check_settings",
    "default_num_threads",
    "default_num_workers",
    "device",
    "fields",
    "file_name_part",
    "integer",
    "number",
    "numbers",
    "one_of",
    "optional",
    "path",
    "require_bool",
    "set_num_threads",
    "spatial_size",
    "store_folder",
    "word",
]

# a rule checks ``value`` of the setting ``name`` and raises an InputError naming both; ``rule.allowed`` says what
# it accepts (for messages and documentation)
Rule = Callable[[object, str], None]


def _refuse(name: str, value: object, allowed: str, hint: str = "") -> NoReturn:
    raise InputValueError(f"setting {name!r} must be {allowed}, got {value!r}{hint}")


def _rule(allowed: str) -> Callable[[Callable[[object, str], None]], Rule]:
    """Decorator attaching the ``allowed`` text to a rule."""

    def attach(rule: Callable[[object, str], None]) -> Rule:
        rule.allowed = allowed
        return rule

    return attach


@_rule("True or False")
def require_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool, else an :class:`~cover3d.errors.InputValueError` naming the setting. On the ``monai.bundle`` command line
    ``--flag false`` arrives as the (truthy) string ``'false'``: only ``--flag False`` / ``--flag True`` are bools."""
    if isinstance(value, bool):
        return value
    hint = f" (on the command line write --{name} {str(value).strip().capitalize()})" if str(value).strip().lower() in ("true", "false") else ""
    _refuse(name, value, "True or False", hint)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int, maximum: int | None = None) -> Rule:
    """An int in ``[minimum, maximum]`` (a bool or a float such as ``10.0`` is refused)."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"

    @_rule(allowed)
    def rule(value: object, name: str) -> None:
        if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
            _refuse(name, value, allowed)

    return rule


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite int or float in the interval from ``low`` to ``high`` (each end closed unless ``*_open``)."""
    if low == -math.inf and high == math.inf:
        allowed = "a number"
    elif high == math.inf:
        allowed = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    @_rule(allowed)
    def rule(value: object, name: str) -> None:
        inside = _is_number(value) and (value > low if low_open else value >= low)
        if not inside or (value >= high if high_open else value > high):
            _refuse(name, value, allowed)

    return rule


def numbers(count: int | None, element: Rule, ordered: bool = False) -> Rule:
    """A list (or tuple) of ``count`` values (None: any number of them), each accepted by ``element``; ``ordered``:
    strictly increasing."""
    what = element.allowed.replace("an integer", "integers").replace("a number", "numbers")
    allowed = f"a list of {'' if count is None else f'{count} '}{what}" + (", increasing (low, high)" if ordered else "")

    @_rule(allowed)
    def rule(value: object, name: str) -> None:
        if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count):
            _refuse(name, value, allowed)
        for item in value:
            try:
                element(item, name)
            except InputValueError:
                _refuse(name, value, allowed)
        if ordered and any(a >= b for a, b in zip(value, value[1:])):
            _refuse(name, value, allowed)

    return rule


def one_of(*choices: str) -> Rule:
    """One of the strings ``choices``."""
    allowed = "one of " + ", ".join(map(repr, choices))

    @_rule(allowed)
    def rule(value: object, name: str) -> None:
        if value not in choices:
            _refuse(name, value, allowed)

    return rule


@_rule("a non-empty string")
def word(value: object, name: str) -> None:
    """A non-empty string, e.g. the name of a list in a datalist."""
    if not isinstance(value, str) or not value.strip():
        _refuse(name, value, "a non-empty string")


@_rule("a string without '/' (part of a file name)")
def file_name_part(value: object, name: str) -> None:
    """A string that can be part of a file name (no folder separator)."""
    if not isinstance(value, str) or "/" in value or os.sep in value:
        _refuse(name, value, "a string without '/' (part of a file name)")


def fields(**rules: Rule) -> Rule:
    """A dict with exactly the keys of ``rules``, each value accepted by its rule under the name
    ``<setting>#<key>``, as the command line addresses it (``--loss_weights#con_weight 0.5``)."""
    allowed = "a dict of " + ", ".join(f"{key} ({rule.allowed})" for key, rule in rules.items())

    @_rule(allowed)
    def rule(value: object, name: str) -> None:
        if not isinstance(value, dict) or set(value) != set(rules):
            _refuse(name, value, allowed)
        for key, element in rules.items():
            element(value[key], f"{name}#{key}")

    return rule


def optional(rule: Rule) -> Rule:
    """None, or a value ``rule`` accepts."""

    @_rule(f"None or {rule.allowed}")
    def accept_none(value: object, name: str) -> None:
        if value is not None:
            rule(value, name)

    return accept_none


def path(kind: str) -> Rule:
    """An existing ``"file"``, ``"folder"`` or ``"file or folder"`` (a DICOM series is a folder)."""
    wanted = {"file": os.path.isfile, "folder": os.path.isdir, "file or folder": os.path.exists}[kind]

    @_rule(f"an existing {kind}")
    def rule(value: object, name: str) -> None:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            _refuse(name, value, f"the path of an existing {kind}")
        if not os.path.exists(value):
            raise InputFileNotFoundError(f"setting {name!r} must be an existing {kind}, got {value!r} (not found)")
        if not wanted(value):
            _refuse(name, value, f"an existing {kind}", f" ({'a folder' if os.path.isdir(value) else 'a file'})")

    return rule


def spatial_size(divisor: int = 16) -> Rule:
    """3 positive ints (one per spatial axis), each divisible by ``divisor`` (1: any size); the divisibility
    message comes from :func:`cover3d.data.checks.patch_size_problems`."""
    sizes = numbers(3, integer(1))
    allowed = sizes.allowed + (f" divisible by {divisor}" if divisor > 1 else "")

    @_rule(allowed)
    def rule(value: object, name: str) -> None:
        sizes(value, name)
        problems = patch_size_problems(value, divisor, name=name) if divisor > 1 else []
        if problems:
            raise InputValueError(f"setting {problems[0]}")

    return rule


@_rule("a torch device of this machine ('cpu', 'cuda', 'cuda:0', ...)")
def device(value: object, name: str) -> None:
    """A ``torch.device`` or device string (``'cpu'``, ``'cuda:1'``) that this machine has."""
    available = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    available += ["mps"] if torch.backends.mps.is_available() else []
    allowed = "a device of this machine: " + ", ".join(map(repr, available))
    try:
        parsed = value if isinstance(value, torch.device) else torch.device(value)
    except (RuntimeError, TypeError):
        _refuse(name, value, allowed)
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda" and parsed.index is None:
        parsed = torch.device("cuda", 0)  # 'cuda': the current CUDA device
    if str(parsed) not in available:
        hint = " (this machine has no CUDA device)" if parsed.type == "cuda" and not torch.cuda.is_available() else ""
        _refuse(name, value, allowed, hint)


@_rule("None or the folder of a store written by python -m cover3d.prepare")
def store_folder(value: object, name: str) -> None:
    """None, or the path of a store folder; whether it holds a complete store for the run is checked when the training
    volumes are opened (:func:`cover3d.data.open_store`, whose message names the prepare command)."""
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        _refuse(name, value, store_folder.allowed)
    if os.path.isfile(value):
        _refuse(name, value, store_folder.allowed, " (a file)")


_SEED = integer(0, 2**32 - 1)  # numpy's seed range (monai.utils.set_determinism)
_POSITIVE = integer(1)
_COUNT = integer(0)
_FRACTION = number(0, 1)
_FILE = path("file")
_WEIGHT = number(0)
_LEVEL = integer(-5, 4)  # a feature level of the 5-level backbone, as a Python index (-1: the finest)

# every setting a bundle checks, by name: the same rule in every bundle
SETTING_RULES: dict[str, Rule] = {
    # data and files
    "dataset_dir": path("folder"),
    "store": store_folder,
    "datalist": _FILE,
    "weights": _FILE,
    "pretrained_weights": optional(_FILE),
    "image_a": optional(path("file or folder")),
    "image_b": optional(path("file or folder")),
    "image": optional(path("file or folder")),
    "eval_datalist_key": word,
    "train_key": word,
    "val_key": word,
    "eval_key": word,
    "infer_key": word,
    "output_postfix": file_name_part,
    # preprocessing and patches
    "modality": one_of("mri", "ct"),
    "pixdim": numbers(3, number(0, low_open=True)),
    "hu_window": numbers(2, number(-math.inf), ordered=True),
    "percentiles": numbers(2, number(0, 100), ordered=True),
    "patch_size": spatial_size(16),
    "context_size": spatial_size(1),
    "infer_roi_size": spatial_size(16),
    "mask_background": require_bool,
    "background_threshold": _FRACTION,
    # network
    "in_channels": _POSITIVE,
    "num_classes": integer(2),
    "channels": numbers(5, _POSITIVE),
    "radii": numbers(5, _POSITIVE),
    "groups": numbers(5, _POSITIVE),
    "projection_gain": number(0, low_open=True),
    "veu": one_of("streaming", "fused", "reference"),
    "min_loaded_fraction": number(0, 1, low_open=True),
    "freeze_backbone": require_bool,
    # optimisation and schedule
    "epochs": _POSITIVE,
    "iterations_per_epoch": _POSITIVE,
    "batch_size": _POSITIVE,
    "samples_per_volume": _POSITIVE,
    "learning_rate": number(0, low_open=True),
    "loss_weights": fields(
        vec_weight=_WEIGHT, con_weight=_WEIGHT, level_weights=optional(numbers(4, _WEIGHT)), smooth_weight=_WEIGHT,
        con_centred=require_bool,
    ),
    "backbone_lr_scale": number(0),
    "warmup_iterations": _COUNT,
    "seed": _SEED,
    # validation, evaluation, inference
    "validation_pairs": _POSITIVE,
    "val_interval": _POSITIVE,
    "eval_pairs": _POSITIVE,
    "eval_seed": _SEED,
    "deformation_seed": _SEED,
    "sw_batch_size": _POSITIVE,
    "sw_overlap": number(0, 1, high_open=True),
    # checkpoints and logging
    "resume": require_bool,
    "overwrite": require_bool,
    "checkpoint_interval": _COUNT,
    "checkpoints_kept": integer(2),
    "snapshot_iterations": numbers(None, _POSITIVE),
    "log_interval": _POSITIVE,
    # hardware
    "device": device,
    "amp": require_bool,
    "amp_dtype": one_of("float16", "bfloat16"),
    "compile": require_bool,
    "channels_last": require_bool,
    "num_workers": _COUNT,
    "num_threads": _POSITIVE,
    "cache_rate": _FRACTION,
    # pretext, guard and pseudo-field overlays (each overlay adds its own to checked_settings)
    "cycle": fields(weight=_WEIGHT),
    "restoration": fields(weight=_WEIGHT),
    "infonce": fields(weight=_WEIGHT, num_samples=integer(2), temperature=number(0, low_open=True), level=_LEVEL),
    "relloc": fields(weight=_WEIGHT, levels=numbers(None, _LEVEL), num_samples=integer(2), hidden=_POSITIVE),
    "vicreg": fields(weight=_WEIGHT, gamma=number(0, low_open=True), cov_weight=_WEIGHT, num_samples=integer(2)),
    "pseudo": fields(teacher_weights=_FILE, pairs=_POSITIVE, threshold=number(0, low_open=True)),
}


def check_settings(**settings: object) -> None:
    """Check each keyword by its rule in :data:`SETTING_RULES`, ``context_size`` >= ``patch_size`` per axis when
    both are given, and ``veu`` not ``'fused'`` on a CPU ``device`` (its backward needs CUDA), e.g. as the first
    step of a bundle's ``initialize`` list::

        "checked_settings": {"_target_": "cover3d.engine.check_settings", "epochs": "@epochs", "device": "@device"},
        "initialize": ["@checked_settings", ...]

    Raises:
        InputValueError / InputFileNotFoundError: one line naming the first bad setting, its value and what is
            allowed (settings in the order given).
        KeyError: a setting without a rule (a mistake in the bundle, not in the user's input).
    """
    unknown = sorted(set(settings) - set(SETTING_RULES))
    if unknown:
        raise KeyError(f"no rule for setting(s) {unknown} in cover3d.engine.settings.SETTING_RULES")
    for name, value in settings.items():
        SETTING_RULES[name](value, name)
    patch, context = settings.get("patch_size"), settings.get("context_size")
    if patch is not None and context is not None and any(c < p for p, c in zip(patch, context)):
        _refuse("context_size", list(context), f"at least patch_size {list(patch)} on every axis")
    if settings.get("veu") == "fused" and "device" in settings and torch.device(settings["device"]).type == "cpu":
        _refuse("veu", "fused", "'streaming' or 'reference' on a CPU device", " ('fused' trains on CUDA only)")


def default_num_threads() -> int:
    """Torch CPU threads for a bundle run: ``OMP_NUM_THREADS`` when set; else the cores this process may use, less
    those other processes keep busy (1-minute load average), split between the processes of a ``torchrun`` launch;
    at least 1. On a shared CPU, more threads than free cores makes every thread wait (measured: docs/performance.md
    "Threads on a shared CPU")."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, (cores - min(busy, cores - 1)) // local_processes)


def default_num_workers(store: object = None) -> int:
    """DataLoader worker processes of a pretraining run: 0 without a store (the volumes are in the RAM cache: a
    worker would only copy them); with a store, the cores each ``torchrun`` process of this machine may use, less one
    for the training itself, between 1 and 4 (each worker reads its samples' crops from the memory-mapped store)."""
    if store is None:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(4, cores // local_processes - 1))


def set_num_threads(num_threads: int) -> None:
    """``torch.set_num_threads`` with a log line saying how many (bundles call it first in ``initialize``)."""
    torch.set_num_threads(int(num_threads))
    logging.getLogger(__name__).info(f"using {int(num_threads)} CPU thread(s) (--num_threads; default: free cores)")
