"""Pieces of a distributed (``torchrun``) run that DDP itself does not cover."""

from __future__ import annotations

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["AverageLossGradients"]


class AverageLossGradients:
    """Average across ranks the gradients of a loss module's own parameters (a pretext head), after the backward pass
    and before clipping and the optimizer step. DDP averages the network's gradients only; without this, each rank's
    head would drift apart. Does nothing in a single-process run or for a loss without parameters."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.parameters = [p for p in module.parameters() if p.requires_grad]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        world = idist.get_world_size()
        if world == 1 or not self.parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        for parameter, chunk in zip(self.parameters, flat.split([g.numel() for g in grads])):
            parameter.grad = chunk.view_as(parameter).clone()
