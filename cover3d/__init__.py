"""cover3d: COVER-3D voxel-wise self-supervised pretraining (displacement-vector regression) on MONAI."""

from cover3d.errors import install_excepthook

__version__ = "0.1.0"

install_excepthook()  # configuration/data errors end the output as one message (see cover3d.errors)
