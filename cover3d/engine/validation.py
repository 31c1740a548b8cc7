"""Field accuracy on fixed (seeded) pairs: used during pretraining and to check saved weights."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable

from cover3d.engine.checkpoints import write_json_atomic
from cover3d.metrics import endpoint_error

__all__ = ["fixed_pairs", "field_accuracy", "report_field_accuracy", "FieldValidation"]

logger = logging.getLogger(__name__)


def fixed_pairs(
    volumes: Sequence[Mapping], pair_transform: Randomizable, num_pairs: int, seed: int = 0
) -> list[dict]:
    """``num_pairs`` training pairs made from ``volumes`` (cycled) by a seeded copy of ``pair_transform``:
    the same every call, so validation numbers are comparable across epochs and runs."""
    if not len(volumes):
        raise ValueError("fixed_pairs needs at least one volume")
    transform = copy.deepcopy(pair_transform)
    transform.set_random_state(seed=seed)
    return [transform(dict(volumes[i % len(volumes)])) for i in range(num_pairs)]


@torch.no_grad()
def field_accuracy(
    network: torch.nn.Module, pairs: Sequence[Mapping], device: str | torch.device | None = None, amp: bool = False
) -> dict[str, float]:
    """Mean end-point error (voxels, valid voxels) of ``network``'s field and of the zero field over ``pairs``
    (dicts with ``image``, ``image_b`` (C,*S), ``ddf`` (3,*S), ``mask`` (1,*S)). Returns ``{"epe", "epe_identity"}``."""
    was_training = network.training
    network.eval()
    device = torch.device(device) if device is not None else next(network.parameters()).device
    epe, identity = [], []
    for pair in pairs:
        inputs = torch.cat([torch.as_tensor(pair["image"]), torch.as_tensor(pair["image_b"])], 0)[None].to(device)
        ddf = torch.as_tensor(pair["ddf"])[None].to(device)
        mask = torch.as_tensor(pair["mask"])[None].to(device)
        with torch.autocast(device.type, enabled=amp):
            pred = network(inputs)
        epe.append(endpoint_error(pred.float(), ddf, mask))
        identity.append(endpoint_error(torch.zeros_like(ddf), ddf, mask))
    network.train(was_training)
    return {"epe": torch.cat(epe).mean().item(), "epe_identity": torch.cat(identity).mean().item()}


def report_field_accuracy(
    network: torch.nn.Module, pairs: Sequence[Mapping], output_file: str | os.PathLike, amp: bool = False
) -> dict[str, float]:
    """:func:`field_accuracy` plus the number of pairs, logged and written as JSON to ``output_file``."""
    result = {**field_accuracy(network, pairs, amp=amp), "pairs": len(pairs)}
    write_json_atomic(result, output_file)
    logger.info(f"field accuracy on {len(pairs)} pairs: EPE {result['epe']:.3f} vox, identity "
                f"{result['epe_identity']:.3f} vox; wrote {Path(output_file).resolve()}")
    return result


class FieldValidation:
    """Every ``interval`` epochs, put ``val_epe`` and ``val_epe_identity`` (see :func:`field_accuracy`) into
    ``engine.state.metrics`` so MONAI's stats / TensorBoard handlers attached after it report them. Written here
    because MONAI's metric handlers call metrics without a mask, and EPE only means something on valid voxels."""

    def __init__(
        self, pairs: Sequence[Mapping], network: torch.nn.Module, interval: int = 1, amp: bool = False
    ) -> None:
        self.pairs = pairs
        self.network = network
        self.interval = interval
        self.amp = amp

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        result = field_accuracy(self.network, self.pairs, amp=self.amp)
        engine.state.metrics["val_epe"] = result["epe"]
        engine.state.metrics["val_epe_identity"] = result["epe_identity"]
        logger.info(
            f"epoch {engine.state.epoch}: validation EPE {result['epe']:.3f} vox (identity {result['epe_identity']:.3f})"
        )
