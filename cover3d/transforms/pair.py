"""COVER training pair from one volume: context crop, deformed view b, appearance view a, field psi and mask eps.

Conventions are those of :mod:`cover3d.fields`: ``ddf`` is ``(3, *patch)`` in voxels and
``view_b == warp(unaugmented_view_a, ddf)`` inside ``mask`` (backward warp, zeros padding).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import MAX_SEED, convert_to_tensor, ensure_tuple, ensure_tuple_rep

from cover3d.transforms.appearance import appearance_augmentation
from cover3d.transforms.deformation import RandDeformationField

__all__ = ["PairSample", "CoverPair", "CoverPaird", "foreground_fraction", "foreground_mask", "fraction_within_reach"]


class PairSample(NamedTuple):
    """One COVER pair; all float32 tensors on the input's device."""

    image_a: torch.Tensor  # (C, *patch) appearance-augmented context crop (view a)
    image_b: torch.Tensor  # (C, *patch) deformed view, image_b(p) = unaugmented_a(p + ddf(p))
    ddf: torch.Tensor  # (3, *patch) psi in voxels
    mask: torch.Tensor  # (1, *patch) eps: 1 where p + ddf(p) lies inside view a's patch


def fraction_within_reach(ddf: torch.Tensor, mask: torch.Tensor, reach: float) -> float:
    """Fraction of valid voxels (``mask > 0.5``) whose displacement max-abs component is ``<= reach`` voxels.

    ``ddf`` is ``(3, *S)`` or ``(B, 3, *S)``, ``mask`` ``(1, *S)`` or ``(B, 1, *S)``. NaN when no voxel is valid.
    """
    if ddf.ndim != mask.ndim or ddf.shape[-4] != 3 or mask.shape[-4] != 1 or ddf.shape[-3:] != mask.shape[-3:]:
        shapes = f"{tuple(ddf.shape)} and {tuple(mask.shape)}"
        raise ValueError(f"expected ddf (..., 3, *S) and mask (..., 1, *S), got {shapes}")
    valid = mask > 0.5
    within = ddf.abs().amax(dim=-4, keepdim=True) <= reach
    count = valid.sum()
    if count == 0:
        return float("nan")
    return float((within & valid).sum() / count)


def foreground_fraction(image: torch.Tensor, mask: torch.Tensor, threshold: float) -> float:
    """Fraction of valid voxels (``mask > 0.5``) where some channel of ``image`` is above ``threshold``.

    ``image`` is ``(C, *S)`` or ``(B, C, *S)`` (view b, preprocessed intensities), ``mask`` ``(1, *S)`` or
    ``(B, 1, *S)``. NaN when no voxel is valid.
    """
    if image.ndim != mask.ndim or mask.shape[-4] != 1 or image.shape[-3:] != mask.shape[-3:]:
        shapes = f"{tuple(image.shape)} and {tuple(mask.shape)}"
        raise ValueError(f"expected image (..., C, *S) and mask (..., 1, *S), got {shapes}")
    valid = mask > 0.5
    count = valid.sum()
    if count == 0:
        return float("nan")
    return float((foreground_mask(image, threshold) & valid).sum() / count)


def foreground_mask(image: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(..., 1, *S)`` bool: some channel of ``image`` ``(..., C, *S)`` is above ``threshold``."""
    return image.amax(dim=-4, keepdim=True) > threshold


class CoverPair(Randomizable, Transform):
    """Make a :class:`PairSample` from one channel-first volume ``(C, X, Y, Z)`` (numpy or torch, any device).

    Steps: random ``context_size`` crop (zero-padded, centred, along axes where the volume is smaller); a
    ``patch_size`` window inside it at a random (or centred) offset; a random field psi on the patch grid;
    view b = context sampled at ``p + offset + psi(p)`` (zeros padding), which equals warping the whole context by
    psi and then cropping both views and psi at the offset, because a displacement is unchanged when both frames
    shift together; view a = the context window, appearance-augmented; mask = ``p + psi(p)`` inside view a's
    patch, at least ``mask_margin`` voxels from its faces (and, with ``mask_background``, view b above
    ``background_threshold``).

    Args:
        patch_size: training patch ``(X, Y, Z)`` (int = cube).
        context_size: context crop, each side >= the patch's (1.5x is typical).
        random_offset: random patch position inside the context; False centres it.
        deformation: field generator; None -> ``RandDeformationField()`` defaults (see there).
        appearance: callable on ``(C, *patch)`` tensors for view a only; None -> ``appearance_augmentation("ct")``.
            Use ``appearance_augmentation("mri")`` for MRI or ``monai.transforms.Identity()`` for none.
        mask_margin: erosion margin in voxels of view a (0 = plain validity).
        mask_background: also drop from the mask the voxels of view b whose intensity (every channel) is
            ``<= background_threshold``: zero padding and empty background carry no displacement information.
        background_threshold: that intensity, in the preprocessed scale (the presets map to [0, 1]).
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 64,
        context_size: int | Sequence[int] = 96,
        random_offset: bool = True,
        deformation: RandDeformationField | None = None,
        appearance: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mask_margin: float = 0.0,
        mask_background: bool = False,
        background_threshold: float = 0.05,
    ) -> None:
        self.patch_size = tuple(int(n) for n in ensure_tuple_rep(patch_size, 3))
        self.context_size = tuple(int(n) for n in ensure_tuple_rep(context_size, 3))
        if min(self.patch_size) < 1 or any(p > c for p, c in zip(self.patch_size, self.context_size)):
            raise ValueError(f"need 1 <= patch_size <= context_size, got {self.patch_size} and {self.context_size}")
        if mask_margin < 0 or 2 * mask_margin > min(self.patch_size) - 1:
            raise ValueError(f"mask_margin must be in [0, (min(patch_size) - 1) / 2], got {mask_margin}")
        self.random_offset = random_offset
        self.deformation = RandDeformationField() if deformation is None else deformation
        self.appearance = appearance_augmentation("ct") if appearance is None else appearance
        self.mask_margin = float(mask_margin)
        self.mask_background = bool(mask_background)
        self.background_threshold = float(background_threshold)
        self.context_start: tuple[int, ...] = (0, 0, 0)
        self.offset = tuple((c - p) // 2 for p, c in zip(self.patch_size, self.context_size))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> CoverPair:
        """Seed this transform, the deformation and the appearance chain (each gets a seed drawn from this one)."""
        super().set_random_state(seed=seed, state=state)
        for child in (self.deformation, self.appearance):
            if isinstance(child, Randomizable):
                child.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        """Draw the context start (per axis where the volume is larger), the patch offset and the deformation."""
        self.context_start = tuple(
            int(self.R.randint(0, max(n - c, 0) + 1)) for n, c in zip(spatial_shape, self.context_size)
        )
        if self.random_offset:
            self.offset = tuple(int(self.R.randint(0, c - p + 1)) for p, c in zip(self.patch_size, self.context_size))
        self.deformation.randomize(self.patch_size)

    def __call__(self, img: np.ndarray | torch.Tensor, randomize: bool = True) -> PairSample:
        if img.ndim != 4:
            raise ValueError(f"CoverPair expects a channel-first volume (C, X, Y, Z), got shape {tuple(img.shape)}")
        if randomize:
            self.randomize(img.shape[1:])
        context = self._context(img)
        ddf = self.deformation(self.patch_size, device=context.device, randomize=False)
        image_b = self._sample(context, ddf)
        window = tuple(slice(o, o + p) for o, p in zip(self.offset, self.patch_size))
        image_a = self.appearance(context[(slice(None), *window)].clone())  # clone: RandCoarseDropout edits in place
        image_a = convert_to_tensor(image_a, dtype=torch.float32, track_meta=False)
        mask = self._mask(ddf)
        if self.mask_background:
            mask = mask * foreground_mask(image_b, self.background_threshold)
        return PairSample(image_a=image_a, image_b=image_b, ddf=ddf, mask=mask)

    def _context(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(C, *context_size)`` float32 crop at ``context_start`` (a view of a float32 tensor when no padding is
        needed). Only the crop is converted: of a memory-mapped array (a store entry) only the crop is read."""
        source, target = [], []
        for n, c, s in zip(image.shape[1:], self.context_size, self.context_start):
            if n >= c:
                source.append(slice(s, s + c))
                target.append(slice(0, c))
            else:
                source.append(slice(0, n))
                target.append(slice((c - n) // 2, (c - n) // 2 + n))
        crop = image[(slice(None), *source)]
        crop = convert_to_tensor(np.array(crop) if isinstance(crop, np.ndarray) else crop, dtype=torch.float32,
                                 track_meta=False)  # np.array: a writable copy of the crop, not of the memory map
        if tuple(crop.shape[1:]) == self.context_size:
            return crop
        context = crop.new_zeros((crop.shape[0], *self.context_size))
        context[(slice(None), *target)] = crop
        return context

    def _sample(self, context: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """Trilinear sample of ``context`` at ``p + offset + ddf(p)`` (zeros outside): one patch-sized grid_sample."""
        coords = []
        for axis, (p, o, c) in enumerate(zip(self.patch_size, self.offset, self.context_size)):
            norm = 2.0 / max(c - 1, 1)  # align_corners=True, as in monai.networks.blocks.Warp
            base = (torch.arange(p, device=ddf.device, dtype=ddf.dtype) + o) * norm - 1
            shape = [1, 1, 1]
            shape[axis] = p
            coords.append(ddf[axis] * norm + base.view(shape))
        grid = torch.stack(coords[::-1], dim=-1)[None]  # grid_sample wants (x, y, z) = (axis 2, 1, 0)
        return F.grid_sample(context[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]

    def _mask(self, ddf: torch.Tensor) -> torch.Tensor:
        """``(1, *patch)`` float32: 1 where ``p + ddf(p)`` is within ``[margin, size - 1 - margin]`` on every axis."""
        valid = torch.ones(self.patch_size, dtype=torch.bool, device=ddf.device)
        for axis, p in enumerate(self.patch_size):
            shape = [1, 1, 1]
            shape[axis] = p
            target = ddf[axis] + torch.arange(p, device=ddf.device, dtype=ddf.dtype).view(shape)
            valid &= (target >= self.mask_margin) & (target <= p - 1 - self.mask_margin)
        return valid[None].to(torch.float32)


class CoverPaird(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`CoverPair` for one image key.

    Replaces ``data[key]`` by view a ``(C, *patch)`` and adds ``image_b_key`` ``(C, *patch)``, ``ddf_key``
    ``(3, *patch)`` (voxels) and ``mask_key`` ``(1, *patch)``; all plain float32 tensors on the input's device.
    With ``reach`` (voxels) set, also adds ``reach_key`` = :func:`fraction_within_reach` of this pair; with
    ``background_threshold`` set, ``foreground_key`` = :func:`foreground_fraction` of this pair's mask (1.0 when
    ``mask_background`` removed the background). Other arguments: see :class:`CoverPair`.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        patch_size: int | Sequence[int] = 64,
        context_size: int | Sequence[int] = 96,
        random_offset: bool = True,
        deformation: RandDeformationField | None = None,
        appearance: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mask_margin: float = 0.0,
        reach: float | None = None,
        mask_background: bool = False,
        background_threshold: float | None = None,
        image_b_key: str = "image_b",
        ddf_key: str = "ddf",
        mask_key: str = "mask",
        reach_key: str = "reach_fraction",
        foreground_key: str = "foreground_fraction",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(ensure_tuple(self.keys)) != 1:
            raise ValueError(f"CoverPaird takes exactly one image key, got {self.keys}")
        if mask_background and background_threshold is None:
            raise ValueError("mask_background needs a background_threshold")
        threshold = 0.0 if background_threshold is None else background_threshold
        self.pair = CoverPair(
            patch_size, context_size, random_offset, deformation, appearance, mask_margin, mask_background, threshold
        )
        self.reach, self.background_threshold = reach, background_threshold
        self.image_b_key, self.ddf_key, self.mask_key = image_b_key, ddf_key, mask_key
        self.reach_key, self.foreground_key = reach_key, foreground_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> CoverPaird:
        super().set_random_state(seed=seed, state=state)
        self.pair.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict[Hashable, torch.Tensor | float]:
        d = dict(data)
        for key in self.key_iterator(d):
            sample = self.pair(d[key])
            d[key], d[self.image_b_key], d[self.ddf_key], d[self.mask_key] = sample
            if self.reach is not None:
                d[self.reach_key] = fraction_within_reach(sample.ddf, sample.mask, self.reach)
            if self.background_threshold is not None:
                d[self.foreground_key] = foreground_fraction(sample.image_b, sample.mask, self.background_threshold)
        return d
