"""Run a bundle's trainer as ``monai.bundle run`` would, and dump what the distributed tests compare.

``python tests/bundle_worker.py OUT CONFIGS_JSON OVERRIDES_JSON [STOP_AT]`` (alone or under ``torchrun``) parses the
config files with the overrides, runs ``initialize``, the trainer and ``finalize``, and writes ``OUT/rank<r>.pt``:
final parameters, the gradients of the first iteration, and the learning rate, loss and first view
(``batch["image"]``, what the rank drew) of every iteration. With ``STOP_AT`` it raises after that iteration (a crash).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser


def main(out: str, configs: str, overrides: str, stop_at: str = "0") -> None:
    logging.basicConfig(level=logging.INFO)  # as monai.bundle run's logging.conf: cover3d's messages on the console
    parser = ConfigParser()
    parser.read_config(json.loads(configs))
    parser.update(json.loads(overrides))
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network")
    record = {"lr": [], "loss": [], "images": [], "first_gradients": None}

    @trainer.on(Events.ITERATION_COMPLETED)
    def keep(engine):
        record["lr"].append(engine.state.output["lr"])
        record["loss"].append(float(engine.state.output["loss"]))
        record["images"].append(torch.as_tensor(engine.state.batch["image"]).detach().clone())
        if record["first_gradients"] is None:
            record["first_gradients"] = torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])
        if engine.state.iteration == int(stop_at):
            raise RuntimeError(f"simulated crash after iteration {stop_at}")

    try:
        trainer.run()
    finally:
        record["parameters"] = torch.cat([p.detach().flatten() for p in network.parameters()])
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(record, Path(out) / f"rank{idist.get_rank()}.pt")
        if "finalize" in parser:
            parser.get_parsed_content("finalize")


if __name__ == "__main__":
    main(*sys.argv[1:])
