"""Base class of cover3d's MONAI metrics that buffer one value per sample (``(B, 1)`` per iteration)."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["PerSampleMetric"]


class PerSampleMetric(CumulativeIterationMetric):
    """Cumulative metric whose ``_compute_tensor`` returns ``(B, 1)``; ``aggregate()`` as in MONAI's regression metrics.

    ``reduction`` (default ``"mean"`` over samples, NaN samples ignored) and ``get_not_nans`` behave as in
    :class:`monai.metrics.MSEMetric`. MONAI's ``RegressionMetric`` is not reused because its ``_compute_tensor``
    takes no ``mask`` and requires ``y``.
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``(N, 1)`` per-sample values with ``reduction`` (default: the one given at construction)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__} has nothing to aggregate: call it on a batch first.")
        value, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (value, not_nans) if self.get_not_nans else value
