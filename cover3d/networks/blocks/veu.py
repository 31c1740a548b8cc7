"""Vector Embedding Unit (VEU) with multi-vector integration (MVI): soft-argmax of local feature correlation.

For every voxel ``p`` of view b and offsets ``o`` in ``{-r..r}^3``::

    v(p) = sum_o softmax_o(<q(p), k(p + o)> / sqrt(head_dim)) * o

per channel group (head); the group vectors are averaged (MVI). ``q`` are view b's features, ``k`` view a's
(already warped) features, so ``x_b(p) ~ x_a(p + v(p))``: ``v`` is a backward displacement in voxels of the
features' grid. Neighbours outside the volume are removed from the softmax (not scored as zero).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["offset_template", "neighbour_valid", "vector_embedding_reference", "VectorEmbeddingUnit"]


def offset_template(radius: int, spatial_dims: int = 3, device=None, dtype=torch.float32) -> torch.Tensor:
    """All integer offsets in ``{-radius..radius}^spatial_dims`` as a ``(K, spatial_dims)`` tensor (voxels), row-major."""
    offsets = list(itertools.product(range(-radius, radius + 1), repeat=spatial_dims))
    return torch.tensor(offsets, device=device, dtype=dtype)


def neighbour_valid(offset: tuple[int, ...], shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Boolean ``shape`` tensor: True where ``p + offset`` lies inside a grid of ``shape``."""
    valid = torch.ones((), dtype=torch.bool, device=device)
    for axis, (o, n) in enumerate(zip(offset, shape)):
        idx = torch.arange(n, device=device) + o
        axis_valid = (idx >= 0) & (idx < n)
        view = [1] * len(shape)
        view[axis] = n
        valid = valid & axis_valid.view(view)
    return valid


def _check_inputs(query: torch.Tensor, key: torch.Tensor, groups: int) -> None:
    if query.shape != key.shape:
        raise ValueError(f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}")
    if query.ndim not in (4, 5):
        raise ValueError(f"expected (B, C, *spatial) with 2 or 3 spatial dims, got {tuple(query.shape)}")
    if query.shape[1] % groups:
        raise ValueError(f"channels ({query.shape[1]}) must be divisible by groups ({groups})")


def vector_embedding_reference(query: torch.Tensor, key: torch.Tensor, radius: int, groups: int = 1) -> torch.Tensor:
    """Reference VEU + MVI that materialises the full local cost volume (simple and obviously right; for tests).

    Args:
        query: view b features ``(B, C, *S)``.
        key: view a features ``(B, C, *S)`` (same grid).
        radius: window radius ``r`` (window ``2r+1`` per axis).
        groups: number of channel groups J (MVI); ``C % J == 0``.

    Returns:
        ``(B, len(S), *S)`` float32 displacement in voxels of this grid, averaged over the J groups.
    """
    _check_inputs(query, key, groups)
    b, c, *spatial = query.shape
    nd = len(spatial)
    head = c // groups
    q = query.float().reshape(b, groups, head, *spatial)
    k = F.pad(key.float(), (radius, radius) * nd).reshape(b, groups, head, *[n + 2 * radius for n in spatial])
    offsets = offset_template(radius, nd, device=query.device)
    logits = []
    for o in offsets.long().tolist():
        window = tuple(slice(radius + oi, radius + oi + n) for oi, n in zip(o, spatial))
        score = (q * k[(..., *window)]).sum(2) / math.sqrt(head)
        logits.append(score.masked_fill(~neighbour_valid(tuple(o), tuple(spatial), query.device), float("-inf")))
    prob = torch.softmax(torch.stack(logits, dim=2), dim=2)  # (B, J, K, *S)
    vectors = torch.einsum("bjk...,kd->bjd...", prob, offsets)
    return vectors.mean(1)


class VectorEmbeddingUnit(nn.Module):
    """VEU + MVI as a module: ``forward(query, key) -> (B, 3, *S)`` displacement (voxels of the input grid).

    Args:
        radius: window radius r.
        groups: channel groups J whose vectors are averaged.
    """

    def __init__(self, radius: int, groups: int = 1) -> None:
        super().__init__()
        if radius < 1 or groups < 1:
            raise ValueError(f"radius and groups must be >= 1, got radius={radius}, groups={groups}")
        self.radius = radius
        self.groups = groups

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return vector_embedding_reference(query, key, self.radius, self.groups)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, groups={self.groups}"
