from cover3d.networks.nets.backbone import UNetBackbone, basic_unet_kwargs, group_norm_per_width
from cover3d.networks.nets.cover import CoverNet
from cover3d.networks.nets.nnunet_backbone import NnUNetBackbone, nnunet_arch_kwargs
from cover3d.networks.nets.segmentation import CoverSegNet

__all__ = ["CoverNet", "CoverSegNet", "NnUNetBackbone", "UNetBackbone", "basic_unet_kwargs", "group_norm_per_width", "nnunet_arch_kwargs"]
