"""Loading pretrained cover3d weights into a backbone or a network built on one, with a report.

Built on :func:`monai.networks.utils.copy_model_state` (name + shape matching). MONAI's ``CheckpointLoader`` is not
used: with ``strict_shape=False`` it loads nothing in MONAI 1.6.1, and a key-prefix mismatch "succeeds" with 0
tensors loaded. :func:`load_pretrained_weights` instead aligns the key prefixes, adapts the input convolution to
another number of input channels, reports what it loaded, and refuses to continue when almost nothing matches.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet
from monai.networks.utils import copy_model_state
from torch import nn

from cover3d.errors import InputFileNotFoundError, InputValueError, read_json_object
from cover3d.networks.nets.backbone import UNetBackbone
from cover3d.networks.pretraining_checks import backbone_widths, layout_differences, preprocessing_differences

__all__ = [
    "METADATA_KEYS",
    "UnsafeWeightsError",
    "WeightLoadReport",
    "load_pretrained_weights",
    "load_weights_only",
    "pretraining_metadata",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

# leading key prefixes added by wrappers: DDP/DataParallel, torch.compile, and checkpoint/framework containers
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "network.")
# keys under which checkpoint dicts commonly hold the network's state dict (MONAI CheckpointSaver uses "network")
CHECKPOINT_KEYS = ("network", "model", "state_dict", "model_state_dict", "net")
# blocks of a pretraining bundle's metadata.json that describe how to reuse its weights
METADATA_KEYS = ("preprocessing", "pretraining")
# globals torch's weights-only unpickler accepts in a torch.save file (its own rebuild functions, OrderedDict, ...)
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")


@dataclass
class WeightLoadReport:
    """What :func:`load_pretrained_weights` did. Key names are the target network's unless stated otherwise.

    Attributes:
        source: where the weights came from (file path, or ``"<state dict>"``).
        loaded: target keys set from the source (including ``adapted``).
        adapted: target keys loaded after adapting the input convolution to another number of input channels.
        missing: target keys with no source tensor of that name (kept at their initial values).
        shape_mismatched: target key -> (source shape, target shape) for names present in both but not loaded,
            e.g. a segmentation head with another number of classes.
        unexpected: source keys (wrapper prefixes stripped) that match no target key, e.g. the pretraining pyramid.
        backbone_fraction: fraction of the target backbone's tensors that were loaded.
        prefixes: (source prefix removed, target prefix added) used to align the key names.
        metadata: the ``preprocessing`` and ``pretraining`` blocks of the pretraining bundle's metadata.json, when
            found next to the weights file.
        warnings: differences from how the weights were made (backbone widths, normalisation, activation, and
            the downstream ``preprocessing`` when given), one sentence each; also logged as warnings.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    backbone_fraction: float = 0.0
    prefixes: tuple[str, str] = ("", "")
    metadata: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self, max_keys: int = 8) -> str:
        """Multi-line human-readable report (at most ``max_keys`` names per category)."""

        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:max_keys])
            return shown + (f", ... (+{len(keys) - max_keys})" if len(keys) > max_keys else "")

        total = len(self.loaded) + len(self.missing) + len(self.shape_mismatched)
        lines = [
            f"weights from {self.source}: loaded {len(self.loaded)} of {total} target tensors "
            f"({self.backbone_fraction:.0%} of the backbone's); key prefixes: removed '{self.prefixes[0]}', "
            f"added '{self.prefixes[1]}'"
        ]
        if self.adapted:
            lines.append(f"  adapted to the input channels: {names(self.adapted)}")
        if self.shape_mismatched:
            mismatched = [f"{k} {tuple(s)}->{tuple(t)}" for k, (s, t) in self.shape_mismatched.items()]
            lines.append(f"  shape mismatch, not loaded ({len(mismatched)}): {names(mismatched)}")
        if self.missing:
            lines.append(f"  missing in the source, left as initialised ({len(self.missing)}): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  source tensors not used ({len(self.unexpected)}): {names(self.unexpected)}")
        if self.metadata:
            lines.append(f"  pretraining settings (bundle metadata): {json.dumps(self.metadata)}")
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def load_pretrained_weights(
    network: nn.Module,
    weights: str | os.PathLike | Mapping[str, Any],
    min_fraction: float = 0.5,
    adapt_in_channels: bool = True,
    preprocessing: Mapping[str, Any] | None = None,
) -> WeightLoadReport:
    """Copy the name- and shape-matching tensors of ``weights`` into ``network`` (in place) and report.

    ``network`` is a backbone (``UNetBackbone``), a network holding one as ``.backbone`` (``CoverSegNet``,
    ``CoverNet``), or MONAI's ``BasicUNet`` built with the pretrained layout (``group_norm_per_width(BasicUNet(
    out_channels=n, **metadata["pretraining"]["basic_unet"]), 8)``, whose ``final_conv`` is then the only new layer);
    DDP/DataParallel/``torch.compile`` wrappers are unwrapped. ``weights`` is a state dict, or a
    file holding a state dict or a checkpoint dict with one under ``network``/``model``/``state_dict``/... ; files
    are read with ``torch.load(..., weights_only=True)`` (no arbitrary pickled objects).

    Key names are aligned automatically: wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``,
    ``network.``) shared by all source keys are stripped, then the source/target prefix pair (e.g. remove
    ``backbone.``, add ``backbone.``) that matches the most tensors is used. When ``adapt_in_channels`` and the
    input convolution's kernel differs only in its number of input channels, the kernel summed over the source
    channels and divided by the target channel count is repeated over the target channels: an input with the
    same image on every channel gives the pretrained activations. Other shape mismatches (a head with another
    number of classes) are skipped and reported.

    Args:
        network: module to update in place.
        weights: path to a ``.pt``/``.pth`` file, or a state dict / checkpoint dict.
        min_fraction: raise instead of loading when fewer than this fraction of the target backbone's tensors
            (all tensors when the network has no ``.backbone``) would be loaded.
        adapt_in_channels: adapt the input convolution to the target's number of input channels.
        preprocessing: the downstream preprocessing, as in the metadata's ``preprocessing`` block (any of
            ``spacing_mm``, ``preset``, ``preset_args``); each difference from the pretraining's is a warning.

    Returns:
        The report (also logged at INFO level, with a warning when tensors were skipped for their shape and one
        per difference from the pretraining metadata: widths, normalisation, activation, preprocessing).

    Raises:
        FileNotFoundError: ``weights`` is a path that does not exist.
        ValueError: the file holds non-tensor pickled objects, no state dict, or too little of it matches.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise InputValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    target = _unwrap(network)
    is_file = isinstance(weights, (str, os.PathLike))
    source_name = str(weights) if is_file else "<state dict>"
    source = _strip_wrapper_prefixes(read_state_dict(weights) if is_file else _find_state_dict(weights, source_name))
    target_state = target.state_dict()
    source_prefix, target_prefix = _best_prefixes(source, target_state)
    renamed = {_renamed(k, source_prefix, target_prefix): v for k, v in source.items() if k.startswith(source_prefix)}
    adapted = _adapt_input_conv(target, target_state, renamed) if adapt_in_channels else []

    new_state, loaded, _ = copy_model_state(target_state, renamed, inplace=False)
    report = WeightLoadReport(
        source=source_name,
        loaded=loaded,
        adapted=adapted,
        missing=[k for k in target_state if k not in renamed],
        shape_mismatched={
            k: (tuple(renamed[k].shape), tuple(v.shape))
            for k, v in target_state.items()
            if k in renamed and k not in loaded
        },
        unexpected=[k for k in source if _renamed(k, source_prefix, target_prefix) not in target_state],
        backbone_fraction=_backbone_fraction(target, target_state, loaded),
        prefixes=(source_prefix, target_prefix),
        metadata=pretraining_metadata(weights) if is_file else None,
    )
    report.warnings = _metadata_differences(target, target_state, report.metadata, preprocessing)
    if report.backbone_fraction < min_fraction:
        raise InputValueError(
            f"refusing to load weights from {source_name}: only {report.backbone_fraction:.0%} of the target "
            f"backbone's tensors match (min_fraction={min_fraction}).{_mismatch_hint(target, report)}\n"
            + report.summary()
        )
    target.load_state_dict(new_state)
    logger.info(report.summary())
    if report.shape_mismatched:
        logger.warning(f"{len(report.shape_mismatched)} tensor(s) of {source_name} not loaded for their shape: "
                       + ", ".join(report.shape_mismatched))
    for warning in report.warnings:
        logger.warning(f"weights from {source_name}: {warning}")
    return report


class UnsafeWeightsError(InputValueError):
    """A weights or checkpoint file holding pickled Python objects, refused unread (shown as one message)."""


def load_weights_only(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: the one way cover3d reads a ``.pt`` file. Tensors and plain
    containers (dict, list, tuple, str, numbers) only, because unpickling an object can run arbitrary code.

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightsError: the file holds other pickled objects: one line naming the file and the first refused
            global (e.g. ``posix.system``); nothing of it is executed, and torch's advice to retry with
            ``weights_only=False`` is not passed on.
        ValueError: the file is not a PyTorch checkpoint, or is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not _is_pickled(path):
            raise InputValueError(
                f"cannot read weights file {path}: not a PyTorch checkpoint or corrupt (neither a torch.save "
                "archive nor a pickle stream)"
            ) from None  # torch's own text suggests weights_only=False
        raise UnsafeWeightsError(
            f"refusing to load {path}: it holds pickled Python objects ({_refused_global(e, path)}), and cover3d "
            "reads weights with torch.load(weights_only=True), which accepts only tensors and plain containers "
            "(dict, list, tuple, str, numbers) because unpickling an object can run arbitrary code. Save the "
            "network's state dict alone: torch.save(network.state_dict(), path)."
        ) from None  # torch's own text suggests weights_only=False
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise InputValueError(f"cannot read weights file {path}: {_first_line(e)}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``: the file's dict of tensors, or the one inside a checkpoint dict, read by
    :func:`load_weights_only` (its errors), or a one-line ``ValueError`` when the file holds no state dict."""
    return _find_state_dict(load_weights_only(path), str(Path(path)))


def pretraining_metadata(weights: str | os.PathLike) -> dict | None:
    """The ``preprocessing``/``pretraining`` blocks of the bundle ``metadata.json`` next to a weights file, or None.

    Looks in the weights file's folder, then its parent (a bundle's ``models/model.pt`` has the bundle's
    ``metadata.json`` one level up).

    Raises:
        ValueError: the metadata file found is not a JSON object.
    """
    folder = Path(weights).resolve().parent
    for candidate in (folder / "metadata.json", folder.parent / "metadata.json"):
        if not candidate.is_file():
            continue
        content = read_json_object(candidate, "bundle metadata")
        blocks = {key: content[key] for key in METADATA_KEYS if key in content}
        if blocks:
            return blocks
    return None


def _is_pickled(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` zip archive or a pickle stream (protocol >= 2 starts with 0x80)."""
    with path.open("rb") as f:
        if zipfile.is_zipfile(f):
            return True
        f.seek(0)
        return f.read(1) == b"\x80"


def _refused_global(error: Exception, path: Path) -> str:
    """What the weights-only unpickler refused, as ``global <module>.<name>`` (torch's text names it for a
    ``torch.save`` archive; for a raw pickle stream torch stops earlier, at an unsupported opcode, so the stream is
    scanned, never executed, for its first global that is not torch's), else ``objects that are not tensors``."""
    named = re.search(r"GLOBAL ([\w.]+)", str(error))
    found = named.group(1) if named else next(
        (g for g in _pickled_globals(path) if not g.startswith(_TORCH_GLOBALS)), None
    )
    return f"global {found}" if found else "objects that are not tensors"


def _pickled_globals(path: Path) -> list[str]:
    """``module.name`` of every global a pickle stream (or a ``torch.save`` archive's ``data.pkl``) imports, in
    order, read with :func:`pickletools.genops` (which parses opcodes and executes nothing); [] if unparsable."""
    with path.open("rb") as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            f.seek(0)
            data = f.read()
    found: list[str] = []
    pushed: list[str | None] = []  # what each opcode pushed: a string, or None for anything else
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            if opcode.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            else:
                pushed.append(arg if isinstance(arg, str) and "UNICODE" in opcode.name else None)
    except ValueError:  # a truncated stream: keep what was found
        pass
    return found


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(content: Any, name: str) -> dict[str, torch.Tensor]:
    """``content`` if it is a dict of tensors, else the dict of tensors under a usual checkpoint key."""
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, Mapping):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(content.get(key)):
                return dict(content[key])
        found = ", ".join(f"'{k}'" for k in content)
        raise InputValueError(f"{name} holds no state dict: expected a dict of tensors or one under "
                         f"{', '.join(CHECKPOINT_KEYS)}; top-level keys: {found or 'none'}")
    raise InputValueError(f"{name} holds a {type(content).__name__}, not a state dict (a dict of tensors)")


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            network = network.module
        elif isinstance(getattr(network, "_orig_mod", None), nn.Module):
            network = network._orig_mod
        else:
            return network


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading wrapper prefixes (possibly nested, e.g. ``module._orig_mod.``) shared by every key."""
    while (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)) is not None:
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _best_prefixes(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """(source prefix to remove, target prefix to add) matching the most tensors by name and shape.

    Candidates are "" and each first name component (``backbone.``, ...) of either side; ties keep the
    first candidate, so ("", "") wins when nothing needs renaming.
    """
    def first_components(keys) -> list[str]:
        return [""] + sorted({k.split(".", 1)[0] + "." for k in keys if "." in k})

    def score(source_prefix: str, target_prefix: str) -> tuple[int, int]:
        pairs = [(k, _renamed(k, source_prefix, target_prefix)) for k in source]
        matched = [(k, n) for k, n in pairs if n in target]
        return sum(source[k].shape == target[n].shape for k, n in matched), len(matched)

    candidates = [(s, t) for s in first_components(source) for t in first_components(target)]
    return max(candidates, key=lambda pair: score(*pair))


def _renamed(key: str, source_prefix: str, target_prefix: str) -> str | None:
    """``key`` with ``source_prefix`` replaced by ``target_prefix``; None when it lacks ``source_prefix``."""
    return target_prefix + key[len(source_prefix):] if key.startswith(source_prefix) else None


def _input_conv_key(network: nn.Module) -> str | None:
    """State-dict key of the first convolution kernel in module order (the input convolution)."""
    conv = next((name for name, m in network.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return None if conv is None else f"{conv}.weight"


def _adapt_input_conv(
    network: nn.Module, target: Mapping[str, torch.Tensor], source: dict[str, torch.Tensor]
) -> list[str]:
    """Replace (in ``source``) the input kernel (O, C_src, *k) by one for the target's C_dst input channels.

    New kernel = sum over the C_src channels / C_dst, repeated C_dst times: an input with the same image on
    every channel then gives the pretrained response (for both 1 -> n and n -> 1 channels).
    """
    key = _input_conv_key(network)
    if key is None or key not in source or key not in target:
        return []
    kernel, wanted = source[key], target[key].shape
    only_inputs_differ = kernel.ndim == len(wanted) and kernel.shape[1] != wanted[1] and all(
        a == b for i, (a, b) in enumerate(zip(kernel.shape, wanted)) if i != 1
    )
    if not only_inputs_differ:
        return []
    summed = kernel.sum(dim=1, keepdim=True) / wanted[1]
    source[key] = summed.expand(-1, wanted[1], *wanted[2:]).clone()
    return [key]


def _backbone_prefix(network: nn.Module) -> str:
    return "backbone." if isinstance(getattr(network, "backbone", None), nn.Module) else ""


def _is_backbone_key(network: nn.Module, key: str) -> bool:
    """Whether ``key`` belongs to the U-Net: under ``backbone.``, or anything but a ``BasicUNet``'s final_conv."""
    prefix = _backbone_prefix(network)
    if prefix:
        return key.startswith(prefix)
    is_monai_basic_unet = isinstance(network, BasicUNet) and not isinstance(network, UNetBackbone)
    return not (is_monai_basic_unet and key.startswith("final_conv."))


def _backbone_fraction(network: nn.Module, target: Mapping[str, torch.Tensor], loaded: list[str]) -> float:
    """Loaded fraction of the U-Net's tensors (see :func:`_is_backbone_key`)."""
    keys, loaded_keys = [k for k in target if _is_backbone_key(network, k)], set(loaded)
    return sum(k in loaded_keys for k in keys) / max(1, len(keys))


def _metadata_differences(
    network: nn.Module, target: Mapping[str, torch.Tensor], metadata: dict | None, preprocessing: Mapping | None
) -> list[str]:
    """Layout and preprocessing differences from the pretraining metadata (none without metadata)."""
    if not metadata:
        return []
    prefix = _backbone_prefix(network)
    modules = [(n, m) for n, m in network.named_modules() if _is_backbone_key(network, f"{n}.")]
    problems = layout_differences(modules, backbone_widths(target, prefix), metadata.get("pretraining", {}))
    if preprocessing is not None:
        problems += preprocessing_differences(metadata.get("preprocessing", {}), preprocessing)
    return problems


def _mismatch_hint(network: nn.Module, report: WeightLoadReport) -> str:
    """A sentence comparing the target backbone's widths with the pretraining metadata, or a generic hint."""
    pretraining = (report.metadata or {}).get("pretraining", {})
    pretrained = pretraining.get("backbone_channels")
    mine = backbone_widths(network.state_dict(), _backbone_prefix(network))
    if pretrained is not None and mine is not None and list(mine) != list(pretrained):
        return f" The backbone widths differ: channels={list(pretrained)} pretrained vs {list(mine)} in this network."
    return (" Check that the network has the pretrained backbone's channel widths and that the file holds "
            "cover3d weights.")
