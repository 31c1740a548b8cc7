"""Forward-backward cycle consistency of the predicted fields."""

from __future__ import annotations

import torch
from torch import nn

from cover3d.losses.cover import masked_mean
from cover3d.metrics import inverse_consistency_map
from cover3d.networks.blocks.pyramid import VectorPyramid

__all__ = ["CycleConsistencyLoss"]


class CycleConsistencyLoss(nn.Module):
    """Masked mean over view b's valid voxels of ``|psi_ab(p) + psi_ba(p + psi_ab(p))|`` (voxels), with
    ``psi_ab = output["ddf"]`` and ``psi_ba`` the ``pyramid`` run on the already computed features with the views
    swapped (:func:`~cover3d.metrics.inverse_consistency_map`). 0 for an exact inverse pair.

    Args:
        pyramid: the network's :class:`~cover3d.networks.VectorPyramid`, held by reference and not registered as
            a submodule: its parameters are the network's (already in the optimizer and the checkpoint).

    ``forward(output, mask (B,1,*S)) -> scalar``.
    """

    batch_keys = ("mask",)

    def __init__(self, pyramid: VectorPyramid) -> None:
        super().__init__()
        object.__setattr__(self, "pyramid", pyramid)  # a reference, not a submodule (see above)

    def backward_field(self, output: dict) -> torch.Tensor:
        """``psi_ba`` ``(B, 3, *S)``: the field with ``x_a ~ warp(x_b, psi_ba)``."""
        return self.pyramid(output["features_b"], output["features_a"])[-1]

    def forward(self, output: dict, mask: torch.Tensor) -> torch.Tensor:
        residual = inverse_consistency_map(output["ddf"].float(), self.backward_field(output).float())
        return masked_mean(residual, mask)
