from cover3d.networks.blocks.heads import ReconstructionHead, RelativePositionHead
from cover3d.networks.blocks.pyramid import VectorPyramid, pyramid_reach
from cover3d.networks.blocks.veu import VectorEmbeddingUnit, offset_template, vector_embedding_reference

__all__ = [
    "ReconstructionHead",
    "RelativePositionHead",
    "VectorEmbeddingUnit",
    "VectorPyramid",
    "offset_template",
    "pyramid_reach",
    "vector_embedding_reference",
]
