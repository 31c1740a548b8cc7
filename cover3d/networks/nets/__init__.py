from cover3d.networks.nets.backbone import UNetBackbone
from cover3d.networks.nets.cover import CoverNet
from cover3d.networks.nets.segmentation import CoverSegNet

__all__ = ["CoverNet", "CoverSegNet", "UNetBackbone"]
