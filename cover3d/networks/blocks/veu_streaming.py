"""Streaming VEU kernel: soft-argmax over a local offset window without storing the cost volume.

Written here because neither torch nor MONAI has a local-correlation (cost-volume) layer. The forward pass visits
the offsets one at a time with an online (log-sum-exp) softmax, keeping only per-voxel running max, normaliser
and weighted-offset sums; the backward pass recomputes each offset's probability from the saved log-sum-exp:

    p_o = exp(s_o - lse),  dL/ds_o = p_o * <g, o - v>,  s_o = <q(p), k(p + o)> / sqrt(head_dim).

Each offset is restricted to the voxels whose neighbour ``p + o`` lies inside the grid, so out-of-volume
neighbours are excluded from the softmax exactly. Extra memory is O(groups * voxels) instead of
O(window^d * groups * voxels). Pure tensor ops on slices: runs unchanged on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

__all__ = ["StreamingVectorEmbedding", "streaming_forward"]

Region = tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]


def _offset_region(offset: Sequence[int], spatial: Sequence[int]) -> Region | None:
    """Index tuples over the voxels ``p`` whose neighbour ``p + offset`` is inside the grid, or None if there is none:
    ``(p in a (B, J, *S) tensor, p in a (B, J, H, *S) tensor, p + offset in a (B, J, H, *S) tensor)``."""
    at_p, at_neighbour = [], []
    for o, n in zip(offset, spatial):
        lo, hi = max(0, -o), n - max(0, o)
        if hi <= lo:
            return None
        at_p.append(slice(lo, hi))
        at_neighbour.append(slice(lo + o, hi + o))
    every = (slice(None),) * 3
    return every[:2] + tuple(at_p), every + tuple(at_p), every + tuple(at_neighbour)


def _channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(2)`` for ``(B, J, H, *R)`` views (H channels per group), accumulated channel by channel: no
    ``(B, J, H, *R)`` temporary, and about 4x faster on CPU than the mul + strided reduction."""
    out = a[:, :, 0] * b[:, :, 0]
    for channel in range(1, a.shape[2]):
        out.addcmul_(a[:, :, channel], b[:, :, channel])
    return out


def streaming_forward(
    query: torch.Tensor, key: torch.Tensor, offsets: list[tuple[int, ...]], groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The streaming forward pass in plain tensor ops (also what ``torch.jit.trace`` records for export).

    Returns per-group vectors ``(B, J, d, *S)`` and the log-sum-exp of the scores ``(B, J, *S)``.
    """
    b, c, *spatial = query.shape
    nd = len(spatial)
    scale = (c // groups) ** -0.5
    q = query.reshape(b, groups, c // groups, *spatial)
    k = key.reshape(b, groups, c // groups, *spatial)
    # start from the zero offset (valid everywhere): running max = its score, normaliser 1, offset sum 0
    run_max = _channel_dot(q, k).mul_(scale)  # (B, J, *S)
    norm = torch.ones_like(run_max)
    acc = q.new_zeros((b, groups, nd, *spatial))  # sum_o exp(s_o - max) * o
    for offset in offsets:
        region = _offset_region(offset, spatial) if any(offset) else None
        if region is None:
            continue
        at_p, at_p_ch, at_nb_ch = region
        score = _channel_dot(q[at_p_ch], k[at_nb_ch]).mul_(scale)
        max_r, norm_r, acc_r = run_max[at_p], norm[at_p], acc[at_p_ch]
        new_max = torch.maximum(max_r, score)
        rescale = (max_r - new_max).exp_()
        weight = score.sub_(new_max).exp_()
        norm_r.mul_(rescale).add_(weight)
        acc_r.mul_(rescale.unsqueeze(2))
        for axis, o in enumerate(offset):
            if o:
                acc_r[:, :, axis].add_(weight, alpha=o)
        max_r.copy_(new_max)
    vectors = acc.div_(norm.unsqueeze(2))  # (B, J, d, *S) per-group soft-argmax
    return vectors, run_max.add_(norm.log_())


class StreamingVectorEmbedding(torch.autograd.Function):
    """``apply(query, key, offsets, groups) -> (B, d, *S)``: VEU + MVI, the group vectors averaged.

    ``query``/``key``: ``(B, C, *S)`` float tensors of the same shape and dtype (float32 or float64), ``C % groups
    == 0``; ``offsets``: list of integer d-tuples (voxels) that must include the zero offset. Output in voxels.
    """

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, offsets: list[tuple[int, ...]], groups: int) -> torch.Tensor:
        vectors, lse = streaming_forward(query, key, offsets, groups)
        ctx.save_for_backward(query, key, lse, vectors)
        ctx.offsets, ctx.groups = offsets, groups
        return vectors.mean(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        query, key, lse, vectors = ctx.saved_tensors
        offsets, groups = ctx.offsets, ctx.groups
        b, c, *spatial = query.shape
        scale = (c // groups) ** -0.5
        q = query.reshape(b, groups, c // groups, *spatial)
        k = key.reshape(b, groups, c // groups, *spatial)
        grad_group = (grad / groups).unsqueeze(1)  # (B, 1, d, *S): d out / d v_j = 1 / J
        grad_dot_v = (grad_group * vectors).sum(2)  # <g, v_j>, (B, J, *S)
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        for offset in offsets:
            region = _offset_region(offset, spatial)
            if region is None:
                continue
            at_p, at_p_ch, at_nb_ch = region
            q_r, k_r = q[at_p_ch], k[at_nb_ch]
            prob = _channel_dot(q_r, k_r).mul_(scale).sub_(lse[at_p]).exp_()  # (B, J, *R)
            grad_dot_o = -grad_dot_v[at_p]
            for axis, o in enumerate(offset):
                if o:
                    grad_dot_o = grad_dot_o + o * grad_group[:, :, axis][at_p]
            grad_score = prob.mul_(grad_dot_o).mul_(scale).unsqueeze(2)  # dL/ds_o * scale, (B, J, 1, *R)
            grad_q[at_p_ch].addcmul_(grad_score, k_r)
            grad_k[at_nb_ch].addcmul_(grad_score, q_r)
        return grad_q.reshape(query.shape), grad_k.reshape(key.shape), None, None
