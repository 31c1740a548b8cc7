"""Appearance (intensity-only) augmentation for COVER's view a, built from MONAI array transforms."""

from __future__ import annotations

from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandBiasField,
    RandCoarseDropout,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
)

__all__ = ["appearance_augmentation"]

MODALITIES = ("ct", "mri")


def appearance_augmentation(
    modality: str = "ct",
    noise_prob: float = 0.3,
    noise_std: float = 0.05,
    gamma_prob: float = 0.3,
    gamma_range: tuple[float, float] = (0.7, 1.5),
    scale_prob: float = 0.3,
    scale_range: float = 0.1,
    shift_prob: float = 0.3,
    shift_range: float = 0.1,
    blur_prob: float = 0.2,
    blur_sigma: tuple[float, float] = (0.5, 1.0),
    bias_prob: float = 0.3,
    bias_coeff: tuple[float, float] = (0.0, 0.1),
    dropout_prob: float = 0.3,
    dropout_holes: tuple[int, int] = (1, 4),
    dropout_size: tuple[int, int] = (4, 16),
) -> Compose:
    """Seedable chain of intensity transforms for channel-first ``(C, X, Y, Z)`` inputs with values roughly in [0, 1].

    Order: bias field (MRI only, multiplicative, degree 3), gamma contrast, intensity scale ``1 + U(-s, s)``,
    shift ``U(-o, o)``, Gaussian blur (sigma in voxels per axis), Gaussian noise (std drawn in ``[0, noise_std]``),
    coarse dropout (``dropout_holes`` holes of ``dropout_size`` voxels per side, filled with uniform noise in the
    image's range: in-painting style). Each step has its own probability; ``set_random_state`` on the returned
    ``Compose`` seeds them all.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    transforms = []
    if modality == "mri":
        transforms.append(RandBiasField(degree=3, coeff_range=bias_coeff, prob=bias_prob))
    transforms += [
        RandAdjustContrast(prob=gamma_prob, gamma=gamma_range),
        RandScaleIntensity(factors=scale_range, prob=scale_prob),
        RandShiftIntensity(offsets=shift_range, prob=shift_prob),
        RandGaussianSmooth(sigma_x=blur_sigma, sigma_y=blur_sigma, sigma_z=blur_sigma, prob=blur_prob),
        RandGaussianNoise(prob=noise_prob, std=noise_std),
        RandCoarseDropout(
            holes=dropout_holes[0],
            max_holes=dropout_holes[1],
            spatial_size=dropout_size[0],
            max_spatial_size=dropout_size[1],
            fill_value=None,
            prob=dropout_prob,
        ),
    ]
    return Compose(transforms)
