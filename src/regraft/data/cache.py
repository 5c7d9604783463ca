"""Decode each image once per run: resized pixels in RAM, spilling to files on disk.

:meth:`DecodeCache.fill` decodes a list of files once (threads: Pillow releases the GIL while
decoding and resizing) to the transform's resize stage, so later epochs only crop, flip and
normalise. Pixels go

- **to RAM** while the cache's byte budget lasts (``ram_bytes``; default a quarter of the
  available memory). They live in a few large uint8 tensors: DataLoader workers started by
  ``fork`` read them without copying, and under ``spawn`` they travel as shared memory.
- **to disk** beyond the budget: one ``.npy`` file per image under
  ``cache_dir/decoded/<size>-<interpolation>/``, named by the BLAKE2b hash of the source
  file's *content* (not its path or mtime: a renamed or touched file still hits, an edited
  one never does). Any process (a DataLoader worker included) reads an image back with one
  ``read`` of the file's tail, served from the OS page cache once warm; that measured faster
  than memory-mapping each file (header parsing and page faults per image). Later runs with
  the same size reuse the files without decoding; they are written atomically, so parallel
  runs can share the folder.

Pixels are stored in the run's format (:class:`~regraft.data.pixels.PixelFormat`, part of the
resize spec): ``(H, W, C)`` uint8, or uint16 for 16-bit runs, so 16-bit images reach the
normalisation with all their bits (twice the bytes of 8 bits, half those of float32).

One cache (one budget) serves the train and the validation set. Files that fail to decode are
reported in :attr:`CachedImages.failed` rather than raised. Under ``torchrun`` each process
fills its own RAM part: give each a share of the budget (``cache_ram / local processes``).

Example:
    >>> cache = DecodeCache(ram_bytes="2G")                      # doctest: +SKIP
    >>> images = cache.fill(paths, resize=transform.resize)     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regraft.config import parse_bytes  # the one parser: Config.validate checks cache_ram with it
from regraft.data._system import available_memory, cpu_count
from regraft.data.imageio import ImageDecodeError, ResizeSpec, decode_resized, read_image_bytes
from regraft.data.pixels import RGB8, PixelFormat

__all__ = ["DecodeCache", "CachedImages", "parse_bytes", "default_cache_dir", "available_memory"]

log = logging.getLogger(__name__)

_BLOCK_BYTES = 256 * 2**20
_NONE, _RAM, _DISK = 0, 1, 2
_FORMAT = "v1"


def default_cache_dir() -> Path:
    """``$REGRAFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/regraft``, else ``~/.cache/regraft``."""
    if os.environ.get("REGRAFT_CACHE_DIR"):
        return Path(os.environ["REGRAFT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "regraft"


def _read_npy_tail(path: str, shape: tuple[int, int, int], dtype: np.dtype = np.dtype(np.uint8)) -> np.ndarray:
    """The pixels of a ``.npy`` file whose shape and dtype are known: one read of its last bytes.

    Measured against ``np.load(mmap_mode=...)`` per image: parsing the header and faulting in a
    fresh mapping cost several times more than reading the ~250 kB the crop needs anyway.
    """
    out = np.empty(shape, dtype=dtype)
    with open(path, "rb") as fh:
        fh.seek(-out.nbytes, os.SEEK_END)
        if fh.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise ValueError("file shorter than its image")
    return out


class CachedImages:
    """The decoded pixels of one list of files (from :meth:`DecodeCache.fill`), by index."""

    def __init__(
        self, blocks: list[torch.Tensor], table: np.ndarray, disk: dict[int, str], failed: dict[int, ImageDecodeError],
        pixels: PixelFormat = RGB8,
    ) -> None:
        self.blocks = blocks
        self.pixels = pixels  # the channels and dtype of every item
        self.table = table  # (n, 5) int64: where (none/ram/disk), block, offset, height, width
        self.disk = disk
        self.failed = failed

    def __len__(self) -> int:
        return len(self.table)

    def get(self, index: int) -> torch.Tensor | np.ndarray | None:
        """``(H, W, C)`` pixels of item ``index`` (uint8 as a tensor; uint16 as an array, torch
        having no uint16 arithmetic), or None when it is not cached."""
        where, block, offset, h, w = (int(v) for v in self.table[index])
        c, dtype = self.pixels.channels, self.pixels.dtype
        if where == _RAM:
            raw = self.blocks[block][offset : offset + h * w * c * dtype.itemsize]
            return raw.view(h, w, c) if dtype == np.uint8 else raw.numpy().view(dtype).reshape(h, w, c)
        if where == _DISK:
            try:
                pixels = _read_npy_tail(self.disk[index], (h, w, c), dtype)
                return torch.from_numpy(pixels) if dtype == np.uint8 else pixels
            except (OSError, ValueError) as exc:  # deleted or damaged under us: decode instead
                log.warning("decode cache file %s unreadable (%s); decoding the image instead", self.disk[index], exc)
        return None

    def subset(self, indices: Sequence[int]) -> CachedImages:
        """The items at ``indices``, renumbered from 0 (pixels are shared, not copied)."""
        idx = list(indices)
        disk = {new: self.disk[old] for new, old in enumerate(idx) if old in self.disk}
        failed = {new: self.failed[old] for new, old in enumerate(idx) if old in self.failed}
        return CachedImages(self.blocks, self.table[idx].copy(), disk, failed, self.pixels)

    @property
    def ram_bytes(self) -> int:
        return sum(int(b.numel()) for b in self.blocks)


class DecodeCache:
    """A RAM budget and a disk folder for decoded, resized images (see the module doc).

    Args:
        ram_bytes: the most bytes of pixels held in memory, as bytes or ``"4G"``/``"512M"``;
            None = a quarter of the memory available now. ``0`` keeps everything on disk.
        cache_dir: root of the on-disk part (files go to ``cache_dir/decoded``); None =
            :func:`default_cache_dir`.
        threads: decoding threads (None = the CPUs this process may use, at most 8).

    Raises:
        ConfigError: ``ram_bytes`` is not a size.
    """

    def __init__(self, *, ram_bytes: int | str | None = None, cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        self.ram_budget = parse_bytes(ram_bytes) if ram_bytes is not None else available_memory() // 4
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.threads = max(1, threads or min(8, cpu_count()))
        self.ram_allocated = 0
        self.stats = {"decoded": 0, "reused": 0, "ram": 0, "disk": 0, "failed": 0, "uncached": 0}
        self._disk_warned = False
        # what this cache decoded, kept until the cache is dropped: filling the same files again
        # (a second dataset, the next stage of lp-ft) returns it instead of taking more RAM
        self._filled: dict[tuple[str, str], CachedImages] = {}

    @classmethod
    def for_config(
        cls, data_config: Any, *, ram: int | str | None = None, cache_dir: str | os.PathLike | None = None, threads: int | None = None
    ) -> DecodeCache:
        """The cache of one training process: ``ram`` (``cache_ram``) shared by the local processes.

        Under ``torchrun``/``accelerate launch`` every process on a machine fills its own RAM
        part, so each gets ``ram / LOCAL_WORLD_SIZE``; the disk part is shared. Logs how many
        images of ``data_config``'s size the budget holds.

        Args:
            data_config: the run's ``DataConfig`` (input size and crop fraction).
            ram: the machine's budget (``"4G"``, bytes; None = a quarter of the available memory).
            cache_dir, threads: as for the constructor.
        """
        total = parse_bytes(ram) if ram is not None else available_memory() // 4
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        cache = cls(ram_bytes=total // local, cache_dir=cache_dir, threads=threads)
        c, h, w = data_config.input_size
        side = int(min(h, w) / data_config.crop_pct)
        per_image = c * (2 if getattr(data_config, "bit_depth", 8) == 16 else 1) * side * side * 4 // 3  # a 4:3 photo at the resize stage
        log.info("decode cache: %.0f MB of RAM per process, about %d images at %d px", cache.ram_budget / 2**20, cache.ram_budget // per_image, side)
        return cache

    def folder(self, resize: ResizeSpec) -> Path:
        """Where images resized per ``resize`` are kept on disk."""
        return self.cache_dir / "decoded" / f"{_FORMAT}-{resize.key}"

    def fill(self, paths: Sequence[str], *, resize: ResizeSpec, progress: Callable[[int, int], None] | None = None) -> CachedImages:
        """Decode (or find on disk) every file in ``paths`` once, resized per ``resize``.

        Args:
            paths: image files; their order is the index order of the result.
            resize: the transform's resize stage (``ImageTransform.resize``).
            progress: called as ``progress(done, total)`` after each file.

        Returns:
            :class:`CachedImages`; files that failed to decode are in its ``failed``. The same
            ``paths`` and ``resize`` again return the same object.
        """
        memo_key = (resize.key, hashlib.blake2b("\0".join(paths).encode("utf-8", "surrogateescape")).hexdigest())
        if memo_key in self._filled:
            return self._filled[memo_key]
        t0 = time.perf_counter()
        placer = _Placer(self, len(paths), resize.pixels)
        writes = []
        with ThreadPoolExecutor(self.threads, thread_name_prefix="regraft-decode") as pool:
            for i, loaded in enumerate(_in_order(pool, lambda p: self._load(p, resize), paths, 4 * self.threads)):
                write = placer.place(i, loaded)
                if write is not None:
                    writes.append(pool.submit(self._write, *write))
                if progress is not None:
                    progress(i + 1, len(paths))
            for i, fut in enumerate(writes):
                if not fut.result():
                    placer.forget(placer.spilled[i])
        images = placer.finish()
        log.info(
            "decode cache: %d images in %.1fs (%d decoded, %d from %s); %d in RAM (%.0f MB of %.0f MB), %d on disk, %d unreadable",
            len(paths), time.perf_counter() - t0, placer.counts["decoded"], placer.counts["reused"], self.folder(resize),
            placer.counts["ram"], images.ram_bytes / 2**20, self.ram_budget / 2**20, placer.counts["disk"], len(images.failed),
        )
        for key, value in placer.counts.items():
            self.stats[key] += value
        self._filled[memo_key] = images
        return images

    def _load(self, path: str, resize: ResizeSpec) -> _Loaded:
        try:
            data = read_image_bytes(path)
        except ImageDecodeError as exc:
            return _Loaded(error=exc)
        key = hashlib.blake2b(data, digest_size=16).hexdigest()
        entry = self.folder(resize) / key[:2] / f"{key}.npy"
        if entry.is_file():
            try:
                stored = np.load(entry, mmap_mode="r")
                fmt = resize.pixels
                if stored.dtype == fmt.dtype and stored.ndim == 3 and stored.shape[-1] == fmt.channels:
                    return _Loaded(pixels=stored, entry=str(entry), reused=True)
            except (OSError, ValueError):
                pass  # damaged entry: decode again and overwrite it
        try:
            return _Loaded(pixels=decode_resized(data, name=path, resize=resize), entry=str(entry))
        except ImageDecodeError as exc:
            return _Loaded(error=exc)

    def _write(self, entry: str, pixels: np.ndarray) -> bool:
        tmp = f"{entry}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, pixels)
            os.replace(tmp, entry)
            return True
        except OSError as exc:
            if not self._disk_warned:
                self._disk_warned = True
                log.warning("decode cache cannot write to %s (%s): images over the RAM budget are decoded every epoch", entry, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False


class _Loaded:
    __slots__ = ("pixels", "entry", "reused", "error")

    def __init__(self, *, pixels: np.ndarray | None = None, entry: str | None = None, reused: bool = False, error: ImageDecodeError | None = None) -> None:
        self.pixels, self.entry, self.reused, self.error = pixels, entry, reused, error


class _Placer:
    """Puts loaded images in RAM blocks while the budget lasts, else on disk (main thread only)."""

    def __init__(self, cache: DecodeCache, n: int, pixels: PixelFormat) -> None:
        self.cache = cache
        self.pixels = pixels
        self.table = np.zeros((n, 5), dtype=np.int64)
        self.blocks: list[torch.Tensor] = []
        self.used = 0  # bytes used in the last block
        self.disk: dict[int, str] = {}
        self.failed: dict[int, ImageDecodeError] = {}
        self.spilled: list[int] = []  # indices whose disk file is being written, in submit order
        self.counts = {"decoded": 0, "reused": 0, "ram": 0, "disk": 0, "failed": 0, "uncached": 0}

    def place(self, i: int, loaded: _Loaded) -> tuple[str, np.ndarray] | None:
        """Record item ``i``; returns ``(entry, pixels)`` when a disk file must be written."""
        if loaded.error is not None:
            self.failed[i] = loaded.error
            self.counts["failed"] += 1
            return None
        pixels = loaded.pixels
        self.counts["reused" if loaded.reused else "decoded"] += 1
        h, w = pixels.shape[:2]
        slot = self._ram_slot(pixels.nbytes)
        if slot is not None:
            block, offset = slot
            self.blocks[block][offset : offset + pixels.nbytes].numpy()[:] = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
            self.table[i] = (_RAM, block, offset, h, w)
            self.counts["ram"] += 1
            return None
        self.table[i] = (_DISK, 0, 0, h, w)
        self.disk[i] = loaded.entry
        self.counts["disk"] += 1
        if loaded.reused:
            return None
        self.spilled.append(i)
        return loaded.entry, np.asarray(pixels)

    def forget(self, i: int) -> None:
        """Item ``i`` could not be written to disk: it is decoded on the fly instead."""
        self.table[i, 0] = _NONE
        self.disk.pop(i, None)
        self.counts["disk"] -= 1
        self.counts["uncached"] += 1

    def _ram_slot(self, nbytes: int) -> tuple[int, int] | None:
        if self.blocks and self.used + nbytes <= self.blocks[-1].numel():
            offset = self.used
            self.used += nbytes
            return len(self.blocks) - 1, offset
        remaining = self.cache.ram_budget - self.cache.ram_allocated
        if nbytes > remaining:
            return None
        self._trim_last()
        size = min(max(_BLOCK_BYTES, nbytes), remaining)
        self.blocks.append(torch.empty(size, dtype=torch.uint8))
        self.cache.ram_allocated += size
        self.used = nbytes
        return len(self.blocks) - 1, 0

    def _trim_last(self) -> None:
        """Give back the unused tail of the last block (pages never written cost nothing, but count)."""
        if self.blocks and self.used < self.blocks[-1].numel():
            self.cache.ram_allocated -= self.blocks[-1].numel() - self.used
            self.blocks[-1] = self.blocks[-1][: self.used].clone()

    def finish(self) -> CachedImages:
        self._trim_last()
        return CachedImages(self.blocks, self.table, self.disk, self.failed, self.pixels)


def _in_order(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, window: int):
    """``map(fn, items)`` on ``pool`` in order, with at most ``window`` results waiting in memory."""
    pending: deque = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, _END)
        if nxt is not _END:
            pending.append(pool.submit(fn, nxt))
        yield result


_END = object()
