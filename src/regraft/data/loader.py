"""DataLoaders whose order and augmentation depend only on ``(seed, epoch)``.

:func:`make_loader` wraps the batch sampler so that each index travels with its own
augmentation seed (see :func:`regraft.data.dataset.sample_seed`): the same epoch gives the same
batches and the same crops with 0 or 8 workers, persistent or not, and after a resume.

Workers send uint8 batches (a quarter of the bytes through shared memory and pinned memory);
the loader normalises them where they arrive, on the target ``device`` when one is given, so a
GPU run neither copies nor normalises floats on the CPU. Give distributed runs a distributed
``batch_sampler`` rather than ``accelerator.prepare(loader)``: a re-built loader would hand out
the workers' uint8 batches as they are.

Example:
    >>> loader = make_loader(train_ds, batch_size=32, shuffle=True, seed=0)   # doctest: +SKIP
    >>> loader.batch_sampler.set_epoch(3)                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from regraft.data._system import cpu_count
from regraft.data.dataset import ImageDataset, sample_seed
from regraft.data.sampler import EpochBatchSampler
from regraft.data.transforms import ImageTransform

__all__ = ["make_loader", "default_workers"]


def default_workers(n_items: int, *, batch_size: int) -> int:
    """DataLoader workers for this machine: none on 2 CPUs or tiny data, else one per spare CPU (≤ 8).

    Under ``torchrun``/``accelerate launch`` the CPUs are shared among the local processes.
    """
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cpus = cpu_count() // local
    if cpus <= 2 or n_items < 4 * batch_size:
        return 0
    return min(8, cpus - 1)


class _SeededBatches:
    """Wraps a batch sampler: yields ``(index, augmentation seed)`` pairs.

    ``set_epoch`` is forwarded; without it, each pass over the loader counts as the next epoch.
    """

    def __init__(self, inner: Iterable[list[int]], seed: int) -> None:
        self.inner, self.seed, self._next_epoch = inner, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self._next_epoch
        self._next_epoch += 1
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        if isinstance(self.inner, EpochBatchSampler):  # a weighted draw repeats images: each draw its own crop
            for keyed in self.inner.keyed():
                yield [(int(i), sample_seed(self.seed, epoch, int(key))) for i, key in keyed]
            return
        for batch in self.inner:
            yield [(int(i), sample_seed(self.seed, epoch, int(i))) for i in batch]


class _RawView(Dataset):
    """An :class:`ImageDataset` giving uint8 crops; :class:`_NormalizeCollate` finishes them."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        return self.dataset.raw(key)

    def __getattr__(self, name: str) -> Any:  # samples, labels, transform ... of the dataset
        if name == "dataset":  # not set yet while unpickling
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _NormalizeCollate:
    """Batch the uint8 crops, skipping dropped items, and normalise them into a float batch.

    In-process, each crop is normalised straight into its slot of the float batch (no float
    copy per image: fresh memory costs page faults, as much as the crop itself on small
    images). In a worker process the batch stays uint8 -- a quarter of the bytes to move through
    shared memory -- and :class:`_ImageLoader` normalises it where it arrives.
    """

    def __init__(self, transform: ImageTransform) -> None:
        self.transform = transform

    def __call__(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        kept = [b for b in batch if b is not None]
        labels = _labels([b[1] for b in kept])
        shape = (len(kept), self.transform.pixels.channels, *self.transform.size)
        if torch.utils.data.get_worker_info() is not None:  # crops: uint8, or int32 for 16-bit images
            out = _new_shared(shape, kept[0][0].dtype if kept else torch.uint8)
            for i, (x, _) in enumerate(kept):
                out[i].copy_(x)
            return out, labels
        out = torch.empty(shape)
        for i, (x, _) in enumerate(kept):
            self.transform.normalize(x, out=out[i])
        return out, labels


class _ImageLoader(DataLoader):
    """A DataLoader whose workers send uint8 (16-bit: int32) batches, normalised here (on ``device`` if given)."""

    def __init__(self, *args: Any, transform: ImageTransform, device: torch.device | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transform, self.device = transform, device

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        if self.num_workers == 0:
            return batches
        return (self._finish(x, y) for x, y in batches)

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.is_floating_point():  # normalised already (the collate ran in this process)
            return x, y
        if self.device is not None and self.device.type != "cpu":
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for i in range(len(x)):  # image by image: each one's floats stay in the CPU cache
            self.transform.normalize(x[i], out=out[i])
        return out, y


def _labels(values: list[Any]) -> torch.Tensor:
    """Class indices as a long ``(B,)`` tensor; multi-hot vectors (multi-label) stacked to ``(B, L)``."""
    if values and isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    return torch.tensor(values, dtype=torch.long)


def _new_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory (a worker's batch reaches the main process uncopied)."""
    elem = torch.empty(0, dtype=dtype)
    try:  # what default_collate does
        storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
        return elem.new(storage).resize_(*shape)
    except (AttributeError, RuntimeError):
        return torch.empty(shape, dtype=dtype)


def _collate_present(batch: list[Any]) -> Any:
    """``default_collate`` of the items not dropped (None)."""
    return default_collate([b for b in batch if b is not None])


def _seed_worker(worker_id: int) -> None:
    # numpy and random for user transforms; torch is seeded per sample
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    workers: int | None = None,
    drop_last: bool = False,
    batch_sampler: Iterable[list[int]] | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    device: torch.device | str | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with reproducible order and augmentation.

    Args:
        dataset: usually an :class:`ImageDataset` (any map-style dataset works).
        batch_size, shuffle, drop_last: as in ``DataLoader`` (unused with ``batch_sampler``).
        seed: the order and the augmentation of epoch ``e`` depend only on ``(seed, e)``.
        workers: worker processes (None = :func:`default_workers`).
        batch_sampler: your own (e.g. a distributed one with ``set_epoch``), wrapped the same way.
        pin_memory: None = when the batches go to a CUDA device (``device``, or any CUDA GPU
            when ``device`` is None).
        persistent_workers: None = whenever there are workers.
        prefetch_factor: batches each worker prepares ahead (None = PyTorch's default).
        device: where the batches will be used: worker batches are moved there and normalised
            there; decides ``pin_memory``.

    Returns:
        A ``DataLoader`` yielding ``(images float (B, C, H, W), labels long (B,))`` (multi-label:
        ``labels float (B, L)``, multi-hot); its
        ``batch_sampler.set_epoch(e)`` selects the epoch.
    """
    inner = batch_sampler or EpochBatchSampler(len(dataset), batch_size=batch_size, shuffle=shuffle, seed=seed, even=False, drop_last=drop_last)  # type: ignore[arg-type]
    sampler: Iterable = _SeededBatches(inner, seed) if isinstance(dataset, ImageDataset) else inner
    view: Dataset = dataset
    collate: Any = _collate_present
    if isinstance(dataset, ImageDataset) and isinstance(dataset.transform, ImageTransform):
        view, collate = _RawView(dataset), _NormalizeCollate(dataset.transform)
    size = getattr(inner, "batch_size", batch_size)
    n_workers = default_workers(len(dataset), batch_size=size) if workers is None else max(0, workers)  # type: ignore[arg-type]
    if pin_memory is None:
        pin_memory = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    extra: dict[str, Any] = {}
    target = torch.device(device) if device is not None else None
    if collate is not _collate_present:
        loader_cls: type[DataLoader] = _ImageLoader
        extra.update(transform=dataset.transform, device=target)  # type: ignore[attr-defined]
    else:
        loader_cls = DataLoader
    if n_workers > 0:
        extra["persistent_workers"] = True if persistent_workers is None else persistent_workers
        extra["worker_init_fn"] = _seed_worker
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return loader_cls(
        view,
        batch_sampler=sampler,  # type: ignore[arg-type]
        num_workers=n_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
