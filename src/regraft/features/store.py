"""Prefix outputs computed once per image: the store, the dataset over it and its loader.

Features are ``(views, n, *shape)``. An augmented view ``k`` of the training set is the
augmentation the image loader gives at epoch ``k`` (``make_loader`` seeds each sample's crop by
``(seed, epoch, index)``); an optional un-augmented view comes first. A training epoch serves
one view per sample: drawn at random per ``(seed, epoch)``, or view ``epoch % views``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class FeatureCache:
    """``views × n`` outputs of a frozen prefix, in memory or in a memory-mapped file.

    Attributes:
        features: ``(views, n, *shape)`` float32 or float16 tensor (backed by a file when
            ``path`` is set; the file is deleted when the cache is closed or collected).
        labels: ``(n,)`` long tensor of class indices (multi-label data: ``(n, L)`` float32 multi-hot rows).
        path: the memory-mapped file, or None when the features are in RAM.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, path: Path | None = None) -> None:
        self.features = features
        self.labels = labels
        self.path = path
        self._finalizer = weakref.finalize(self, _unlink, path) if path is not None else None

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return int(self.features.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[2:])

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def describe(self) -> str:
        where = "in memory" if self.in_memory else f"memory-mapped at {self.path}"
        dtype = "fp16" if self.features.dtype == torch.float16 else "fp32"
        return f"{len(self)} images × {self.views} view(s) × {self.shape} {dtype} = {_mib(self.nbytes)} {where}"

    def batch(self, indices: Sequence[int], *, view: int | torch.Tensor = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features float32, labels)`` of ``indices`` in ``view`` (one view, or one per index)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if isinstance(view, torch.Tensor):
            return self.features[view % self.views, idx].float(), self.labels[idx]
        return self.features[view % self.views][idx].float(), self.labels[idx]

    def close(self) -> None:
        """Drop the features and delete the memory-mapped file, if any."""
        self.features = torch.empty(0)
        if self._finalizer is not None:
            self._finalizer()

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        prefix: nn.Module,
        dataset: Any,
        *,
        views: int = 1,
        clean: Any | None = None,
        batch_size: int = 64,
        device: torch.device | str | None = None,
        autocast: Callable[[], Any] | None = None,
        ram_bytes: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        fp16: bool = False,
        seed: int = 0,
        workers: int | None = None,
    ) -> FeatureCache:
        """Run ``prefix`` (eval mode, no grad) over ``dataset`` once per view and keep the outputs.

        Args:
            prefix: the frozen part of a :class:`~regraft.features.Cut` (put in eval mode here).
            dataset: yields ``(image tensor, label)``; an ``ImageDataset`` gives view ``k`` the
                augmentation of epoch ``k``.
            views: augmented views per image (1 when augmentation is off).
            clean: the same images without augmentation (same order); when given, their
                features are view 0 and the ``views`` augmented ones follow.
            batch_size: images per forward pass.
            device: where the prefix runs (default: where its parameters are).
            autocast: a context factory for mixed precision (``accelerator.autocast``).
            ram_bytes: the most bytes kept in memory; beyond it the features go to a
                memory-mapped file (default: a quarter of the available memory).
            cache_dir: folder for that file (its ``tmp/``; default the decode cache's folder).
            fp16: store half-precision features (half the memory; batches come back as float32).
            seed: the loader's seed (the augmentation of view ``k`` depends on ``(seed, k)``).
            workers: DataLoader workers (None = the data module's default).

        Returns:
            The filled :class:`FeatureCache`.

        Raises:
            ValueError: the dataset is empty, or its views differ in length.
        """
        from regraft.data import make_loader

        device = torch.device(device) if device is not None else _device_of(prefix)
        sources = ([(clean, 0)] if clean is not None else []) + [(dataset, k) for k in range(views)]
        loaders: dict[int, Any] = {}
        prefix.eval()
        store: _Store | None = None
        for view, (source, epoch) in enumerate(sources):
            if id(source) not in loaders:
                loaders[id(source)] = make_loader(
                    source, batch_size=batch_size, shuffle=False, seed=seed, workers=workers, device=device,
                    persistent_workers=False,
                )
            loader = loaders[id(source)]
            loader.batch_sampler.set_epoch(epoch)
            pos = 0
            for x, y in loader:
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = prefix(x.to(device, non_blocking=True))
                if store is None:
                    store = _Store(len(sources), len(dataset), tuple(out.shape[1:]), fp16=fp16,
                                   ram_bytes=ram_bytes, cache_dir=cache_dir)
                store.put(view, pos, out, y)
                pos += len(y)
            if store is None:
                raise ValueError("the dataset yielded no images to compute features of")
            store.finish_view(view, pos)
        cache = store.to_cache(cls)  # type: ignore[union-attr]
        log.info("feature cache: %s", cache.describe())
        return cache


class _Store:
    """Allocates ``(views, n, *shape)`` in RAM or a file, and fills it batch by batch."""

    def __init__(self, views: int, n: int, shape: tuple[int, ...], *, fp16: bool, ram_bytes: int | None, cache_dir: Any) -> None:
        dtype = torch.float16 if fp16 else torch.float32
        nbytes = views * n * math.prod(shape) * (2 if fp16 else 4)
        budget = ram_bytes if ram_bytes is not None else _default_ram()
        self.path: Path | None = None
        if nbytes <= budget:
            self.features = torch.empty((views, n, *shape), dtype=dtype)
        else:
            self.path = _temp_file(cache_dir)
            mm = np.memmap(self.path, dtype=np.float16 if fp16 else np.float32, mode="w+", shape=(views, n, *shape))
            self.features = torch.from_numpy(mm)
            log.info("features (%s) exceed the RAM budget (%s): memory-mapped at %s", _mib(nbytes), _mib(budget), self.path)
        self.n = n
        self.labels: torch.Tensor | None = None  # shaped by the first batch: (n,) indices or (n, L) multi-hot
        self.filled: list[int] = []

    def put(self, view: int, pos: int, out: torch.Tensor, y: torch.Tensor) -> None:
        self.features[view, pos : pos + len(out)] = out.detach().to("cpu", self.features.dtype)
        if view == 0:
            if self.labels is None:
                self.labels = torch.empty((self.n, *y.shape[1:]), dtype=y.dtype)
            self.labels[pos : pos + len(y)] = y.cpu()

    def finish_view(self, view: int, count: int) -> None:
        # an evaluation loader drops unreadable files, so fewer rows may arrive than planned
        if self.filled and count != self.filled[0]:
            raise ValueError(f"view {view} has {count} images, view 0 has {self.filled[0]}; the views must list the same images")
        self.filled.append(count)

    def to_cache(self, cls: type[FeatureCache]) -> FeatureCache:
        n = self.filled[0]
        features = self.features[:, :n] if n < self.features.shape[1] else self.features
        labels = self.labels if self.labels is not None else torch.empty(0, dtype=torch.long)
        return cls(features, labels[:n].clone(), path=self.path)


class CachedFeatures(torch.utils.data.Dataset):
    """A dataset over a :class:`FeatureCache`: epoch ``e`` serves view ``e % views``.

    With ``mix_views=True`` each sample instead draws its view at random each epoch (seeded by
    ``(seed, epoch)``), so every epoch mixes all views (the linear probe trains this way).
    ``set_epoch`` picks the epoch (:class:`FeatureLoader` does it from its batch sampler).
    """

    def __init__(self, cache: FeatureCache, *, mix_views: bool = False, seed: int = 0) -> None:
        self.cache = cache
        self.mix_views = mix_views and cache.views > 1
        self.seed = seed
        self.epoch = 0
        self._views: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._views = None

    @property
    def view(self) -> int | torch.Tensor:
        """The view of epoch ``epoch``: an int, or one view per sample with ``mix_views``."""
        if not self.mix_views:
            return self.epoch % self.cache.views
        if self._views is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._views = torch.randint(self.cache.views, (len(self.cache),), generator=g)
        return self._views

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        x, y = self.batch([index])
        return x[0], (y[0] if y.ndim > 1 else int(y[0]))

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        view = self.view
        if isinstance(view, torch.Tensor):
            view = view[torch.as_tensor(list(indices), dtype=torch.long)]
        return self.cache.batch(indices, view=view)

    @property
    def labels(self) -> list[int] | list[tuple[int, ...]]:
        """Class indices (multi-label: tuples of label indices), as ``ImageDataset.labels`` gives them."""
        y = self.cache.labels
        if y.ndim > 1:
            return [tuple(torch.nonzero(row).flatten().tolist()) for row in y]
        return y.tolist()


class FeatureLoader:
    """Batches ``(features, labels)`` from a :class:`CachedFeatures` by a batch sampler.

    Indexing whole batches at once (no workers, no per-item collate) is what makes cached
    epochs cheap. The engine calls ``loader.batch_sampler.set_epoch(e)``; the view follows.
    """

    def __init__(self, dataset: CachedFeatures, batch_sampler: Any) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.set_epoch(getattr(self.batch_sampler, "epoch", 0))
        for indices in self.batch_sampler:
            yield self.dataset.batch(indices)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _default_ram() -> int:
    from regraft.data.cache import available_memory

    return available_memory() // 4


def _temp_file(cache_dir: Any) -> Path:
    from regraft.data.cache import default_cache_dir

    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = folder / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="features-", suffix=".f32", dir=folder)
    os.close(fd)
    return Path(name)


def _unlink(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.2f} GiB"
