"""A seeded, endless, resumable stream of training samples, split across distributed ranks."""

from __future__ import annotations

from collections.abc import Iterator

import ignite.distributed as idist
import numpy as np
from ignite.engine import Engine
from monai.transforms import Randomizable
from torch.utils.data import Dataset, Sampler

__all__ = ["StreamDataset", "StreamSampler"]


class StreamDataset(Dataset):
    """Item ``g`` of an endless stream over ``dataset`` (a MONAI dataset with random transforms, e.g. a
    ``CacheDataset`` ending in :class:`~cover3d.transforms.CoverPaird`): volume ``perm_p[g mod n]`` of pass
    ``p = g // n`` (``perm_p`` a permutation seeded by ``(seed, p)``), with the dataset's random transforms seeded by
    ``(seed, g)``. So a sample depends only on its stream position: a resumed or distributed run draws exactly the
    samples an uninterrupted single-process run would, whatever the number of DataLoader workers."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        transform = getattr(dataset, "transform", None)
        if not isinstance(transform, Randomizable):
            raise TypeError(f"StreamDataset needs a dataset whose transform is Randomizable (a Compose), got {type(transform).__name__}")
        if len(dataset) == 0:
            raise ValueError("StreamDataset needs a non-empty dataset")
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def volume_index(self, position: int) -> int:
        n = len(self.dataset)
        return int(np.random.default_rng([self.seed, position // n]).permutation(n)[position % n])

    def __getitem__(self, position: int):
        sample_seed = int(np.random.SeedSequence([self.seed, int(position)]).generate_state(1)[0])
        self.dataset.transform.set_random_state(seed=sample_seed)
        return self.dataset[self.volume_index(int(position))]


class StreamSampler(Sampler[int]):
    """Endless stream positions for :class:`StreamDataset`: rank ``r`` of ``R`` takes global positions ``r, r+R,
    r+2R, ...`` (each rank different samples, together the same stream as one process with an ``R`` times larger
    batch). Attached to the trainer, each new iterator starts after the ``engine.state.iteration * batch_size``
    samples this rank has already trained on, so a resumed run continues the stream instead of replaying it.
    Written instead of ``DistributedSampler``, which cannot start mid-epoch and ties the epoch to the dataset size."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = int(batch_size)
        self.engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    def __iter__(self) -> Iterator[int]:
        rank, world = idist.get_rank(), idist.get_world_size()
        local = 0 if self.engine is None else self.engine.state.iteration * self.batch_size
        while True:
            yield local * world + rank
            local += 1
