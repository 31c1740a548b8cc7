"""Representation health during pretraining: is the full-resolution feature space collapsing?"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from cover3d.losses.sampling import gather_voxels, sample_voxel_indices

__all__ = ["feature_health", "effective_rank", "RepresentationHealth"]


def effective_rank(vectors: torch.Tensor) -> float:
    """RankMe effective rank (Garrido et al. 2023) of ``vectors`` ``(N, C)``: ``exp`` of the entropy of the
    normalised singular values; ``C`` for isotropic vectors, 1 when they all lie on one line."""
    s = torch.linalg.svdvals(vectors.double())
    p = s / s.sum().clamp_min(1e-12) + 1e-12
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def feature_health(features: torch.Tensor, num_samples: int = 2048, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Collapse measures of voxel features ``(B, C, *S)`` on ``num_samples`` random voxels per sample (within
    ``mask`` ``(B, 1, *S)`` when given):

    - ``cosine``: mean cosine similarity of random voxel pairs (1 = every voxel points the same way);
    - ``rank``: :func:`effective_rank` of the sampled vectors (of ``C``);
    - ``std``: per-channel standard deviation across voxels, averaged over channels (feature units).
    """
    if mask is None:
        mask = features.new_ones((features.shape[0], 1, *features.shape[2:]))
    vectors = gather_voxels(features.float(), sample_voxel_indices(mask, num_samples)).flatten(0, 1)  # (B*K, C)
    partner = vectors[torch.randperm(vectors.shape[0], device=vectors.device)]
    cosine = torch.nn.functional.cosine_similarity(vectors, partner, dim=1, eps=1e-6).mean()
    return {"cosine": float(cosine), "rank": effective_rank(vectors), "std": float(vectors.std(0).mean())}


class RepresentationHealth:
    """Every ``interval`` iterations add ``health_cosine``, ``health_rank``, ``health_std`` (:func:`feature_health`
    of the iteration output's ``features``, view b's full-resolution backbone features) to ``engine.state.output``,
    so stats / TensorBoard handlers attached after this one log them (:func:`~cover3d.engine.scalar_outputs` keeps
    ``health_*``; the fraction of valid voxels within reach is logged by :class:`~cover3d.engine.CoverTrainer` as
    ``reach_fraction``). Cost: one SVD of ``(B * num_samples, C)``.
    """

    def __init__(self, interval: int = 10, num_samples: int = 2048) -> None:
        self.interval = interval
        self.num_samples = num_samples

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or "features" not in output:
            raise KeyError("RepresentationHealth needs the iteration output's 'features' (use CoverTrainer)")
        stats = feature_health(output["features"], self.num_samples)
        output.update({f"health_{k}": v for k, v in stats.items()})
