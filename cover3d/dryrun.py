"""Dry run of a bundle: what a setting will do on the data, without training.

``python -m cover3d.dryrun --config_file bundles/cover_ct/train.json [--key value ...]`` takes the same overrides
as ``monai.bundle run`` and reuses the bundle's own objects (``preprocessing``, ``pair_transform``,
``network_def``, ``loss``, ``optimizer``, ``train#trainer``), so it describes exactly what the real run would do:
voxel size and shapes after preprocessing vs patch and context, the fraction of supervised voxels that are
foreground and within the pyramid's reach (the figures a real run logs as ``foreground_fraction`` and
``reach_fraction``), the estimated peak memory of the run (framework baseline + cached training data + a step's
activations and the weights, gradients and AdamW moments) next to the dry run's own measured peak RSS,
iterations/s of a few real steps, and a WARNING line for each setting that will not work. Own options: ``--dryrun_volumes`` (volumes read, default 3), ``--dryrun_pairs``
(pairs per volume, 2), ``--dryrun_steps`` (real training steps, 3; 0 skips them), ``--dryrun_min_foreground``
(0.75), ``--dryrun_min_reach`` (0.99), ``--dryrun_output`` (also write the report as JSON).
"""

from __future__ import annotations

import copy
import math
import resource
import statistics
import sys
import time
from collections.abc import Mapping, Sequence

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.transforms import Compose

from cover3d.engine.checkpoints import write_json_atomic
from cover3d.transforms import CoverPair, foreground_fraction, fraction_within_reach

__all__ = ["dry_run", "estimate_step_memory", "peak_rss_bytes", "rss_bytes", "saved_activation_bytes"]

MiB = 1024**2
PROBE_SIZE = 32  # side of the probe patch whose saved activations are extrapolated (smallest size divisible by 16 x 2)


def rss_bytes() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc/self/statm``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def saved_activation_bytes(fn) -> int:
    """Bytes of the distinct tensor storages autograd saves for the backward pass while ``fn()`` runs.

    Own code because neither torch nor MONAI reports it: on CPU the process RSS peak cannot be reset, and the
    saved activations are what a step's peak memory grows with (on CUDA ``max_memory_allocated`` measures it).
    """
    storages: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


# Peak extra memory per voxel of a fp32 step of CoverNet(channels=(32, 64, 128, 256, 512)) defaults, measured at
# 96^3-128^3 by benchmarks/memory_by_patch.py (docs/performance.md "What fits where"): plain, and with checkpoint_backbone.
MEASURED_BYTES_PER_VOXEL = {False: 5.5 * 1024, True: 3.0 * 1024}
MEASURED_CHANNELS = (32, 64, 128, 256, 512)


def _probe_saved_bytes(network: torch.nn.Module, loss: torch.nn.Module, in_channels: int, device: torch.device,
                       amp: bool, amp_dtype: torch.dtype) -> int:
    """Saved activations of one ``PROBE_SIZE``^3 batch-1 forward + loss of a copy of ``network`` on ``device``."""
    probe = copy.deepcopy(network).to(device).train()
    size = (PROBE_SIZE,) * 3
    views = torch.rand((1, 2 * in_channels, *size), device=device)
    ddf, mask = torch.zeros((1, 3, *size), device=device), torch.ones((1, 1, *size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss(probe(views), ddf, mask)["loss"]

    return saved_activation_bytes(step)


def estimate_step_memory(
    network: torch.nn.Module,
    loss: torch.nn.Module,
    in_channels: int,
    patch_size: Sequence[int],
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
) -> int:
    """Estimated peak bytes of one training step of ``network`` (a ``CoverNet``) at ``patch_size`` x ``batch_size``.

    The measured per-voxel peak of the published widths (:data:`MEASURED_BYTES_PER_VOXEL`, plain or
    ``checkpoint_backbone``), scaled by the ratio of the activations this network saves for backward in a
    ``PROBE_SIZE``^3 step (on ``device``, under autocast when ``amp``) to those of the measured network (fp32), times
    voxels x batch, plus weights, gradients and the two AdamW moments (16 bytes per fp32 parameter).
    """
    from cover3d.networks import CoverNet

    checkpointed = bool(getattr(network, "checkpoint_backbone", False))
    reference = CoverNet(in_channels=1, channels=MEASURED_CHANNELS, checkpoint_backbone=checkpointed)
    ratio = _probe_saved_bytes(network, loss, in_channels, device, amp, amp_dtype) / _probe_saved_bytes(
        reference, loss, 1, device, False, amp_dtype
    )
    per_voxel = MEASURED_BYTES_PER_VOXEL[checkpointed] * ratio
    state = 16 * sum(p.numel() for p in network.parameters())
    return int(per_voxel * math.prod(patch_size) * batch_size + state)


def _parse(config_file: str | Sequence[str], override: Mapping) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(dict(override))
    return parser


def _read_volumes(parser: ConfigParser, count: int) -> list[dict]:
    """The first ``count`` training entries through the bundle's ``preprocessing``: name, spacing, shape, image."""
    preprocessing = Compose(parser.get_parsed_content("preprocessing"))
    volumes = []
    for entry in parser.get_parsed_content("train#datalist")[:count]:
        data = preprocessing(dict(entry))
        image = data["image"]
        spacing = [round(float(s), 3) for s in image.pixdim] if hasattr(image, "pixdim") else None
        name = str(entry["image"]).rsplit("/", 1)[-1]
        volumes.append({"name": name, "spacing_mm": spacing, "shape": list(image.shape[1:]), "data": data,
                        "bytes": sum(v.numel() * v.element_size() for v in data.values() if torch.is_tensor(v))})
    if not volumes:
        raise ValueError("the bundle's training datalist is empty")
    return volumes


def _size_warnings(volumes: Sequence[dict], patch_size: Sequence[int], context_size: Sequence[int] | None) -> list[str]:
    warnings = []
    for v in volumes:
        short = [i for i, (n, p) in enumerate(zip(v["shape"], patch_size)) if n < p]
        if short:
            padded = 1 - math.prod(min(n, p) for n, p in zip(v["shape"], patch_size)) / math.prod(patch_size)
            warnings.append(
                f"{v['name']}: preprocessed shape {tuple(v['shape'])} at {v['spacing_mm']} mm is smaller than the "
                f"patch {tuple(patch_size)} along axis {short}: {padded:.0%} of every patch is zero padding "
                "(lower patch_size, or pixdim for finer voxels)"
            )
        elif context_size is not None and any(n < c for n, c in zip(v["shape"], context_size)):
            v["note"] = f"smaller than the context {tuple(context_size)}: the context crop is zero-padded"
    return warnings


def _pair_figures(
    parser: ConfigParser, volumes: Sequence[dict], pairs_per_volume: int, seed: int
) -> tuple[list[dict], float]:
    """Seeded pairs of each volume from a copy of the bundle's ``pair_transform``, with their reach and foreground."""
    transform = copy.deepcopy(parser.get_parsed_content("pair_transform"))
    transform.set_random_state(seed=seed)
    reach = float(parser.get_parsed_content("network_def").reach)
    threshold = transform.background_threshold
    threshold = CoverPair().background_threshold if threshold is None else threshold
    pairs = []
    for v in volumes:
        figures = []
        for _ in range(pairs_per_volume):
            pair = transform(dict(v["data"]))
            pairs.append(pair)
            valid = pair["mask"] > 0.5
            largest = float(pair["ddf"].abs().amax(0, keepdim=True)[valid].max()) if valid.any() else 0.0
            figures.append(
                {
                    "supervised": float(pair["mask"].mean()),
                    "foreground": foreground_fraction(pair["image_b"], pair["mask"], threshold),
                    "within_reach": fraction_within_reach(pair["ddf"], pair["mask"], reach),
                    "largest_displacement": largest,
                }
            )
        v["pairs"] = figures
    return pairs, threshold


def _real_steps(parser: ConfigParser, pairs: Sequence[dict], steps: int) -> dict:
    """``steps`` iterations of the bundle's own trainer (no handlers: nothing is written) on ``pairs``."""
    batch_size = int(parser.get_parsed_content("batch_size"))
    data = [pairs[i % len(pairs)] for i in range(steps * batch_size)]
    parser["train#trainer#train_data_loader"] = DataLoader(data, batch_size=batch_size, shuffle=False)
    parser["train#trainer#train_handlers"] = []
    parser["train#trainer#max_epochs"] = 1
    parser["train#trainer#epoch_length"] = steps
    trainer = parser.get_parsed_content("train#trainer", instantiate=True)
    stamps, logged = [], []

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine) -> None:
        stamps.append(time.perf_counter())
        logged.append({k: float(engine.state.output[k]) for k in trainer.PAIR_STATS if k in engine.state.output})

    device = parser.get_parsed_content("device")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer.run()
    result = {"steps": steps, "batch_size": batch_size, "logged": logged}
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    result["seconds_first"] = times[0]
    result["it_per_s"] = 1 / statistics.median(times[1:] if len(times) > 1 else times)
    if device.type == "cuda":
        result["measured_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return result


def dry_run(
    config_file: str | Sequence[str],
    dryrun_volumes: int = 3,
    dryrun_pairs: int = 2,
    dryrun_steps: int = 3,
    dryrun_min_foreground: float = 0.75,
    dryrun_min_reach: float = 0.99,
    dryrun_output: str | None = None,
    **override,
) -> dict:
    """Describe what ``config_file`` (+ ``override``, as ``monai.bundle run`` takes them) will do; print it and return
    the report as a dict (``warnings`` lists every setting that will not work). Refuses bundles with neither a
    ``pair_transform`` (pretraining) nor a ``patch_size`` (segmentation)."""
    baseline_rss = rss_bytes()  # the framework (Python, torch, MONAI, cover3d) before any data or network
    parser = _parse(config_file, override)
    if "pair_transform" not in parser and "patch_size" not in parser:
        kinds = "a pretraining bundle (pair_transform) nor a patch-based one (patch_size)"
        raise ValueError(f"{config_file}: neither {kinds}")
    patch = [int(n) for n in parser.get_parsed_content("patch_size")]
    context = [int(n) for n in parser.get_parsed_content("context_size")] if "context_size" in parser else None
    volumes = _read_volumes(parser, dryrun_volumes)
    report = {"config_file": config_file, "override": dict(override), "patch_size": patch, "context_size": context}
    warnings = _size_warnings(volumes, patch, context)
    if "pair_transform" in parser:
        warnings += _pretraining_report(parser, volumes, report, dryrun_pairs, dryrun_steps,
                                        dryrun_min_foreground, dryrun_min_reach, baseline_rss)
    else:
        report["note"] = "segmentation bundle: no pair transform, so reach/foreground/memory figures do not apply"
        for v in volumes:
            if "label" in v["data"]:
                v["label_foreground"] = float((torch.as_tensor(v["data"]["label"]) > 0).float().mean())
    report["volumes"] = [{k: v for k, v in vol.items() if k != "data"} for vol in volumes]
    report["warnings"] = warnings
    _print_report(report)
    if dryrun_output:
        write_json_atomic(report, dryrun_output)
    return report


def _memory_estimate(parser: ConfigParser, volumes: Sequence[dict], step_bytes: int, baseline_rss: int,
                     device: torch.device) -> dict:
    """Estimated peak memory of the real run: ``baseline`` (this process's RSS before reading data: Python, torch,
    MONAI, cover3d), ``data`` (the preprocessed training volumes the run caches: the mean size of the volumes read
    here times their count) and ``step`` (:func:`estimate_step_memory`: activations + weights,
    gradients, AdamW moments; on the GPU when ``device`` is CUDA). ``peak_rss`` adds the step on CPU only."""
    cached = len(parser.get_parsed_content("train#datalist"))
    data = int(statistics.fmean(v["bytes"] for v in volumes) * cached)
    on_cpu = device.type != "cuda"
    return {"baseline": baseline_rss, "data": data, "cached_volumes": cached, "step": step_bytes,
            "peak_rss": baseline_rss + data + (step_bytes if on_cpu else 0)}


def _pretraining_report(parser, volumes, report, pairs_per_volume, steps, min_foreground, min_reach,
                        baseline_rss) -> list[str]:
    seed = int(parser.get_parsed_content("seed")) if "seed" in parser else 0
    pairs, threshold = _pair_figures(parser, volumes, pairs_per_volume, seed)
    network = parser.get_parsed_content("network_def")
    radii = list(network.pyramid.radii) if hasattr(network, "pyramid") else None
    device = parser.get_parsed_content("device")
    amp = bool(parser.get_parsed_content("amp"))
    amp_dtype = getattr(torch, parser.get_parsed_content("amp_dtype")) if "amp_dtype" in parser else torch.float16
    batch = int(parser.get_parsed_content("batch_size"))
    in_channels = int(parser.get_parsed_content("in_channels"))
    figures = [f for v in volumes for f in v["pairs"]]
    report.update(
        reach=network.reach, radii=radii, background_threshold=threshold, batch_size=batch, device=str(device),
        amp=amp and device.type == "cuda", amp_dtype=str(amp_dtype).replace("torch.", ""),
        mask_background=bool(parser.get_parsed_content("pair_transform").pair.mask_background),
        foreground_fraction=statistics.fmean(f["foreground"] for f in figures),
        reach_fraction=statistics.fmean(f["within_reach"] for f in figures),
        supervised_fraction=statistics.fmean(f["supervised"] for f in figures),
        largest_displacement=max(f["largest_displacement"] for f in figures),
    )
    if steps > 0:  # before the memory probe, so that the measured peak is the real steps' (the probe's is larger)
        report["steps"] = _real_steps(parser, pairs, steps)
        report["steps"]["measured_peak_rss_bytes"] = peak_rss_bytes()
    report["estimated_peak_bytes"] = estimate_step_memory(
        network, parser.get_parsed_content("loss"), in_channels, report["patch_size"], batch, device,
        report["amp"], amp_dtype,
    )
    report["memory"] = _memory_estimate(parser, volumes, report["estimated_peak_bytes"], baseline_rss, device)
    warnings = []
    for v in volumes:
        foreground = statistics.fmean(f["foreground"] for f in v["pairs"])
        if foreground < min_foreground:
            warnings.append(
                f"{v['name']}: only {foreground:.0%} of the supervised voxels are foreground (view b > {threshold}): "
                "the rest is empty background or padding (--mask_background True drops it from the mask)"
            )
    if report["reach_fraction"] < min_reach:
        warnings.append(
            f"only {report['reach_fraction']:.1%} of the valid voxels move <= the pyramid's reach of {network.reach} "
            f"voxels (radii {radii}, largest displacement {report['largest_displacement']:.1f} voxels; "
            f"want >= {min_reach:.0%}): raise radii or lower the deformation"
        )
    return warnings


def _print_report(report: Mapping) -> None:
    print(f"dry run of {report['config_file']} {report['override'] or ''}".rstrip())
    context = f", context {tuple(report['context_size'])}" if report["context_size"] else ""
    print(f"patch {tuple(report['patch_size'])}{context}")
    for v in report.get("volumes", []):
        line = f"  {v['name']}: {v['spacing_mm']} mm, shape after preprocessing {tuple(v['shape'])}"
        if "pairs" in v:
            fg = statistics.fmean(f["foreground"] for f in v["pairs"])
            reach = statistics.fmean(f["within_reach"] for f in v["pairs"])
            line += f"; supervised voxels foreground {fg:.1%}, within reach {reach:.1%}"
        if "label_foreground" in v:
            line += f"; labelled foreground {v['label_foreground']:.1%} of the volume"
        print(line + (f" ({v['note']})" if "note" in v else ""))
    if "note" in report:
        print(report["note"])
    if "reach" in report:
        print(
            f"supervised voxels: {report['supervised_fraction']:.1%} of the patch: the voxels of view b whose source "
            "point p + psi(p) lies inside view a's patch (the loss's mask). Set by the deformation "
            "(pair_transform#deformation), patch_size, mask_margin and the seed, not by the images"
            + (" (mask_background True also drops view b's background)" if report["mask_background"] else "")
            + "; the same on every dataset for one setting."
        )
        print(
            f"of the supervised voxels: foreground (view b > {report['background_threshold']}, mask_background "
            f"{report['mask_background']}) {report['foreground_fraction']:.1%}, within reach ({report['reach']} "
            f"voxels, radii {report['radii']}) {report['reach_fraction']:.1%}; largest displacement "
            f"{report['largest_displacement']:.1f} voxels"
        )
        precision = report["amp_dtype"] if report["amp"] else "fp32"
        memory = report["memory"]
        step = (
            f"a step {memory['step'] / MiB:,.0f} MiB ({precision}, batch {report['batch_size']}: activations, the "
            f"measured 5.5 KiB/voxel of widths 32-512 (3 KiB with checkpoint_backbone) scaled by this network's saved "
            f"activations in a {PROBE_SIZE}^3 step, + weights, gradients and AdamW moments)"
        )
        parts = (f"framework baseline {memory['baseline'] / MiB:,.0f} MiB (RSS before reading data) + cached data "
                 f"{memory['data'] / MiB:,.0f} MiB ({memory['cached_volumes']} preprocessed training volumes)")
        if report["device"].startswith("cuda"):
            print(f"estimated peak GPU memory of {step}; estimated process RSS {memory['peak_rss'] / MiB:,.0f} MiB "
                  f"= {parts}")
        else:
            print(f"estimated peak memory of the run: {memory['peak_rss'] / MiB:,.0f} MiB = {parts} + {step}")
    if "steps" in report:
        s = report["steps"]
        line = f"{s['steps']} real steps: {s['it_per_s']:.2f} it/s after a first step of {s['seconds_first']:.1f} s"
        line += (f"; measured peak RSS of this dry run {s['measured_peak_rss_bytes'] / MiB:,.0f} MiB (ru_maxrss; it "
                 f"holds {len(report['volumes'])} of the {report['memory']['cached_volumes']} volumes the run caches)")
        if "measured_peak_bytes" in s:
            line += f", GPU {s['measured_peak_bytes'] / MiB:,.0f} MiB (torch.cuda.max_memory_allocated)"
        print(line)
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
    if not report["warnings"]:
        print("no warnings")


def _cli(config_file: str | Sequence[str], **kwargs) -> None:
    """python -m cover3d.dryrun --config_file <bundle>/train.json [--dryrun_* value] [--key value ...]"""
    dry_run(config_file, **kwargs)


def main() -> None:
    import fire  # a MONAI bundle dependency; parses overrides exactly as `python -m monai.bundle run` does

    fire.Fire(_cli)


if __name__ == "__main__":
    main()
