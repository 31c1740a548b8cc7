from cover3d.networks.blocks import VectorEmbeddingUnit, VectorPyramid, pyramid_reach
from cover3d.networks.nets import CoverNet, CoverSegNet, NnUNetBackbone, UNetBackbone, basic_unet_kwargs, group_norm_per_width
from cover3d.networks.weights import WeightLoadReport, load_pretrained_weights, pretraining_metadata, read_state_dict

__all__ = [
    "CoverNet",
    "CoverSegNet",
    "NnUNetBackbone",
    "UNetBackbone",
    "VectorEmbeddingUnit",
    "VectorPyramid",
    "basic_unet_kwargs",
    "group_norm_per_width",
    "WeightLoadReport",
    "load_pretrained_weights",
    "pretraining_metadata",
    "pyramid_reach",
    "read_state_dict",
]
