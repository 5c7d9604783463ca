"""The one batch sampler: every sample exactly once per epoch, on one process or many.

DistributedSampler pads the last shard with repeated samples so that every rank runs the same
number of steps; here each rank instead splits its shard into the same number of batches. With
``even=True`` (what training uses) the batches are nearly equal (sizes differ by at most one,
so ``batch_size`` is the largest batch, not every batch's size), which keeps DDP in step without
duplicates and never leaves a last batch of one sample (which breaks BatchNorm in training
mode). With ``even=False`` batches are exactly ``batch_size`` except the last (or it is dropped
with ``drop_last``), as a plain ``DataLoader`` makes them.

With ``weights`` (a class-balanced sampler, ``--balance sampler``) each epoch draws ``n`` indices
with replacement, index ``i`` with probability ``weights[i] / sum(weights)``, from a generator
seeded by ``(seed, epoch)`` only: a resumed run draws the same epochs, and the draws are sharded
like a permutation (rank ``r`` takes positions ``r, r + world, ...``), so shards stay disjoint
slices of one draw and keep their lengths. An image drawn twice in an epoch gets a different
augmentation each time: :meth:`EpochBatchSampler.keyed` gives every draw its own key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

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
        weights: one non-negative sampling weight per index: draw each epoch's indices with
            replacement in proportion to them (needs ``shuffle``).

    Raises:
        ValueError: weights of the wrong length, negative, not finite or all zero; weights without shuffle.
    """

    def __init__(
        self, n: int, *, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
        even: bool = True, drop_last: bool = False, weights: Sequence[float] | None = None,
    ) -> None:
        self.weights = _check_weights(weights, int(n), shuffle) if weights is not None else None
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
        for batch in self.keyed():
            yield [index for index, _ in batch]

    def keyed(self) -> Iterator[list[tuple[int, int]]]:
        """Batches of ``(index, key)``: the key is the index itself, plus ``n`` times the number of
        earlier draws of that index in the epoch's whole draw (so it is unique across ranks too)."""
        order = self._order()
        drawn: dict[int, int] = {}
        keys = []
        for index in order:
            k = drawn.get(index, 0)
            drawn[index] = k + 1
            keys.append(index + k * self.n)
        yield from self._batches(list(zip(order, keys, strict=True)))

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist() if self.n else []
        if self.shuffle:
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def _batches(self, order: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
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


def _check_weights(weights: Sequence[float], n: int, shuffle: bool) -> torch.Tensor:
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if not shuffle:
        raise ValueError("sampling weights draw a random order: pass shuffle=True")
    if w.shape != (n,):
        raise ValueError(f"weights must give one number per sample ({n}); got {tuple(w.shape)}")
    if n and (not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0):
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w
