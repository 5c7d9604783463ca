"""The one batch sampler: every sample exactly once per epoch, on one process or many.

DistributedSampler pads the last shard with repeated samples so that every rank runs the same
number of steps; here each rank instead splits its shard into the same number of batches. With
``even=True`` (what training uses) the batches are nearly equal (sizes differ by at most one,
so ``batch_size`` is the largest batch, not every batch's size), which keeps DDP in step without
duplicates and never leaves a last batch of one sample (which breaks BatchNorm in training
mode). With ``even=False`` batches are exactly ``batch_size`` except the last (or it is dropped
with ``drop_last``), as a plain ``DataLoader`` makes them.
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
        even: split each shard into nearly equal batches (else full batches and a last partial one).
        drop_last: with ``even=False``, leave out a last partial batch.
    """

    def __init__(
        self, n: int, *, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
        even: bool = True, drop_last: bool = False,
    ) -> None:
        self.n = int(n)
        self.batch_size = max(1, int(batch_size))
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shard_sizes(self) -> tuple[int, int]:
        per_rank_max = math.ceil(self.n / self.world_size)
        per_rank_min = self.n // self.world_size
        return per_rank_min, per_rank_max

    def __len__(self) -> int:
        lo, hi = self._shard_sizes()
        if not self.even:
            return lo // self.batch_size if self.drop_last else -(-lo // self.batch_size) if lo else 0
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
        if not self.even:
            shard = shard[: len(self) * self.batch_size] if self.drop_last else shard[: self._shard_sizes()[0]]
            for start in range(0, len(shard), self.batch_size):
                yield shard[start : start + self.batch_size]
            return
        # split the shard into `steps` nearly equal, contiguous, non-empty batches
        base, extra = divmod(len(shard), steps)
        start = 0
        for i in range(steps):
            size = base + (1 if i < extra else 0)
            yield shard[start : start + size]
            start += size
