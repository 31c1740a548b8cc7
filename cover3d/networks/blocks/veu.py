"""Vector Embedding Unit (VEU) with multi-vector integration (MVI): soft-argmax of local feature correlation.

For every voxel ``p`` of view b and offsets ``o`` in ``{-r..r}^3``::

    v(p) = sum_o softmax_o(<q(p), k(p + o)> / sqrt(head_dim)) * o

per channel group (head); the group vectors are averaged (MVI). ``q`` are view b's features, ``k`` view a's
(already warped) features, so ``x_b(p) ~ x_a(p + v(p))``: ``v`` is a backward displacement in voxels of the
features' grid. Neighbours outside the volume are removed from the softmax (not scored as zero).

Three implementations with the same result: :func:`vector_embedding` streams over the offsets and never stores the
local cost volume (the default, see :mod:`cover3d.networks.blocks.veu_streaming`); :func:`vector_embedding_fused` is
block-sparse neighbourhood attention in one compiled ``flex_attention`` kernel, no loop over offsets (for CUDA, see
:mod:`cover3d.networks.blocks.veu_fused`); :func:`vector_embedding_reference` materialises the cost volume (simple,
for tests and benchmarks). All compute logits and softmax in float32 (float64 inputs stay float64) with autocast
disabled, so bf16/fp16 features under AMP do not degrade the soft-argmax.
"""

from __future__ import annotations

import itertools
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from cover3d.networks.blocks.veu_fused import FusedVectorEmbedding, compiled_flex_attention
from cover3d.networks.blocks.veu_streaming import StreamingVectorEmbedding, streaming_forward

__all__ = [
    "offset_template",
    "neighbour_valid",
    "vector_embedding",
    "vector_embedding_fused",
    "vector_embedding_reference",
    "VectorEmbeddingUnit",
]


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


def _full_precision(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as float32 (float64 kept, for gradcheck)."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    return query.to(dtype), key.to(dtype)


def _autocast_off(device: torch.device):
    """Context disabling autocast on ``device`` (a no-op context where autocast does not exist)."""
    return torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()


def vector_embedding(query: torch.Tensor, key: torch.Tensor, radius: int, groups: int = 1) -> torch.Tensor:
    """Streaming VEU + MVI: same inputs and result as :func:`vector_embedding_reference`, with O(groups * voxels)
    extra memory instead of O(window^d * groups * voxels); gradients recompute each offset's probability."""
    _check_inputs(query, key, groups)
    offsets = [tuple(o) for o in offset_template(radius, query.ndim - 2).long().tolist()]
    with _autocast_off(query.device):
        if torch.jit.is_tracing():  # autograd Functions cannot be exported; inference needs no custom backward
            return streaming_forward(*_full_precision(query, key), offsets, groups)[0].mean(1)
        return StreamingVectorEmbedding.apply(*_full_precision(query, key), offsets, groups)


def vector_embedding_fused(query: torch.Tensor, key: torch.Tensor, radius: int, groups: int = 1) -> torch.Tensor:
    """Fused VEU + MVI: same inputs and result as :func:`vector_embedding_reference`, as neighbourhood attention in
    compiled ``flex_attention`` kernels (forward and a backward of two more forward passes); O(channels * voxels)
    memory. Trains on CUDA; on a CPU it only infers: torch's compiled CPU kernel returns no log-sum-exp, which the
    backward needs, so gradients there raise (train with ``"streaming"``, which is also faster on a CPU).

    Raises:
        NotImplementedError: gradients requested for CPU tensors.
    """
    _check_inputs(query, key, groups)
    if query.device.type == "cpu" and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
        raise NotImplementedError(
            "the fused VEU has no backward on a CPU (torch's compiled CPU flex_attention returns no log-sum-exp): "
            "train on a CPU with the 'streaming' VEU"
        )
    with _autocast_off(query.device):
        return FusedVectorEmbedding.apply(*_full_precision(query, key), radius, groups, compiled_flex_attention)


def vector_embedding_reference(query: torch.Tensor, key: torch.Tensor, radius: int, groups: int = 1) -> torch.Tensor:
    """Reference VEU + MVI that materialises the full local cost volume (simple and obviously right; for tests).

    Args:
        query: view b features ``(B, C, *S)``.
        key: view a features ``(B, C, *S)`` (same grid).
        radius: window radius ``r`` (window ``2r+1`` per axis).
        groups: number of channel groups J (MVI); ``C % J == 0``.

    Returns:
        ``(B, len(S), *S)`` float32 (float64 for float64 inputs) displacement in voxels of this grid, averaged over
        the J groups.
    """
    _check_inputs(query, key, groups)
    with _autocast_off(query.device):
        return _reference(*_full_precision(query, key), radius, groups)


def _reference(query: torch.Tensor, key: torch.Tensor, radius: int, groups: int) -> torch.Tensor:
    b, c, *spatial = query.shape
    nd = len(spatial)
    head = c // groups
    q = query.reshape(b, groups, head, *spatial)
    k = F.pad(key, (radius, radius) * nd).reshape(b, groups, head, *[n + 2 * radius for n in spatial])
    offsets = offset_template(radius, nd, device=query.device, dtype=query.dtype)
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
        impl: ``"streaming"`` (:func:`vector_embedding`, default), ``"fused"`` (:func:`vector_embedding_fused`,
            compiled flex_attention; trains on CUDA only) or ``"reference"`` (:func:`vector_embedding_reference`,
            stores the cost volume; for tests and benchmarks).
    """

    IMPLEMENTATIONS = {
        "streaming": vector_embedding,
        "fused": vector_embedding_fused,
        "reference": vector_embedding_reference,
    }

    def __init__(self, radius: int, groups: int = 1, impl: str = "streaming") -> None:
        super().__init__()
        if radius < 1 or groups < 1:
            raise ValueError(f"radius and groups must be >= 1, got radius={radius}, groups={groups}")
        if impl not in self.IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {sorted(self.IMPLEMENTATIONS)}, got {impl!r}")
        self.radius = radius
        self.groups = groups
        self.impl = impl

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return self.IMPLEMENTATIONS[self.impl](query, key, self.radius, self.groups)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, groups={self.groups}, impl={self.impl!r}"
