"""Batch samplers that see every sample exactly once per epoch, on one process or many.

DistributedSampler pads the last shard with repeated samples so that every rank runs the same
number of steps; here each rank instead splits its shard into the same number of nearly equal
batches (sizes differ by at most one), which keeps DDP in step without duplicates, and never
leaves a batch of one sample (which breaks BatchNorm in training mode).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["EpochBatchSampler"]


class EpochBatchSampler:
    """Yields index batches; the order depends only on ``(seed, epoch)``, so resume is exact.

    Args:
        n: dataset length.
        batch_size: the largest batch (per process).
        shuffle: a new permutation each epoch (training) or the dataset order (evaluation).
        seed: base seed of the permutations.
        rank, world_size: this process's shard.
    """

    def __init__(self, n: int, *, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.n = int(n)
        self.batch_size = max(1, int(batch_size))
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shard_sizes(self) -> tuple[int, int]:
        per_rank_max = math.ceil(self.n / self.world_size)
        per_rank_min = self.n // self.world_size
        return per_rank_min, per_rank_max

    def __len__(self) -> int:
        lo, hi = self._shard_sizes()
        if hi == 0:
            return 0
        steps = math.ceil(hi / self.batch_size)
        # never more steps than the smallest shard has samples (each batch must be non-empty)
        return max(1, min(steps, lo)) if lo else 1

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        shard = order[self.rank :: self.world_size]
        steps = len(self)
        if not shard:
            return
        # split the shard into `steps` nearly equal, contiguous, non-empty batches
        base, extra = divmod(len(shard), steps)
        start = 0
        for i in range(steps):
            size = base + (1 if i < extra else 0)
            yield shard[start : start + size]
            start += size
