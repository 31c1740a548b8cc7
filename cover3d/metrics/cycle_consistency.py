"""Pseudo-target fields between two volumes without a known deformation, kept where they are cycle-consistent
(inverse consistency of a network's two predictions, :func:`inverse_consistency_map`)."""

from __future__ import annotations

import torch

from cover3d.fields import warp
from cover3d.metrics.inverse_consistency import inverse_consistency_map

__all__ = ["cycle_consistent_field"]


@torch.no_grad()
def cycle_consistent_field(
    network: torch.nn.Module, image_a: torch.Tensor, image_b: torch.Tensor, threshold: float = 1.0
) -> dict[str, torch.Tensor]:
    """Predict ``psi_ab`` (``x_b ~ warp(x_a, psi_ab)``) and ``psi_ba`` with a :class:`~cover3d.networks.CoverNet` and
    keep the voxels of view b whose cycle residual ``|psi_ab(p) + psi_ba(p + psi_ab(p))|`` is ``<= threshold``
    voxels and whose correspondence ``p + psi_ab(p)`` lies inside view a.

    ``image_a``, ``image_b``: ``(B, C, *S)``. Returns ``ddf`` ``(B, 3, *S)`` (``psi_ab``, voxels), ``mask``
    ``(B, 1, *S)`` (1 = kept; usable as a pair's ``mask`` for training on the pseudo-target) and ``residual``
    ``(B, 1, *S)`` (voxels). The network is run in eval mode and left in the mode it was in.
    """
    was_training = network.training
    network.eval()
    psi_ab = network(torch.cat([image_a, image_b], dim=1)).float()
    psi_ba = network(torch.cat([image_b, image_a], dim=1)).float()
    network.train(was_training)
    residual = inverse_consistency_map(psi_ab, psi_ba)
    inside = warp(torch.ones_like(residual), psi_ab) > 0.999
    return {"ddf": psi_ab, "mask": ((residual <= threshold) & inside).float(), "residual": residual}
