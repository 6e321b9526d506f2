"""Samplers for distributed training that resume exactly and evaluate without duplicates."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """DistributedSampler's contract (shuffle with seed + epoch, pad to a multiple of the world size, take every
    ``num_replicas``-th index from ``rank``) plus ``skip``: the number of this rank's samples already consumed in the
    current epoch, for resuming mid-epoch. Works without a process group (``num_replicas=1, rank=0``)."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.n = len(dataset)
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.epoch = 0
        self.skip = 0
        self.num_samples = math.ceil(self.n / num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.n, generator=g).tolist()
        else:
            indices = list(range(self.n))
        total = self.num_samples * self.num_replicas
        pad = total - self.n
        if pad > 0:
            indices += (indices * math.ceil(pad / self.n))[:pad]
        mine = indices[self.rank : total : self.num_replicas]
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: disjoint shards, no padding (exact distributed evaluation)."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
