"""cover3d: COVER-3D voxel-wise self-supervised pretraining (displacement-vector regression) on MONAI."""

__version__ = "0.1.0"
