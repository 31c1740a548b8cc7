from cover3d.networks.blocks import VectorEmbeddingUnit, VectorPyramid, pyramid_reach
from cover3d.networks.nets import CoverNet, UNetBackbone

__all__ = ["CoverNet", "UNetBackbone", "VectorEmbeddingUnit", "VectorPyramid", "pyramid_reach"]
