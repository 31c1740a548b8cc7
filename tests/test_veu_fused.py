"""Tests of the fused (flex_attention) VEU against the reference: values, gradients, the border, the block lists."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from cover3d.networks import VectorEmbeddingUnit
from cover3d.networks.blocks import veu_fused
from cover3d.networks.blocks.veu import vector_embedding_fused, vector_embedding_reference
from cover3d.networks.blocks.veu_fused import SPARSE_BLOCK_SIZE, FusedVectorEmbedding, neighbourhood_block_mask

pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.usefixtures("single_thread")]  # tests/conftest.py


def features(shape: tuple[int, ...], seed: int, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def unfused(query, key, radius, groups):
    """The fused VEU's autograd Function with flex_attention uncompiled (all N x N scores: the same mask_mod,
    score_mod and backward formulas; what a CPU can differentiate). The compiled kernel is tested below."""
    return FusedVectorEmbedding.apply(query, key, radius, groups, flex_attention)


def value_and_grads(fn, query, key, weight):
    query, key = query.detach().requires_grad_(True), key.detach().requires_grad_(True)
    out = fn(query, key)
    return (out, *torch.autograd.grad((out * weight).sum(), (query, key)))


@pytest.mark.parametrize(
    "radius, groups, spatial",
    [(1, 1, (5, 6, 7)), (2, 2, (5, 6, 7)), (3, 4, (3, 4, 9)), (2, 1, (3, 4, 9)), (3, 2, (9, 7))],
    ids=["3d-r1", "3d-r2", "3d-thin-r3", "3d-thin-r2", "2d-r3"],
)
def test_fused_equals_reference_float64(radius, groups, spatial):
    """Batch 2, odd shapes, axes shorter than the window (thin): output and both gradients to 1e-10."""
    shape = (2, 8 * groups, *spatial)
    query, key = features(shape, 0), features(shape, 1, scale=2.0)
    weight = features((2, len(spatial), *spatial), 2)
    fused = value_and_grads(lambda q, k: unfused(q, k, radius, groups), query, key, weight)
    ref = value_and_grads(lambda q, k: vector_embedding_reference(q, k, radius, groups), query, key, weight)
    for name, a, b in zip(("output", "grad query", "grad key"), fused, ref):
        assert a.dtype == torch.float64 and a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-10), f"{name}: max diff {(a - b).abs().max():.2e}"


def test_fused_equals_reference_float32():
    shape = (2, 16, 6, 5, 7)
    query, key = features(shape, 3, torch.float32), features(shape, 4, torch.float32, scale=2.0)
    weight = features((2, 3, 6, 5, 7), 5, torch.float32)
    fused = value_and_grads(lambda q, k: unfused(q, k, 2, 2), query, key, weight)
    ref = value_and_grads(lambda q, k: vector_embedding_reference(q, k, 2, 2), query, key, weight)
    for a, b in zip(fused, ref):
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("radius", [1, 2])
def test_border_window_stays_centred(radius):
    """Equal scores everywhere: the vector is the mean of the in-volume offsets of a *centred* window (the
    reference's rule), e.g. r/2 per axis at a corner. A neighbourhood-attention kernel that shifts the window inward
    (NATTEN) would give r at the corner, and zero-scored out-of-volume neighbours would give 0."""
    n = 6
    const = torch.ones((1, 8, n, n, n), dtype=torch.float64)
    v = unfused(const, const, radius, 1)
    assert torch.allclose(v, vector_embedding_reference(const, const, radius, 1), atol=1e-12)
    corner = torch.full((3,), radius / 2, dtype=torch.float64)
    assert torch.allclose(v[0, :, 0, 0, 0], corner) and torch.allclose(v[0, :, -1, -1, -1], -corner)
    assert torch.allclose(v[0, :, n // 2, n // 2, n // 2], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("spatial", [(9, 10, 11), (3, 2, 150), (4, 200)], ids=["3d", "rows>block", "2d"])
def test_block_lists_cover_every_window_pair(radius, spatial):
    """The uncompiled flex_attention ignores the block lists, so check them directly: every (query block, key
    block) pair holding a window pair is listed, once, and the lists are symmetric (they double as the transposed
    lists of the backward kernels)."""
    n = math.prod(spatial)
    mask = neighbourhood_block_mask(spatial, radius, torch.device("cpu"))
    flat = torch.arange(n)
    coords = torch.stack(torch.unravel_index(flat, spatial), -1)
    pairs = ((coords[:, None] - coords[None]).abs() <= radius).all(-1)  # (N, N) window pairs
    blocks = -(-n // SPARSE_BLOCK_SIZE)
    padded = torch.zeros((blocks * SPARSE_BLOCK_SIZE,) * 2, dtype=torch.bool)
    padded[:n, :n] = pairs
    needed = padded.view(blocks, SPARSE_BLOCK_SIZE, blocks, SPARSE_BLOCK_SIZE).any(3).any(1)
    listed = torch.zeros((blocks, blocks), dtype=torch.bool)
    for row, (count, indices) in enumerate(zip(mask.kv_num_blocks[0, 0], mask.kv_indices[0, 0])):
        chosen = indices[:count].long()
        assert len(set(chosen.tolist())) == int(count)
        listed[row, chosen] = True
    assert not (needed & ~listed).any(), "a key block holding window pairs is missing"
    assert torch.equal(listed, listed.T)
    assert torch.equal(mask.q_indices, mask.kv_indices) and torch.equal(mask.q_num_blocks, mask.kv_num_blocks)


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="torch compiles flex_attention for x86 CPUs with AVX2 only",
)
def test_compiled_kernel_equals_reference_on_cpu():
    """The compiled (fused, block-sparse) kernel, inference on a CPU: batch 2, groups 2, an odd grid of several
    blocks, border included; gradients there are refused with one clear message."""
    shape = (2, 16, 7, 9, 11)
    query, key = features(shape, 6, torch.float32), features(shape, 7, torch.float32, scale=2.0)
    unit = VectorEmbeddingUnit(2, 2, "fused")
    with torch.no_grad():
        fused = unit(query, key)
    ref = vector_embedding_reference(query, key, 2, 2)
    assert torch.allclose(fused, ref, rtol=0, atol=1e-5), f"max diff {(fused - ref).abs().max():.2e}"
    with pytest.raises(NotImplementedError, match="streaming"):
        unit(query.requires_grad_(True), key)


def test_compiled_kernel_never_falls_back_to_the_unfused_one(monkeypatch):
    """A pyramid compiles up to 20 graphs of flex_attention (levels x forward / backward passes); past dynamo's
    default limit of 8 it would run the uncompiled kernel (N x N scores: out of memory at 96^3) without an error.
    The compiled call raises the limit above 20 and makes hitting it an error."""
    import torch._dynamo.config as dynamo_config

    seen = {}

    def record(*args, **kwargs):
        seen.update(limit=dynamo_config.recompile_limit, fail=dynamo_config.fail_on_recompile_limit_hit)

    monkeypatch.setattr(veu_fused, "_compiled", lambda: record)
    veu_fused.compiled_flex_attention()
    assert seen == {"limit": veu_fused.RECOMPILE_LIMIT, "fail": True} and veu_fused.RECOMPILE_LIMIT >= 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("radius, groups, spatial", [(1, 1, (16, 12, 20)), (2, 4, (9, 10, 11))])
def test_cuda_compiled_equals_reference(radius, groups, spatial):
    shape = (2, 8 * groups, *spatial)
    query, key = features(shape, 8, torch.float32).cuda(), features(shape, 9, torch.float32, 2.0).cuda()
    weight = features((2, 3, *spatial), 10, torch.float32).cuda()
    fused = value_and_grads(lambda q, k: vector_embedding_fused(q, k, radius, groups), query, key, weight)
    ref = value_and_grads(lambda q, k: vector_embedding_reference(q, k, radius, groups), query, key, weight)
    for a, b in zip(fused, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-4), f"max diff {(a - b).abs().max():.2e}"
