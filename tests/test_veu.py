"""Tests of the streaming VEU against the reference, its masking and units, and the pyramid's memory options."""

from __future__ import annotations

import itertools

import pytest
import torch

from cover3d.fields import warp
from cover3d.losses import CoverLoss
from cover3d.networks import CoverNet, VectorEmbeddingUnit, VectorPyramid
from cover3d.networks.blocks.veu import vector_embedding, vector_embedding_reference

RADII, GROUPS = (1, 2, 3), (1, 2, 4)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def features(shape: tuple[int, ...], seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def value_and_grads(fn, query, key, weight):
    query, key = query.detach().requires_grad_(True), key.detach().requires_grad_(True)
    out = fn(query, key)
    return (out, *torch.autograd.grad((out * weight).sum(), (query, key)))


@pytest.mark.parametrize("radius, groups", itertools.product(RADII, GROUPS))
@pytest.mark.parametrize("spatial", [(5, 6, 7), (3, 4, 9)], ids=["3d", "3d-thin"])
def test_streaming_equals_reference_3d(radius, groups, spatial):
    """Forward and both gradients within 1e-5 (float32), including axes shorter than the window (thin case)."""
    shape = (2, 8 * groups, *spatial)
    query, key = features(shape, 0), features(shape, 1, scale=2.0)
    weight = features((2, 3, *spatial), 2)
    fast = value_and_grads(lambda q, k: vector_embedding(q, k, radius, groups), query, key, weight)
    ref = value_and_grads(lambda q, k: vector_embedding_reference(q, k, radius, groups), query, key, weight)
    for name, a, b in zip(("output", "grad query", "grad key"), fast, ref):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-5), f"{name}: max diff {(a - b).abs().max():.2e}"


@pytest.mark.parametrize("radius, groups", [(1, 1), (3, 4)])
def test_streaming_equals_reference_2d(radius, groups):
    shape = (2, 4 * groups, 9, 7)
    query, key = features(shape, 3), features(shape, 4)
    weight = features((2, 2, 9, 7), 5)
    fast = value_and_grads(lambda q, k: vector_embedding(q, k, radius, groups), query, key, weight)
    ref = value_and_grads(lambda q, k: vector_embedding_reference(q, k, radius, groups), query, key, weight)
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("radius, groups", itertools.product(RADII, GROUPS))
def test_gradcheck_float64(radius, groups):
    """Custom backward vs finite differences (fast mode: random projections), float64."""
    shape = (1, 2 * groups, 3, 4, 5)
    query = features(shape, 6, torch.float64).requires_grad_(True)
    key = features(shape, 7, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k: vector_embedding(q, k, radius, groups), (query, key), fast_mode=True)


def test_gradcheck_float64_full_jacobian():
    shape = (1, 4, 2, 3, 4)
    query = features(shape, 8, torch.float64).requires_grad_(True)
    key = features(shape, 9, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k: vector_embedding(q, k, 2, 2), (query, key))


@pytest.mark.parametrize("impl", ["streaming", "reference"])
@pytest.mark.parametrize("radius", RADII)
def test_out_of_volume_neighbours_are_excluded(impl, radius):
    """Equal scores everywhere -> the vector is the mean of the *valid* offsets only (zero-scoring would give 0)."""
    n = 6
    unit = VectorEmbeddingUnit(radius, 1, impl)
    const = torch.ones((1, 8, n, n, n))
    v = unit(const, const)
    positions = torch.arange(n, dtype=torch.float32)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    inside = ((positions[:, None] + offsets[None]) >= 0) & ((positions[:, None] + offsets[None]) < n)
    expected = (inside * offsets).sum(1) / inside.sum(1)  # per position along one axis
    for axis in range(3):
        view = [1, 1, 1]
        view[axis] = n
        assert torch.allclose(v[0, axis], expected.view(view).expand(n, n, n), atol=1e-6)
    # and with random features, a border voxel never points outside the volume
    v = unit(features((1, 8, n, n, n), 10, scale=3.0), features((1, 8, n, n, n), 11, scale=3.0))
    for axis in range(3):
        assert (v[0, axis].select(axis, 0) >= 0).all() and (v[0, axis].select(axis, n - 1) <= 0).all()


@pytest.mark.parametrize("impl", ["streaming", "reference"])
@pytest.mark.parametrize("shift", [(1, -2, 0), (-1, 1, 2)])
def test_integer_shift_recovered_with_sign_and_units(impl, shift):
    """x_b(p) = x_a(p + s)  ->  VEU(query=b, key=a) = s voxels, consistent with cover3d.fields.warp."""
    n, radius = 12, 2
    view_a = features((1, 256, n, n, n), 12, scale=4.0)  # head dim 128: match ~256 vs others ~N(0, 16): sharp
    field = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, n, n, n)
    view_b = warp(view_a, field)
    inner = (slice(None),) * 2 + (slice(radius, n - radius),) * 3  # p + s inside the volume
    assert torch.allclose(view_b[inner], torch.roll(view_a, [-s for s in shift], dims=(2, 3, 4))[inner], atol=1e-5)
    v = VectorEmbeddingUnit(radius, 2, impl)(view_b, view_a)
    assert torch.allclose(v[inner], field[inner], atol=1e-3)


def test_bf16_inputs_computed_in_float32():
    """bf16 features give exactly the float32 result of the same (rounded) values, and bf16 gradients."""
    shape = (1, 16, 6, 6, 6)
    query, key = features(shape, 13).bfloat16(), features(shape, 14).bfloat16()
    q16, k16 = query.clone().requires_grad_(True), key.clone().requires_grad_(True)
    low = vector_embedding(q16, k16, 2, 2)
    high = vector_embedding(query.float(), key.float(), 2, 2)
    assert low.dtype == torch.float32 and torch.equal(low, high)
    low.sum().backward()
    assert q16.grad.dtype == torch.bfloat16 and k16.grad.dtype == torch.bfloat16


def pyramid_features(seed: int) -> list[torch.Tensor]:
    channels = (32, 16, 16, 8, 8)
    return [features((1, c, 2 * 2**i, 2 * 2**i, 2 * 2**i), seed + i) for i, c in enumerate(channels)]


def test_pyramid_autocast_bf16_close_to_float32():
    """Under CPU autocast bf16 the projections run in bf16; the fields stay float32 and close to fp32's."""
    torch.manual_seed(0)
    # gain 1: an untrained pyramid on random features is near ties everywhere, and the default gain 3 multiplies the
    # logits (and the bf16 rounding of the features in them) by 9; this checks the AMP path, not conditioning
    pyramid = VectorPyramid((32, 16, 16, 8, 8), projection_gain=1.0)
    fa, fb = pyramid_features(20), pyramid_features(40)
    with torch.no_grad():
        ref = pyramid(fa, fb)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = pyramid(fa, fb)
    for level, (a, b) in enumerate(zip(ref, low)):
        assert b.dtype == torch.float32
        diff = (a - b).abs()
        assert diff.mean() < 0.01 and diff.max() < 0.05 * 2**level, f"level {level}: {diff.mean():.4f} {diff.max():.4f}"


def step_results(**options) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """One training step of a small untrained CoverNet in float64 (its sharp initial soft-argmax would amplify
    float32 rounding differences between equivalent computations)."""
    torch.manual_seed(0)
    net = CoverNet(channels=(8, 8, 16, 16, 16), **options).double().train()
    gen = torch.Generator().manual_seed(1)
    views = torch.rand((1, 2, 16, 16, 16), generator=gen, dtype=torch.float64)
    ddf = torch.rand((1, 3, 16, 16, 16), generator=gen, dtype=torch.float64) * 2 - 1
    mask = torch.ones((1, 1, 16, 16, 16), dtype=torch.float64)
    out = net(views)
    loss = CoverLoss(level_weights=(0.1, 0.1, 0.2, 0.5))(out, ddf, mask)["loss"]
    loss.backward()
    return loss.detach(), [p.grad for p in net.parameters()], out["ddf"].detach()


def test_checkpointing_levels_gives_identical_loss_and_gradients():
    loss, grads, ddf = step_results()
    for levels in (True, (False, False, False, True, True)):
        loss_ckpt, grads_ckpt, ddf_ckpt = step_results(checkpoint_levels=levels)
        assert torch.equal(loss, loss_ckpt) and torch.equal(ddf, ddf_ckpt)
        assert all(torch.equal(g, gc) for g, gc in zip(grads, grads_ckpt))


def test_checkpointing_backbone_gives_same_loss_and_gradients():
    """Views go through the backbone one at a time (batch 1 instead of 2): equal up to convolution rounding."""
    loss, grads, ddf = step_results()
    loss_ckpt, grads_ckpt, ddf_ckpt = step_results(checkpoint_backbone=True, checkpoint_levels=True)
    assert torch.allclose(loss, loss_ckpt, rtol=1e-5)
    assert torch.allclose(ddf, ddf_ckpt, rtol=0, atol=1e-4)
    for g, gc in zip(grads, grads_ckpt):
        assert torch.allclose(g, gc, rtol=1e-4, atol=1e-4 * g.abs().max())


def test_reference_impl_option_and_errors():
    loss, grads, _ = step_results()
    loss_ref, grads_ref, _ = step_results(veu_impl="reference")
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    assert all(torch.allclose(g, r, rtol=1e-4, atol=1e-6) for g, r in zip(grads, grads_ref))
    assert VectorEmbeddingUnit(1).impl == "streaming"
    with pytest.raises(ValueError, match="impl"):
        VectorEmbeddingUnit(1, impl="naive")
    with pytest.raises(ValueError, match="divisible"):
        vector_embedding(torch.zeros(1, 6, 4, 4, 4), torch.zeros(1, 6, 4, 4, 4), 1, 4)
    with pytest.raises(ValueError):
        VectorPyramid((8, 8), radii=(1, 1), groups=(1, 1), checkpoint_levels=(True, False, True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    shape = (1, 16, 8, 8, 8)
    query, key = features(shape, 15), features(shape, 16)
    weight = features((1, 3, 8, 8, 8), 17)
    cpu = value_and_grads(lambda q, k: vector_embedding(q, k, 2, 2), query, key, weight)
    gpu = value_and_grads(lambda q, k: vector_embedding(q, k, 2, 2), query.cuda(), key.cuda(), weight.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a, b.cpu(), atol=1e-5)
