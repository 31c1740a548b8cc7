"""Fused VEU: the local-window soft-argmax as block-sparse neighbourhood attention (``torch`` flex_attention).

Per channel group (head) the VEU is attention of view b's voxels (queries) over view a's voxels (keys) restricted
to the window ``|p_key - p_query| <= r`` on every axis, with the key voxels' **coordinates** as values::

    out(p) = sum_k softmax_k(<q(p), k(k)> / sqrt(head_dim)) * coord(k),      v(p) = out(p) - coord(p)

which is the reference's ``sum_o softmax_o(...) * o``. The window stays centred on the query and the keys are the
voxels of the volume, so a neighbour outside the volume is simply not a key: excluded from the softmax exactly as in
the reference (neighbourhood-attention kernels such as NATTEN shift the window inward at the border instead; this
module does not). :func:`neighbourhood_block_mask` gives flex_attention the window as a ``mask_mod`` plus the
block-sparse list of key blocks each query block can reach, so the kernel never forms the cost volume and skips
blocks outside the window. The flat voxel order is row-major, so a 128-voxel query block meets about
``(2r + 1 + 1) * (2r + 1) * W / 128`` key blocks: the kernel scores more pairs than the window holds (tiles, not
offsets), cheap on a GPU, costly on a CPU (docs/performance.md).

Backward (written here because torch's flex_attention has no backward on CPU, and this one is the same on every
device): with ``p_ik`` the probabilities, ``o_i`` the output and ``g_i`` its gradient,
``dL/ds_ik = p_ik <g_i, c_k - o_i>`` (``c_k`` the key's coordinate), so

    dq_i = scale * (sum_d g_id sum_k p_ik c_kd k_k - <g_i, o_i> sum_k p_ik k_k)        (attention, values c (x) k, k)
    dk_k = scale * (sum_d c_kd sum_i p_ik g_id q_i - sum_i p_ik <g_i, o_i> q_i)        (keys attend to queries)

both computed by two more flex_attention forward passes; the second swaps the roles (the window is symmetric) and
subtracts each query's saved log-sum-exp with a ``score_mod``. Memory stays O(channels * voxels).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

__all__ = ["FusedVectorEmbedding", "compiled_flex_attention", "neighbourhood_block_mask", "voxel_coordinates"]

SPARSE_BLOCK_SIZE = 128  # flex_attention's default tile (query and key voxels per block)
MIN_HEAD_DIM = 16  # flex_attention's CUDA kernels need head dims >= 16 (tl.dot); zero channels change no score

Attention = Callable[..., object]


# compiled graphs per process: one per grid and window for the forward and each of the two backward passes (5
# pyramid levels: 15, and 5 more without gradients); dynamo's default (8) would run the rest uncompiled (all N x N
# scores) without an error
RECOMPILE_LIMIT = 64


@functools.cache
def _compiled() -> Attention:
    return torch.compile(flex_attention, dynamic=False)


def compiled_flex_attention(*args, **kwargs):
    """``torch.compile(flex_attention)``: the fused kernel (uncompiled, flex_attention materialises all N x N
    scores). Compiles once per input shape and window (about 10 s of CPU time on this CPU each); more than
    :data:`RECOMPILE_LIMIT` compilations raise instead of falling back to the uncompiled kernel."""
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        return _compiled()(*args, **kwargs)


def voxel_coordinates(spatial: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(N, d)`` voxel coordinates of a grid in row-major (flattened) order, centred on the grid's middle (halves
    their magnitude, hence the float rounding of ``out - coord``). Voxel units."""
    axes = [torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2 for n in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(spatial))


def _grid_index(flat: torch.Tensor, spatial: Sequence[int]) -> list[torch.Tensor]:
    """Per-axis integer coordinates of row-major flat voxel indices."""
    strides = [math.prod(spatial[axis + 1 :]) for axis in range(len(spatial))]
    return [flat // stride % n for stride, n in zip(strides, spatial)]


def _window_mask_mod(spatial: tuple[int, ...], radius: int):
    """flex_attention ``mask_mod``: True where key voxel ``kv`` is within ``radius`` of query voxel ``q`` on
    every axis (a centred window; out-of-volume neighbours do not exist as keys)."""

    def mask_mod(batch, head, q, kv):
        near = None
        for qa, ka in zip(_grid_index(q, spatial), _grid_index(kv, spatial)):
            axis_near = (qa - ka).abs() <= radius
            near = axis_near if near is None else near & axis_near
        return near

    return mask_mod


@functools.lru_cache(maxsize=16)
def neighbourhood_block_mask(spatial: tuple[int, ...], radius: int, device: torch.device) -> BlockMask:
    """Block-sparse :class:`BlockMask` of the centred ``(2r+1)^d`` window on a row-major flattened grid.

    A key block is listed for a query block when their voxels' bounding boxes are within ``radius`` on every axis
    (a superset of the blocks holding window pairs; the ``mask_mod`` decides each pair). Computed from the boxes in
    O(blocks x candidates), never per voxel pair. The window is symmetric, so the query-side (transposed) lists,
    used by flex_attention's backward kernels, equal the key-side ones. ``kv_indices`` is ``(1, 1, nb, nb)`` int32
    (``nb`` = voxels / 128; the CPU kernel needs the full width): 190 MiB at 96^3, 1 GiB at 128^3. Cached per grid.
    """
    n = math.prod(spatial)
    slab = math.prod(spatial[1:])  # voxels per index of the first (slowest) axis
    blocks = -(-n // SPARSE_BLOCK_SIZE)
    flat = torch.arange(blocks * SPARSE_BLOCK_SIZE, device=device).clamp(max=n - 1)  # last block padded by repeats
    coords = torch.stack(_grid_index(flat, spatial), -1).view(blocks, SPARSE_BLOCK_SIZE, len(spatial))
    low, high = coords.amin(1), coords.amax(1)  # (blocks, d) bounding boxes
    # key blocks of a query block lie in the flat range of first-axis indices [low - r, high + r]
    first = (low[:, 0] - radius).clamp(min=0) * slab // SPARSE_BLOCK_SIZE
    last = ((high[:, 0] + radius + 1).clamp(max=spatial[0]) * slab - 1) // SPARSE_BLOCK_SIZE
    width = int((last - first).max()) + 1
    candidates = first[:, None] + torch.arange(width, device=device)  # (blocks, width)
    listed = candidates <= last[:, None]
    candidates = candidates.clamp(max=blocks - 1)
    near = (low[candidates] <= high[:, None] + radius) & (high[candidates] >= low[:, None] - radius)
    listed &= near.all(-1)
    order = torch.argsort(listed.to(torch.int8), dim=1, descending=True, stable=True)
    kv_indices = torch.zeros((blocks, blocks), dtype=torch.int32, device=device)
    kv_indices[:, :width] = torch.gather(candidates, 1, order).to(torch.int32)
    kv_num_blocks = listed.sum(1).to(torch.int32)[None, None]
    kv_indices = kv_indices[None, None]
    return BlockMask(
        seq_lengths=(n, n),
        kv_num_blocks=kv_num_blocks,
        kv_indices=kv_indices,
        full_kv_num_blocks=None,
        full_kv_indices=None,
        q_num_blocks=kv_num_blocks,
        q_indices=kv_indices,
        full_q_num_blocks=None,
        full_q_indices=None,
        BLOCK_SIZE=(SPARSE_BLOCK_SIZE, SPARSE_BLOCK_SIZE),
        mask_mod=_window_mask_mod(tuple(spatial), radius),
    )


def _pad_channels(x: torch.Tensor, size: int = MIN_HEAD_DIM) -> torch.Tensor:
    """Zero-pad the last (channel) dim to at least ``size``; contiguous."""
    return F.pad(x, (0, size - x.shape[-1])).contiguous() if x.shape[-1] < size else x.contiguous()


class FusedVectorEmbedding(torch.autograd.Function):
    """``apply(query, key, radius, groups, attention) -> (B, d, *S)``: VEU + MVI, the group vectors averaged.

    ``query``/``key``: ``(B, C, *S)`` float tensors of the same shape and dtype, ``C % groups == 0``;
    ``attention``: :func:`compiled_flex_attention` (the fused kernel) or ``flex_attention`` itself (unfused: all
    ``N x N`` scores; small tests). Output in voxels of the grid.
    """

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, radius: int, groups: int, attention: Attention):
        b, c, *spatial = query.shape
        n, head = math.prod(spatial), c // groups
        scale = head**-0.5  # of the true head dim, not the padded one

        def heads(x):  # (B, C, *S) -> (B, J, N, max(head, 16))
            return _pad_channels(x.detach().reshape(b, groups, head, n).transpose(2, 3))

        q, k = heads(query), heads(key)
        coords = voxel_coordinates(spatial, query.device, query.dtype)  # (N, d)
        values = _pad_channels(coords).expand(b, groups, n, -1)
        mask = neighbourhood_block_mask(tuple(spatial), radius, query.device)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            out, aux = attention(q, k, values, block_mask=mask, scale=scale, return_aux=AuxRequest(lse=True))
            out = out[..., : len(spatial)]
            ctx.save_for_backward(q, k, out, aux.lse)
            ctx.mask, ctx.attention, ctx.scale, ctx.head, ctx.shape = mask, attention, scale, head, query.shape
        else:
            out = attention(q, k, values, block_mask=mask, scale=scale)[..., : len(spatial)]
        vectors = out - coords  # (B, J, N, d) per-group soft-argmax
        return vectors.mean(1).transpose(1, 2).reshape(b, len(spatial), *spatial)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, k, out, lse = ctx.saved_tensors  # (B, J, N, E'), (B, J, N, E'), (B, J, N, d), (B, J, N)
        b, groups, n, _ = q.shape
        head, scale, mask, attention = ctx.head, ctx.scale, ctx.mask, ctx.attention
        nd = out.shape[-1]
        coords = voxel_coordinates(ctx.shape[2:], q.device, q.dtype)
        g = (grad.reshape(b, 1, nd, n).transpose(2, 3) / groups).expand(b, groups, n, nd)  # dL/d out per group
        g_dot_out = (g * out).sum(-1, keepdim=True)  # <g_i, o_i>, (B, J, N, 1)
        k_h, q_h = k[..., :head], q[..., :head]
        # dq: queries attend to keys with values (c (x) k, k)
        values = torch.cat([(coords[:, :, None] * k_h[..., None, :]).flatten(-2), k_h], -1)
        moments = attention(q, k, _pad_channels(values), block_mask=mask, scale=scale)
        weighted = moments[..., : nd * head].unflatten(-1, (nd, head))  # sum_k p_ik c_kd k_k
        mean_k = moments[..., nd * head : (nd + 1) * head]  # sum_k p_ik k_k
        grad_q = scale * ((g[..., None] * weighted).sum(-2) - g_dot_out * mean_k)

        # dk: keys attend to queries with the queries' probabilities exp(s_ik - lse_i), values (g (x) q, <g, o> q);
        # flex_attention normalises over i, so multiply back by exp(its own log-sum-exp)
        def query_probability(score, batch, group, key_index, query_index):
            return score - lse[batch, group, query_index]

        values = torch.cat([(g[..., None] * q_h[..., None, :]).flatten(-2), g_dot_out * q_h], -1)
        sums, aux = attention(
            k, q, _pad_channels(values), score_mod=query_probability, block_mask=mask, scale=scale,
            return_aux=AuxRequest(lse=True),
        )  # fmt: skip
        sums = sums * aux.lse.exp()[..., None]
        weighted = sums[..., : nd * head].unflatten(-1, (nd, head))  # sum_i p_ik g_id q_i
        grad_k = scale * ((coords[:, :, None] * weighted).sum(-2) - sums[..., nd * head : (nd + 1) * head])

        def channels_first(x):  # (B, J, N, E) -> (B, C, *S)
            return x.transpose(2, 3).reshape(ctx.shape)

        return channels_first(grad_q), channels_first(grad_k), None, None, None
