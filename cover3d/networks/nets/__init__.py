from cover3d.networks.nets.backbone import UNetBackbone
from cover3d.networks.nets.cover import CoverNet

__all__ = ["CoverNet", "UNetBackbone"]
