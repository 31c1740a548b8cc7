"""Figures for inspecting pairs, displacement fields and voxel features (matplotlib, Agg-safe, no pyplot state).

Inputs are torch tensors or numpy arrays; every function returns a :class:`matplotlib.figure.Figure`
(``interactive_slices`` returns a widget when ipywidgets is installed). Plane convention: ``axis`` = spatial axis
of ``(D, H, W)`` held fixed, ``slice_index`` = index along it (``None`` = middle); three-plane plots take
``slice_indices = (i0, i1, i2)``. See :mod:`cover3d.visualize.arrays`.
"""

from cover3d.visualize.field_plots import plot_field, plot_field_comparison, plot_jacobian
from cover3d.visualize.interactive import interactive_slices
from cover3d.visualize.slices import feature_pca_rgb, plot_feature_pca, plot_orthogonal_slices

__all__ = [
    "feature_pca_rgb",
    "interactive_slices",
    "plot_feature_pca",
    "plot_field",
    "plot_field_comparison",
    "plot_jacobian",
    "plot_orthogonal_slices",
]
