"""Affine alignment of one preprocessed volume onto another, for pairs of different subjects."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

__all__ = ["affine_align"]


def _image(array: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))


def affine_align(
    moving: torch.Tensor, fixed: torch.Tensor, iterations: int = 100, sampling: float = 0.25, seed: int = 0
) -> torch.Tensor:
    """``moving`` ``(C, *S_m)`` resampled onto the voxel grid of ``fixed`` ``(C, *S_f)`` after an affine registration.

    Both must be on the same voxel size (the preprocessed volumes of one bundle), in the same tensor axes. Channel 0
    drives the registration: Mattes mutual information (32 bins, ``sampling`` of the voxels, seeded), moments
    initialisation, regular-step gradient descent (``iterations`` per level, 2 levels: shrink 2 then 1). Every
    channel is resampled linearly, zero outside ``moving``. Returns ``(C, *S_f)`` float32 on ``moving``'s device.
    Written on SimpleITK's registration framework because MONAI has no intensity-based affine registration.
    """
    if moving.ndim != 4 or fixed.ndim != 4:
        raise ValueError(f"expected (C, X, Y, Z) volumes, got {tuple(moving.shape)} and {tuple(fixed.shape)}")
    fixed_image = _image(fixed[0].detach().cpu().numpy())
    channels = [_image(c) for c in moving.detach().cpu().numpy()]
    initial = sitk.CenteredTransformInitializer(
        fixed_image, channels[0], sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    registration = sitk.ImageRegistrationMethod()
    registration.SetNumberOfThreads(torch.get_num_threads())
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    registration.SetMetricSamplingPercentage(sampling, seed)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetShrinkFactorsPerLevel([2, 1])
    registration.SetSmoothingSigmasPerLevel([1.0, 0.0])
    registration.SetInitialTransform(initial, inPlace=False)
    transform = registration.Execute(fixed_image, channels[0])
    aligned = [sitk.GetArrayFromImage(sitk.Resample(c, fixed_image, transform, sitk.sitkLinear, 0.0)) for c in channels]
    return torch.as_tensor(np.stack(aligned), dtype=torch.float32, device=moving.device)
