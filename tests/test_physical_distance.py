"""HD95 in millimetres from each label's affine, and a score for a structure missed or hallucinated entirely."""

from __future__ import annotations

import math

import torch
from monai.data import MetaTensor

from cover3d.metrics.physical_distance import PhysicalHausdorffDistanceMetric

SPACING = (2.0, 1.0, 3.0)


def one_hot(box: tuple[slice, ...] | None, shape=(20, 16, 10)) -> MetaTensor:
    """``(1, 2, *shape)`` background / foreground with a box of foreground (none when ``box`` is None)."""
    foreground = torch.zeros(shape)
    if box is not None:
        foreground[box] = 1
    affine = torch.diag(torch.tensor([*SPACING, 1.0]))
    return MetaTensor(torch.stack([1 - foreground, foreground])[None], affine=affine)


def test_distance_is_in_millimetres_of_the_labels_spacing():
    label = one_hot((slice(4, 10), slice(4, 10), slice(2, 6)))
    shifted = one_hot((slice(5, 11), slice(4, 10), slice(2, 6)))  # one voxel along x = 2 mm
    metric = PhysicalHausdorffDistanceMetric(include_background=False, percentile=95)
    assert torch.allclose(metric(shifted, label), torch.tensor([[2.0]]))


def test_a_missed_structure_scores_the_image_diagonal_and_two_empty_ones_zero():
    label = one_hot((slice(4, 10), slice(4, 10), slice(2, 6)))
    metric = PhysicalHausdorffDistanceMetric(include_background=False, percentile=95)
    diagonal = math.dist((0, 0, 0), (20 * 2.0, 16 * 1.0, 10 * 3.0))
    missed = metric(one_hot(None), label)
    assert torch.allclose(missed, torch.tensor([[diagonal]]))  # not NaN, which the mean would skip
    assert torch.allclose(metric(label.clone(), one_hot(None)), torch.tensor([[diagonal]]))  # hallucinated
    assert torch.equal(metric(one_hot(None), one_hot(None)), torch.tensor([[0.0]]))
    metric.reset()
    metric(one_hot((slice(5, 11), slice(4, 10), slice(2, 6))), label)  # 2 mm
    metric(one_hot(None), label)
    assert math.isclose(float(metric.aggregate("mean")), (2.0 + diagonal) / 2, rel_tol=1e-5)  # the miss counts
