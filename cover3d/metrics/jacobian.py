"""Plausibility of a displacement field: Jacobian determinant of ``x -> x + psi(x)``, folding, log-Jacobian spread.

MONAI has no Jacobian-determinant metric, hence this module. Fields are ``(B, N, *S)`` (``(B, 3, D, H, W)``) in
voxels. Derivatives are taken per voxel along the tensor axes; the determinant does not depend on the voxel
spacing (``det(diag(s) J diag(s)^-1) = det J``), so no ``spacing`` argument is needed. ``mask`` ``(B, 1, *S)``
(bool or {0, 1}) restricts the statistics to valid voxels; an empty selection gives NaN.
"""

from __future__ import annotations

import torch

from cover3d.fields import check_field
from cover3d.metrics.masked_reduction import masked_mean, valid_voxels
from cover3d.metrics.per_sample_metric import PerSampleMetric

__all__ = [
    "FoldingFractionMetric",
    "LogJacobianStdMetric",
    "folding_fraction",
    "jacobian_determinant",
    "log_jacobian_std",
]


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """``det(I + d psi / d x)`` per voxel, ``(B, 1, *S)``, for ``ddf`` ``(B, N, *S)`` in voxels.

    ``d psi_i / d x_j`` is the central difference ``(psi_i(x + e_j) - psi_i(x - e_j)) / 2`` inside the volume and the
    one-sided difference on the first and last voxel of each axis (``torch.gradient``, ``edge_order=1``), so the
    output keeps the input size and is exact for fields linear in ``x`` (affine maps) up to the faces.
    """
    check_field(ddf)
    n = ddf.shape[1]
    if min(ddf.shape[2:]) < 2:
        raise ValueError(
            f"ddf needs at least 2 voxels along every spatial axis for differences, got {tuple(ddf.shape)}"
        )
    spatial_dims = tuple(range(2, ddf.ndim))
    # grads[j][:, i] = d psi_i / d x_j; stack to (..., i, j) matrices.
    grads = torch.gradient(ddf, dim=spatial_dims, edge_order=1)
    jac = torch.stack(grads, dim=2).movedim((1, 2), (-2, -1)) + torch.eye(n, dtype=ddf.dtype, device=ddf.device)
    return torch.linalg.det(jac).unsqueeze(1)


def folding_fraction(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of valid voxels whose Jacobian determinant is <= 0 (the map folds there), per sample: ``(B,)``."""
    det = jacobian_determinant(ddf)
    return masked_mean((det <= 0).to(det.dtype), valid_voxels(det, mask))


def log_jacobian_std(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation (population, ``correction=0``) of ``log det J`` per sample: ``(B,)``.

    Taken over the valid voxels with ``det J > 0`` only (the log is undefined elsewhere; report
    :func:`folding_fraction` alongside). 0 for any rigid translation or uniform scaling.
    """
    det = jacobian_determinant(ddf)
    valid = valid_voxels(det, mask) & (det > 0)
    log_det = torch.log(torch.where(valid, det, torch.ones_like(det)))
    mean = masked_mean(log_det, valid)
    deviation = log_det - mean.reshape(-1, *([1] * (det.ndim - 1)))
    return masked_mean(deviation.square(), valid).sqrt()


class FoldingFractionMetric(PerSampleMetric):
    """MONAI cumulative metric for :func:`folding_fraction`.

    Call with ``y_pred`` = field ``(B, N, *S)`` (or a list of ``(N, *S)``), ``y`` unused, optionally ``mask=``
    ``(B, 1, *S)``; buffers ``(B, 1)``; ``aggregate()`` gives the mean over samples by default.
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return folding_fraction(y_pred, mask)[:, None]


class LogJacobianStdMetric(PerSampleMetric):
    """MONAI cumulative metric for :func:`log_jacobian_std` (same calling convention as :class:`FoldingFractionMetric`)."""

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return log_jacobian_std(y_pred, mask)[:, None]
