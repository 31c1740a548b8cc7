"""Pretraining engine: one COVER iteration (siamese forward, CoverLoss, backward, clipping, optimizer step)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.data import MetaTensor
from monai.utils import CommonKeys as Keys
from torch.profiler import record_function

from cover3d.metrics import endpoint_error

__all__ = ["CoverTrainer", "loss_inputs", "prepare_pair_batch", "scalar_outputs"]

DEFAULT_BATCH_KEYS = ("ddf", "mask")


def prepare_pair_batch(
    batch: Mapping[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``{image, image_b, ddf, mask}`` batch -> ``(cat[view a, view b] (B, 2C, *S), (ddf (B,3,*S), mask (B,1,*S)))``."""
    inputs = torch.cat([batch["image"], batch["image_b"]], dim=1)
    moved = [torch.as_tensor(t).to(device=device, non_blocking=non_blocking, **kwargs) for t in (inputs, batch["ddf"], batch["mask"])]
    return moved[0], (moved[1], moved[2])


def scalar_outputs(output: Mapping) -> dict[str, float]:
    """The scalar entries of a :class:`CoverTrainer` iteration output (losses, EPE, lr, it/s, ``health_*`` added by
    :class:`~cover3d.engine.RepresentationHealth`) as floats, for logging."""
    keep = lambda k: k.startswith(("loss", "health_")) or k in CoverTrainer.SCALARS  # noqa: E731
    return {k: float(v) for k, v in output.items() if keep(k)}


def loss_inputs(
    loss_function: torch.nn.Module, batch: Mapping, ddf: torch.Tensor, mask: torch.Tensor, device: torch.device,
    non_blocking: bool = False,
) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``loss_function(output, **kwargs)``: the batch entries named by its ``batch_keys``
    attribute (default ``("ddf", "mask")``), on ``device``; ``ddf`` and ``mask`` are the prepared ones.
    Raises ``KeyError`` naming the loss and the missing keys when the batch lacks one (a transform is missing)."""
    keys = tuple(getattr(loss_function, "batch_keys", DEFAULT_BATCH_KEYS))
    prepared = {"ddf": ddf, "mask": mask}
    missing = [k for k in keys if k not in prepared and k not in batch]
    if missing:
        raise KeyError(f"{type(loss_function).__name__} needs batch keys {missing}, the batch has {sorted(batch)}")
    return {
        k: prepared[k] if k in prepared else torch.as_tensor(batch[k]).to(device=device, non_blocking=non_blocking)
        for k in keys
    }


class CoverTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration trains :class:`~cover3d.networks.CoverNet` with
    :class:`~cover3d.losses.CoverLoss`: the loss returns several terms and the mask must reach it, which the
    parent's ``loss_function(pred, target)`` iteration cannot express.

    Loss interface: ``loss_function(network_output, **batch_entries)`` where the entries are those named by the
    loss's ``batch_keys`` attribute (default ``("ddf", "mask")``, which is :class:`~cover3d.losses.CoverLoss`'s
    ``forward(output, ddf, mask)``); a pretext that needs more (a clean image, ...) declares it, so the trainer has
    no per-pretext code (see :func:`loss_inputs`). The loss returns a dict of scalars with the total under ``loss``.

    Extra args: ``clip_grad_norm`` (max gradient norm over the optimizer's parameters, so heads owned by the loss
    are clipped too; ``None`` to disable). Uses the parent's ``amp`` and ``amp_kwargs`` (autocast on the network's
    device type; gradient scaling on CUDA), ``compile`` and ``compile_kwargs`` (``torch.compile`` of the network;
    the loss and the optimizer step stay eager) and ``to_kwargs`` (e.g. ``{"memory_format":
    torch.channels_last_3d}`` for channels-last inputs). ``prepare_batch`` defaults to :func:`prepare_pair_batch`.
    The iteration's parts are ``torch.profiler`` ranges ``cover3d.loss``, ``cover3d.backward`` and
    ``cover3d.optimizer`` (the network adds its own; ``benchmarks/gpu_check.py`` reads them). Iteration
    output: ``image`` (the stacked views), ``label`` (true field), ``pred`` (predicted field, detached),
    ``features`` (view b's full-resolution backbone features ``(B, C, *S)``, detached, for
    :class:`~cover3d.engine.RepresentationHealth`), every loss term, ``loss``, ``epe`` and ``epe_identity`` (mean
    end-point error of the prediction and of the zero field over valid voxels, voxels), ``lr`` and ``it_per_s``
    (over the last 10 iterations), and the batch means of the pair statistics ``reach_fraction`` /
    ``foreground_fraction`` when the batch has them (``CoverPaird`` with ``reach`` / ``background_threshold``).
    """

    PAIR_STATS = ("reach_fraction", "foreground_fraction")
    SCALARS = ("epe", "epe_identity", "lr", "it_per_s", *PAIR_STATS)

    def __init__(self, *args, clip_grad_norm: float | None = 1.0, **kwargs) -> None:
        kwargs.setdefault("prepare_batch", prepare_pair_batch)
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)
        self.clip_grad_norm = clip_grad_norm
        self._stamps: deque[float] = deque(maxlen=11)

    def _iteration(self, engine: CoverTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        inputs, (ddf, mask) = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        device_type = inputs.device.type
        # as SupervisedTrainer(compile=True) does: the compiled network gets a plain tensor (no MetaTensor)
        network_inputs = inputs.as_tensor() if engine.compile and isinstance(inputs, MetaTensor) else inputs
        with torch.autocast(device_type, enabled=engine.amp, **engine.amp_kwargs):
            output = engine.network(network_inputs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            kwargs = loss_inputs(engine.loss_function, batchdata, ddf, mask, inputs.device, engine.non_blocking)
            with record_function("cover3d.loss"):
                terms = engine.loss_function(output, **kwargs)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = engine.scaler if engine.amp else None
        with record_function("cover3d.backward"):
            (scaler.scale(terms["loss"]) if scaler is not None else terms["loss"]).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        with record_function("cover3d.optimizer"):
            if scaler is not None:
                scaler.unscale_(engine.optimizer)
            if self.clip_grad_norm is not None:
                params = [p for group in engine.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            if scaler is not None:
                scaler.step(engine.optimizer)
                scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        pred = output["ddf"].detach()
        self._stamps.append(time.perf_counter())
        rate = (len(self._stamps) - 1) / (self._stamps[-1] - self._stamps[0]) if len(self._stamps) > 1 else float("nan")
        engine.state.output = {
            Keys.IMAGE: inputs,
            Keys.LABEL: ddf,
            Keys.PRED: pred,
            "features": output["features_b"][-1].detach(),
            **{k: v.detach() for k, v in terms.items()},
            "epe": endpoint_error(pred.float(), ddf, mask).mean(),
            "epe_identity": endpoint_error(torch.zeros_like(ddf), ddf, mask).mean(),
            "lr": engine.optimizer.param_groups[0]["lr"],
            "it_per_s": rate,
            **{k: torch.as_tensor(batchdata[k], dtype=torch.float64).mean() for k in self.PAIR_STATS if k in batchdata},
        }
        return engine.state.output
