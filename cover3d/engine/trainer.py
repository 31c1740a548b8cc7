"""Pretraining engine: one COVER iteration (siamese forward, CoverLoss, backward, clipping, optimizer step)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from cover3d.metrics import endpoint_error

__all__ = ["CoverTrainer", "prepare_pair_batch", "scalar_outputs"]


def prepare_pair_batch(
    batch: Mapping[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``{image, image_b, ddf, mask}`` batch -> ``(cat[view a, view b] (B, 2C, *S), (ddf (B,3,*S), mask (B,1,*S)))``."""
    inputs = torch.cat([batch["image"], batch["image_b"]], dim=1)
    moved = [torch.as_tensor(t).to(device=device, non_blocking=non_blocking, **kwargs) for t in (inputs, batch["ddf"], batch["mask"])]
    return moved[0], (moved[1], moved[2])


def scalar_outputs(output: Mapping) -> dict[str, float]:
    """The scalar entries of a :class:`CoverTrainer` iteration output (losses, EPE, lr, it/s) as floats, for logging."""
    return {k: float(v) for k, v in output.items() if k.startswith("loss") or k in CoverTrainer.SCALARS}


class CoverTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration trains :class:`~cover3d.networks.CoverNet` with
    :class:`~cover3d.losses.CoverLoss`: the loss returns several terms and the mask must reach it, which the
    parent's ``loss_function(pred, target)`` iteration cannot express.

    Extra args: ``clip_grad_norm`` (max gradient norm, ``None`` to disable). Uses the parent's ``amp`` and
    ``amp_kwargs`` (autocast on the network's device type; gradient scaling on CUDA). ``prepare_batch`` defaults to
    :func:`prepare_pair_batch`. Iteration output: ``image`` (the stacked views), ``label`` (true field), ``pred``
    (predicted field, detached), every loss term, ``loss``, ``epe`` and ``epe_identity`` (mean end-point error of the
    prediction and of the zero field over valid voxels, voxels), ``lr`` and ``it_per_s`` (over the last 10 iterations),
    and the batch means of the pair statistics ``reach_fraction`` / ``foreground_fraction`` when the batch has them
    (``CoverPaird`` with ``reach`` / ``background_threshold``).
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
        with torch.autocast(device_type, enabled=engine.amp, **engine.amp_kwargs):
            output = engine.network(inputs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function(output, ddf, mask)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = engine.scaler if engine.amp else None
        (scaler.scale(terms["loss"]) if scaler is not None else terms["loss"]).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
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
            **{k: v.detach() for k, v in terms.items()},
            "epe": endpoint_error(pred.float(), ddf, mask).mean(),
            "epe_identity": endpoint_error(torch.zeros_like(ddf), ddf, mask).mean(),
            "lr": engine.optimizer.param_groups[0]["lr"],
            "it_per_s": rate,
            **{k: torch.as_tensor(batchdata[k], dtype=torch.float64).mean() for k in self.PAIR_STATS if k in batchdata},
        }
        return engine.state.output
