from cover3d.transforms.alignment import affine_align
from cover3d.transforms.appearance import appearance_augmentation
from cover3d.transforms.deformation import RandDeformationField, affine_matrix, smooth_deformation_field
from cover3d.transforms.pair import (
    CoverPair,
    CoverPaird,
    PairSample,
    foreground_fraction,
    foreground_mask,
    fraction_within_reach,
)
from cover3d.transforms.presets import ct_preprocessing, mri_preprocessing
from cover3d.transforms.restoration import genesis_corruption
from cover3d.transforms.validate import CheckVolumed

__all__ = [
    "CheckVolumed",
    "CoverPair",
    "CoverPaird",
    "PairSample",
    "RandDeformationField",
    "affine_align",
    "appearance_augmentation",
    "ct_preprocessing",
    "foreground_fraction",
    "foreground_mask",
    "fraction_within_reach",
    "genesis_corruption",
    "mri_preprocessing",
    "affine_matrix",
    "smooth_deformation_field",
]
