"""One pretraining loss from a base loss and weighted pretext terms, each naming the batch entries it needs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["PretextLoss", "batch_keys_of"]


def batch_keys_of(module: nn.Module) -> tuple[str, ...]:
    """The batch entries ``module.forward(output, **entries)`` takes (its ``batch_keys``; default ``ddf``, ``mask``)."""
    return tuple(getattr(module, "batch_keys", ("ddf", "mask")))


class PretextLoss(nn.Module):
    """``loss = base(output)["loss"] + sum_k weights[k] * extras[k](output)``, each term logged as ``loss_<k>``.

    Args:
        base: a loss returning a dict with ``loss`` (e.g. :class:`~cover3d.losses.CoverLoss`, possibly with zero
            weights to train a baseline on the pretext alone while still logging ``loss_vec``/``loss_con``).
        extras: name -> loss module returning a scalar; each declares ``batch_keys`` (the batch entries its
            ``forward(output, **entries)`` takes, e.g. ``("ddf", "mask")`` or ``("image_b_clean",)``).
        weights: name -> weight, one per extra.

    ``batch_keys`` is the union of the terms' keys, so :class:`~cover3d.engine.CoverTrainer` hands over exactly
    what they need; ``forward(output, **batch_entries) -> dict`` of scalars. Heads owned by the extras are
    parameters of this module: put them in the optimizer and the checkpoint (the ``pretext_*.json`` overlays do).
    """

    def __init__(self, base: nn.Module, extras: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(extras) != set(weights):
            raise ValueError(f"weights must name exactly the extras {sorted(extras)}, got {sorted(weights)}")
        self.base = base
        self.extras = nn.ModuleDict(dict(extras))
        self.weights = {k: float(v) for k, v in weights.items()}

    @property
    def batch_keys(self) -> tuple[str, ...]:
        keys = [*batch_keys_of(self.base), *(k for m in self.extras.values() for k in batch_keys_of(m))]
        return tuple(dict.fromkeys(keys))

    def forward(self, output: dict, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        def entries(module: nn.Module) -> dict[str, torch.Tensor]:
            return {k: batch[k] for k in batch_keys_of(module)}

        terms = dict(self.base(output, **entries(self.base)))
        total = terms["loss"]
        for name, term in self.extras.items():
            terms[f"loss_{name}"] = term(output, **entries(term))
            total = total + self.weights[name] * terms[f"loss_{name}"]
        terms["loss"] = total
        return terms
