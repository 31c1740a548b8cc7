"""Models-Genesis style corruption of one pair view, for the restoration baseline, from MONAI transforms."""

from __future__ import annotations

from monai.transforms import Compose, CopyItemsd, Identityd, OneOf, RandCoarseDropoutd, RandCoarseShuffled, RandHistogramShiftd

__all__ = ["genesis_corruption"]


def genesis_corruption(
    key: str = "image_b",
    target_key: str = "image_b_clean",
    nonlinear_prob: float = 0.9,
    control_points: tuple[int, int] = (5, 10),
    shuffle_prob: float = 0.5,
    shuffle_blocks: tuple[int, int] = (50, 200),
    shuffle_size: tuple[int, int] = (2, 6),
    inpaint_weight: float = 0.18,
    outpaint_weight: float = 0.72,
    inpaint_holes: tuple[int, int] = (1, 5),
    inpaint_size: tuple[int, int] = (6, 16),
    outpaint_size: tuple[int, int] = (20, 40),
) -> Compose:
    """Seedable dictionary chain (Zhou et al., Models Genesis): copy ``data[key]`` ``(C, X, Y, Z)`` to
    ``target_key``, then corrupt ``data[key]`` by a random monotone non-linear intensity mapping
    (``RandHistogramShiftd``, ``control_points`` knots; Models Genesis uses a Bezier curve), local shuffling of
    ``shuffle_blocks`` small blocks of ``shuffle_size`` voxels per side (``RandCoarseShuffled``), and one of
    in-painting (``inpaint_holes`` boxes of ``inpaint_size`` voxels filled with uniform noise in [0, 1]),
    out-painting (everything outside one box of ``outpaint_size`` voxels filled with noise) or nothing, drawn with
    weights ``inpaint_weight``, ``outpaint_weight`` and the rest of 1. Sizes are in voxels (for a 48^3 patch).
    """
    if inpaint_weight < 0 or outpaint_weight < 0 or inpaint_weight + outpaint_weight > 1:
        raise ValueError(f"need inpaint_weight, outpaint_weight >= 0 with sum <= 1, got {inpaint_weight}, {outpaint_weight}")
    painting = OneOf(
        [
            RandCoarseDropoutd(key, holes=inpaint_holes[0], max_holes=inpaint_holes[1], spatial_size=inpaint_size[0],
                               max_spatial_size=inpaint_size[1], fill_value=(0.0, 1.0), prob=1.0),
            RandCoarseDropoutd(key, holes=1, spatial_size=outpaint_size[0], max_spatial_size=outpaint_size[1],
                               dropout_holes=False, fill_value=(0.0, 1.0), prob=1.0),
            Identityd(key),
        ],
        weights=[inpaint_weight, outpaint_weight, 1.0 - inpaint_weight - outpaint_weight],
    )  # fmt: skip
    return Compose(
        [
            CopyItemsd(key, names=target_key),
            RandHistogramShiftd(key, num_control_points=control_points, prob=nonlinear_prob),
            RandCoarseShuffled(key, holes=shuffle_blocks[0], max_holes=shuffle_blocks[1], spatial_size=shuffle_size[0],
                               max_spatial_size=shuffle_size[1], prob=shuffle_prob),
            painting,
        ]
    )  # fmt: skip
