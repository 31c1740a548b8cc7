"""Pairs of different subjects with cycle-consistent pseudo-target fields, mixed into the synthetic pair stream."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, ResizeWithPadOrCrop
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from cover3d.metrics import cycle_consistent_field
from cover3d.errors import InputFileNotFoundError, InputValueError
from cover3d.networks.weights import read_state_dict
from cover3d.transforms.alignment import affine_align
from cover3d.transforms.pair import CoverPaird, foreground_fraction, foreground_mask, fraction_within_reach

__all__ = ["InterSubjectPseudoPairs", "MixedPairs"]

logger = logging.getLogger(__name__)


class InterSubjectPseudoPairs(Dataset):
    """Ordered pairs (a, b) of different volumes whose target field is a teacher network's, where it is consistent.

    For ``num_pairs`` seeded pairs of distinct items of ``volumes`` (dicts with ``image`` ``(C, *S)``, preprocessed as
    for the synthetic pairs, which crops to the foreground): volume b is affinely aligned onto volume a
    (:func:`~cover3d.transforms.affine_align`), both are centre-cropped or padded to the pair transform's
    ``patch_size`` (so foreground-centred), then :func:`~cover3d.metrics.cycle_consistent_field` of the teacher
    (a copy of ``network`` with ``teacher_weights`` loaded) predicts both directions and keeps the voxels whose cycle
    residual is ``<= threshold`` voxels (and, when the pair transform has ``mask_background``, whose view b voxel is
    above its ``background_threshold``, as for the synthetic pairs). Items have the keys and shapes of the output of
    ``pair_transform`` (:class:`~cover3d.transforms.CoverPaird`): ``image`` (view a), ``image_b``, ``ddf`` (voxels,
    the pseudo target), ``mask`` (kept voxels), and its reach / foreground fractions when it computes them, so they
    batch with synthetic pairs. Everything is computed once, here (two teacher forwards per pair); ``kept_fraction`` is the
    mean fraction of kept voxels. Refinement: train with these pairs, then build them again with the new weights as
    ``teacher_weights``.
    """

    def __init__(
        self,
        volumes: Sequence[dict],
        network: torch.nn.Module,
        teacher_weights: str,
        pair_transform: CoverPaird,
        num_pairs: int,
        threshold: float = 1.0,
        seed: int = 0,
    ) -> None:
        if len(volumes) < 2:
            raise InputValueError(f"pairs of different subjects need at least 2 volumes, got {len(volumes)}")
        if not teacher_weights or not Path(teacher_weights).is_file():
            raise InputFileNotFoundError(
                f"teacher weights not found: {teacher_weights!r} (name the model.pt of a COVER pretraining, e.g. "
                "--pseudo#teacher_weights bundles/cover_mri/models/model.pt)")
        teacher = copy.deepcopy(network)
        device = next(teacher.parameters()).device
        teacher.load_state_dict(read_state_dict(teacher_weights))
        crop = ResizeWithPadOrCrop(pair_transform.pair.patch_size)
        rng = np.random.default_rng(seed)
        self.transform = Compose([])  # nothing random: a StreamDataset may seed it
        self.items: list[dict] = []
        for _ in range(int(num_pairs)):
            i, j = (int(k) for k in rng.choice(len(volumes), size=2, replace=False))
            fixed = torch.as_tensor(volumes[i]["image"]).float()
            moving = affine_align(torch.as_tensor(volumes[j]["image"]).float(), fixed, seed=int(rng.integers(2**31)))
            image_a, image_b = (torch.as_tensor(crop(v)).float().to(device)[None] for v in (fixed, moving))
            field = cycle_consistent_field(teacher, image_a, image_b, threshold)
            mask = field["mask"][0]
            if pair_transform.pair.mask_background:  # as for the synthetic pairs: no target on view b's background
                mask = mask * foreground_mask(image_b[0], pair_transform.pair.background_threshold)
            self.items.append(self._item(pair_transform, image_a[0], image_b[0], field["ddf"][0], mask))
        self.kept_fraction = float(np.mean([float(item[pair_transform.mask_key].mean()) for item in self.items]))
        logger.info(f"{len(self.items)} inter-subject pseudo-pairs from {teacher_weights}: "
                    f"{100 * self.kept_fraction:.1f}% of the voxels kept (cycle residual <= {threshold} voxels)")

    @staticmethod
    def _item(t: CoverPaird, image_a: torch.Tensor, image_b: torch.Tensor, ddf: torch.Tensor, mask: torch.Tensor) -> dict:
        image_a, image_b, ddf, mask = (convert_to_tensor(x, track_meta=False).cpu() for x in (image_a, image_b, ddf, mask))
        item = {t.keys[0]: image_a, t.image_b_key: image_b, t.ddf_key: ddf, t.mask_key: mask}
        if t.reach is not None:
            item[t.reach_key] = fraction_within_reach(ddf, mask, t.reach)
        if t.background_threshold is not None:
            item[t.foreground_key] = foreground_fraction(image_b, mask, t.background_threshold)
        return item

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return dict(self.items[index])


class MixedPairs(Dataset):
    """The synthetic pair dataset followed by extra pairs (e.g. :class:`InterSubjectPseudoPairs`), as one dataset.

    ``transform`` is the synthetic dataset's, so :class:`~cover3d.data.StreamDataset` seeds the synthetic pairs as
    without the extras; an epoch-free stream over it draws an extra pair with probability
    ``len(extra) / (len(synthetic) + len(extra))``. Written because ``ConcatDataset`` has no ``transform`` to seed.
    """

    def __init__(self, synthetic: Dataset, extra: Dataset) -> None:
        self.synthetic, self.extra = synthetic, extra
        self.transform = synthetic.transform

    def __len__(self) -> int:
        return len(self.synthetic) + len(self.extra)

    def __getitem__(self, index: int) -> dict:
        n = len(self.synthetic)
        return self.synthetic[index] if index < n else self.extra[index - n]
