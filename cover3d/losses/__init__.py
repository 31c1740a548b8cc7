from cover3d.losses.cover import (
    ContrastiveLoss,
    CoverLoss,
    VectorLoss,
    downsample_mask,
    masked_mean,
    spatially_centred,
)
from cover3d.losses.cycle import CycleConsistencyLoss
from cover3d.losses.infonce import VoxelInfoNCELoss
from cover3d.losses.pretext import PretextLoss, batch_keys_of
from cover3d.losses.relative_localisation import RelativeLocalisationLoss, voxel_coordinates
from cover3d.losses.restoration import RestorationLoss
from cover3d.losses.sampling import gather_voxels, sample_voxel_indices
from cover3d.losses.variance_covariance import VarianceCovarianceLoss

__all__ = [
    "ContrastiveLoss",
    "CoverLoss",
    "CycleConsistencyLoss",
    "PretextLoss",
    "RelativeLocalisationLoss",
    "RestorationLoss",
    "VarianceCovarianceLoss",
    "VectorLoss",
    "VoxelInfoNCELoss",
    "batch_keys_of",
    "downsample_mask",
    "gather_voxels",
    "masked_mean",
    "sample_voxel_indices",
    "spatially_centred",
    "voxel_coordinates",
]
