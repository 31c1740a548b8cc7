"""Atomic best-model saving for MONAI evaluators, resumable."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from cover3d.engine.checkpoints import save_atomic, write_json_atomic

__all__ = ["BestCheckpointSaver"]

logger = logging.getLogger(__name__)


class BestCheckpointSaver:
    """Attach to a MONAI evaluator: at each new best key metric, atomically write the network's plain state dict.

    MONAI's evaluators track the best key metric (``state.best_metric``, ``state.best_metric_epoch``); when it
    improves, this writes ``save_dir/filename`` (``torch.save`` of the state dict, via a temporary file and a
    rename) and ``save_dir/<filename stem>.json`` (``{"metric", "value", "epoch"}``). With ``resume``, an
    existing JSON record restores the best value when attached, so a resumed run does not replace a better
    model with a worse one. Written because MONAI's ``CheckpointSaver(save_key_metric=True)`` writes
    non-atomically (``DiskSaver(atomic=False)``) and forgets the best value on resumption.
    """

    def __init__(
        self, save_dir: str | os.PathLike, network: nn.Module, filename: str = "model.pt", resume: bool = True
    ) -> None:
        self.path = Path(save_dir) / filename
        self.record = self.path.with_suffix(".json")
        self.network = network
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        if self.resume and self.record.is_file():
            record = json.loads(self.record.read_text())
            engine.state.best_metric, engine.state.best_metric_epoch = record["value"], record["epoch"]
            logger.info(f"best {record['metric']} so far: {record['value']} (epoch {record['epoch']}, {self.path})")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        network = getattr(self.network, "module", self.network)  # DDP / DataParallel: no "module." prefix
        save_atomic(network.state_dict(), self.path)
        state = engine.state
        record = {"metric": state.key_metric_name, "value": float(state.best_metric), "epoch": state.epoch}
        write_json_atomic(record, self.record)
        logger.info(f"new best {record['metric']} {record['value']:.4f} at epoch {record['epoch']}: wrote {self.path}")
