"""The training dataset: skips files that fail to decode, serves cached pixels, seeds augmentation.

A file that cannot be decoded is never fatal during training: it is logged, its path is
appended once to the skip log (``RUN/skipped_files.txt``; safe from DataLoader worker
processes), and the next readable sample in dataset order takes its place (``on_error=
"substitute"``, for training) or the batch is one image shorter (``on_error="drop"``, for
evaluation, so that no image is counted twice). With a decode cache every file is decoded at
construction, so unreadable ones are known, logged and left out before the first epoch.

Example:
    >>> ds = ImageDataset(splits.train, build_transforms(cfg, train=True), skip_log="run/skipped_files.txt")  # doctest: +SKIP
    >>> x, y = ds[0]                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from regraft.data._system import cpu_count
from regraft.data.cache import CachedImages, DecodeCache
from regraft.data.imageio import ImageDecodeError, load_image, load_pixels, probe_image
from regraft.data.pixels import RGB8, PixelFormat
from regraft.data.splits import DataSplits, Sample
from regraft.data.transforms import ImageTransform
from regraft.data.views import read_eval_pixels
from regraft.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: appends are not locked; a path may then be listed twice
    fcntl = None  # type: ignore[assignment]

__all__ = ["ImageDataset", "SkipLog", "read_skip_log", "check_readable", "sample_batch", "sample_seed"]

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch (a 64-bit mix of the three)."""
    x = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + (index + 1) * 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


class SkipLog:
    """Appends each skipped path once to a text file, from any number of processes.

    Each line is one path. Writers take an exclusive ``flock`` on the file, read it, and append
    only paths not yet listed; a line is written with a single ``O_APPEND`` write.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._written: set[str] = set()

    def add(self, image_path: str) -> bool:
        """Append ``image_path`` unless already listed; True when this call wrote it."""
        if image_path in self._written:
            return False
        self._written.add(image_path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if image_path in _read_all(fd).decode("utf-8", "replace").splitlines():
                return False
            os.write(fd, (image_path.replace("\n", " ") + "\n").encode("utf-8"))
            return True
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def read_skip_log(path: str | os.PathLike) -> list[str]:
    """The paths listed in a skip log (empty when the file does not exist)."""
    p = Path(path)
    return [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln] if p.is_file() else []


class ImageDataset(Dataset):
    """``(image tensor (C, H, W), label)`` pairs from samples, robust to unreadable files.

    Args:
        samples: ``(path, label)`` pairs (``DataSplits.train`` / ``.val``).
        transform: from :func:`build_transforms` (needed for the cache, :meth:`raw` and
            :func:`sample_batch`), or any callable taking an RGB PIL image.
        cache: a :class:`DecodeCache`: decode every file now, once, and serve its pixels after.
        skip_log: file to list skipped paths in (``RUN/skipped_files.txt``).
        on_error: ``"substitute"`` (training) or ``"drop"`` (evaluation); see the module doc.
        num_labels: multi-label data (each sample's label a tuple of label indices): labels come
            out as multi-hot float32 vectors of this width.

    Raises:
        DataError: no sample is readable.

    Indexing with ``(index, seed)`` (what :func:`make_loader` does) runs the random crop under
    that seed, so an epoch's augmentation depends only on ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        samples: Sequence[Sample | tuple[str, int]],
        transform: ImageTransform | Callable[[Any], torch.Tensor],
        *,
        cache: DecodeCache | None = None,
        skip_log: str | os.PathLike | None = None,
        on_error: str = "substitute",
        num_labels: int | None = None,
    ) -> None:
        if on_error not in ("substitute", "drop"):
            raise ValueError(f"on_error must be 'substitute' or 'drop'; got {on_error!r}")
        self.num_labels = num_labels
        self.samples = [Sample(str(p), _label(y)) for p, y in samples]
        self.transform = transform
        self.on_error = on_error
        self.skip_log = SkipLog(skip_log) if skip_log is not None else None
        self.skipped: list[str] = []  # paths skipped in this process
        self._bad: set[int] = set()
        self._images: CachedImages | None = None
        given = len(self.samples)  # an empty split (no validation images) is allowed; all unreadable is not
        if cache is not None and given:
            self._fill(cache)
        if given and not self.samples:
            raise DataError("no readable images in this split: every file failed to decode; run 'regraft scan' on the data")

    def _fill(self, cache: DecodeCache) -> None:
        if not isinstance(self.transform, ImageTransform):
            raise TypeError("the decode cache needs a transform made by build_transforms()")
        images = cache.fill([s.path for s in self.samples], resize=self.transform.resize)
        if images.failed:
            for error in images.failed.values():
                self._note_skip(error)
            keep = [i for i in range(len(self.samples)) if i not in images.failed]
            self.samples = [self.samples[i] for i in keep]
            images = images.subset(keep)
        self._images = images

    @property
    def labels(self) -> list[int] | list[tuple[int, ...]]:
        """Each sample's class index (multi-label: the tuple of its labels' indices)."""
        return [s.label for s in self.samples]

    def target(self, index: int) -> int | torch.Tensor:
        """Sample ``index``'s label as the model is trained on it: a class index, or a multi-hot vector."""
        label = self.samples[index].label
        if self.num_labels is None:
            return label  # type: ignore[return-value]
        hot = torch.zeros(self.num_labels, dtype=torch.float32)
        hot[list(label)] = 1.0  # type: ignore[arg-type]
        return hot

    @property
    def cached(self) -> bool:
        return self._images is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        found = self._first_readable(key)
        if found is None:
            return None
        index, pixels, seed = found
        if isinstance(self.transform, ImageTransform):
            return self.transform.normalize(self._crop(pixels, seed)), self.target(index)
        return _seeded(seed, self.transform, pixels), self.target(index)

    def raw(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        """Like indexing, but the image is the crop before normalisation: uint8 (16-bit images: int32
        holding 0-65535), or None when dropped."""
        if not isinstance(self.transform, ImageTransform):
            raise TypeError("raw() needs a transform made by build_transforms()")
        found = self._first_readable(key)
        if found is None:
            return None
        index, pixels, seed = found
        return self._crop(pixels, seed), self.target(index)

    def _crop(self, pixels: torch.Tensor | np.ndarray, seed: int | None) -> torch.Tensor:
        return _seeded(seed, self.transform.post, pixels)

    def _first_readable(self, key: int | tuple[int, int]) -> tuple[int, Any, int | None] | None:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        n = len(self.samples)
        tries = n if self.on_error == "substitute" else 1
        for step in range(tries):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                return j, self._pixels(j), seed
            except ImageDecodeError as exc:
                self._bad.add(j)
                self._note_skip(exc)
        if self.on_error == "drop":
            return None
        raise DataError(f"none of the {n} images in this split could be decoded; run 'regraft scan' on the data")

    def _pixels(self, index: int) -> Any:
        if self._images is not None:
            pixels = self._images.get(index)
            if pixels is not None:
                return pixels
        path = self.samples[index].path
        if isinstance(self.transform, ImageTransform):
            return read_eval_pixels(path, self.transform.resize)  # the one decode path (data.views)
        return load_image(path)

    def _note_skip(self, error: ImageDecodeError) -> None:
        log.warning("skipped %s: %s", error.path, error.reason)
        self.skipped.append(error.path)
        if self.skip_log is not None:
            try:
                self.skip_log.add(error.path)
            except OSError as exc:
                log.warning("cannot write the skip log %s (%s)", self.skip_log.path, exc)


def _label(y: Any) -> int | tuple[int, ...]:
    """A sample's label as stored: a class index, or the sorted tuple of its labels (multi-label)."""
    if isinstance(y, (tuple, list)):
        return tuple(sorted(int(c) for c in y))
    return int(y)


def _has(sample: Sample, label: int) -> bool:
    return label in sample.label if isinstance(sample.label, tuple) else sample.label == label


def _seeded(seed: int | None, fn: Callable[[Any], torch.Tensor], arg: Any) -> torch.Tensor:
    """``fn(arg)`` with torch's CPU generator seeded by ``seed``, its state restored afterwards."""
    if seed is None:
        return fn(arg)
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that also seeds CUDA, slowly
    try:
        return fn(arg)
    finally:
        torch.set_rng_state(state)


def check_readable(
    splits: DataSplits, *, full: bool = False, threads: int | None = None, pixels: PixelFormat = RGB8,
) -> list[str]:
    """Check before training that every class has a readable training image.

    Reads every file's header (cheap: finds missing, empty and non-image files); then, per
    class, decodes training images in order until one succeeds. ``full=True`` decodes every
    file (finds all truncated and corrupt files, at the cost of one pass over the data).
    Files are decoded in ``pixels``' format (channels and bits), as training will read them.

    Returns:
        The paths found unreadable (sorted); training skips them.

    Raises:
        DataError: a class has no readable training image (names the class and a file).
    """
    samples = splits.train + splits.val
    check = partial(_decode_error, pixels=pixels) if full else _probe_error
    with ThreadPoolExecutor(max(1, threads or min(8, cpu_count()))) as pool:
        errors = dict(zip((s.path for s in samples), pool.map(check, (s.path for s in samples)), strict=True))
    bad = {p: e for p, e in errors.items() if e is not None}
    for label, name in enumerate(splits.classes):
        paths = [s.path for s in splits.train if _has(s, label)]
        if not paths:
            raise DataError(f"class '{name}' has no training images: add images or remove the class")
        if any(_confirm(p, bad, full, pixels) for p in paths):
            continue
        first = bad[paths[0]]
        raise DataError(
            f"class '{name}' has no readable training images ({len(paths)} files, e.g. {first.path}: "
            f"{first.reason}); replace them or remove the class"
        )
    return sorted(bad)


def _confirm(path: str, bad: dict[str, ImageDecodeError], full: bool, pixels: PixelFormat) -> bool:
    """True when ``path`` decodes (recording it in ``bad`` when it does not)."""
    if path in bad:
        return False
    if full:
        return True
    error = _decode_error(path, pixels=pixels)
    if error is not None:
        bad[path] = error
    return error is None


def _probe_error(path: str) -> ImageDecodeError | None:
    try:
        probe_image(path)
    except ImageDecodeError as exc:
        return exc
    return None


def _decode_error(path: str, *, pixels: PixelFormat = RGB8) -> ImageDecodeError | None:
    try:
        load_pixels(path, pixels)
    except ImageDecodeError as exc:
        return exc
    return None


def sample_batch(dataset: ImageDataset, *, n: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[Any]]:
    """``n`` random training images as the model sees them (augmented), before normalisation.

    Returns:
        ``(images, labels)``: ``(H, W, C)`` uint8 (16-bit images: int32) arrays and their class
        indices (multi-label: tuples of label indices), for drawing ``samples.png``.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    images: list[np.ndarray] = []
    labels: list[Any] = []
    for index in order:
        out = dataset.raw((index, sample_seed(seed, 0, index)))
        if out is not None:
            images.append(out[0].permute(1, 2, 0).contiguous().numpy())
            y = out[1]
            labels.append(tuple(int(c) for c in torch.nonzero(y).flatten()) if isinstance(y, torch.Tensor) else int(y))
        if len(images) == n:
            break
    return images, labels
