"""Metrics for displacement fields: accuracy (end-point error), plausibility (Jacobian, folding), inverse
consistency (and the cycle-consistent part of a network's field), warped-label Dice (plain functions on
``(B, 3, D, H, W)`` voxel fields plus MONAI cumulative metrics), and image similarity / foreground overlap of two
volumes."""

from cover3d.metrics.field_error import (
    BinnedEndpointError,
    EndPointErrorMetric,
    binned_endpoint_error,
    endpoint_error,
    endpoint_error_map,
    fraction_within_tolerance,
)
from cover3d.metrics.cycle_consistency import cycle_consistent_field
from cover3d.metrics.inverse_consistency import inverse_consistency_error, inverse_consistency_map
from cover3d.metrics.jacobian import (
    FoldingFractionMetric,
    LogJacobianStdMetric,
    folding_fraction,
    jacobian_determinant,
    log_jacobian_std,
)
from cover3d.metrics.label_overlap import warp_labels, warped_label_dice
from cover3d.metrics.per_sample_metric import PerSampleMetric
from cover3d.metrics.similarity import foreground_overlap, global_ncc, mutual_information

__all__ = [
    "BinnedEndpointError",
    "EndPointErrorMetric",
    "FoldingFractionMetric",
    "LogJacobianStdMetric",
    "PerSampleMetric",
    "binned_endpoint_error",
    "cycle_consistent_field",
    "endpoint_error",
    "endpoint_error_map",
    "folding_fraction",
    "foreground_overlap",
    "fraction_within_tolerance",
    "global_ncc",
    "inverse_consistency_error",
    "inverse_consistency_map",
    "jacobian_determinant",
    "log_jacobian_std",
    "mutual_information",
    "warp_labels",
    "warped_label_dice",
]
