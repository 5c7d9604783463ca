"""``regraft scan``: everything wrong with a data folder, found in one pass and named by path.

The scan reads every image file once (threads), fully decoding it, and reports images per class
and split; sizes, modes and formats; every missing, empty, non-image, truncated or corrupt file;
exact duplicates (same BLAKE2b content hash), the same image in train and validation (leakage)
or under two classes; empty classes; class imbalance; and layout problems that would stop
:func:`discover` (all of them, not just the first).

Example:
    >>> report = scan("data/pets")          # doctest: +SKIP
    >>> report.ok, len(report.bad_files)
    (False, 3)
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from regraft.data._layouts import find_splits
from regraft.data._system import cpu_count
from regraft.data.imageio import (
    ImageDecodeError,
    decode_image,
    header_info,
    inspect_bytes,
    read_image_bytes,
)
from regraft.data.phash import Fingerprint, fingerprint
from regraft.data.splits import DataSplits

__all__ = ["scan", "ScanReport", "BadFile"]

_TINY = 32  # images whose shorter side is below this many pixels are counted as tiny


@dataclass
class BadFile:
    """A file that cannot be used: ``kind`` is missing, unreadable, not-regular (a FIFO, device or
    socket: never opened), empty, not-image, truncated, corrupt or too-large (over the size cap)."""

    path: str
    split: str
    label: str
    kind: str
    reason: str


@dataclass
class ScanReport:
    """What :func:`scan` found. ``problems`` holds one line per finding; ``ok`` when there is none."""

    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> image files
    readable: dict[str, dict[str, int]]  # split -> class -> files that decode
    bad_files: list[BadFile] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical files
    leakage: list[list[str]] = field(default_factory=list)  # identical files in train and val
    label_conflicts: list[list[str]] = field(default_factory=list)  # identical files, different classes
    empty_classes: list[str] = field(default_factory=list)  # "split/class" without a readable image
    imbalance: dict[str, float] = field(default_factory=dict)  # split -> largest / smallest class
    imbalance_threshold: float = 3.0
    sizes: dict[str, Any] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # non-image files in the class folders
    layout_problems: list[str] = field(default_factory=list)
    # what the deep scan builds on; not part of the JSON
    splits: DataSplits | None = field(default=None, repr=False)
    digests: dict[str, str] = field(default_factory=dict, repr=False)  # path -> BLAKE2b of its bytes
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict, repr=False)  # with fingerprints=True

    _PRIVATE = ("splits", "digests", "fingerprints")

    @property
    def problems(self) -> list[str]:
        out = list(self.layout_problems)
        if self.bad_files:
            kinds = Counter(b.kind for b in self.bad_files)
            detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            out.append(f"{_count(len(self.bad_files), 'unusable file')} ({detail})")
        out += [f"{name} has no readable images" for name in self.empty_classes]
        if self.leakage:
            out.append(f"{_count(len(self.leakage), 'image')} in both train and validation (leakage)")
        if self.label_conflicts:
            out.append(f"{_count(len(self.label_conflicts), 'image')} under more than one class")
        extra = sum(len(g) - 1 for g in self.duplicates)
        if extra:
            out.append(f"{_count(extra, 'duplicate file')} ({_count(len(self.duplicates), 'group')} of identical images)")
        ratio = self.imbalance.get("train", 1.0)
        if ratio > self.imbalance_threshold:
            out.append(f"class imbalance in train: the largest class has {ratio:g}x the images of the smallest")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, splits=None, digests={}, fingerprints={}))
        for name in self._PRIVATE:
            del data[name]
        data["problems"] = self.problems
        data["ok"] = self.ok
        return data


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@dataclass
class _FileInfo:
    path: str
    digest: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    error: ImageDecodeError | None = None
    fingerprint: Fingerprint | None = None


def scan(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_csv: str | os.PathLike | None = None,
    val_csv: str | os.PathLike | None = None,
    classes_file: str | os.PathLike | None = None,
    imbalance_threshold: float = 3.0,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fingerprints: bool = False,
) -> ScanReport:
    """Scan a data folder (same layouts and options as :func:`discover`).

    Args:
        root, val_fraction, seed, train_csv, val_csv, classes_file: as for :func:`discover`.
        imbalance_threshold: flag train when its largest class has more than this many times
            the images of its smallest.
        threads: decoding threads (None = CPUs, at most 8).
        progress: called as ``progress(done, total)`` after each file.
        fingerprints: also take each readable image's perceptual hash (``report.fingerprints``,
            for the deep scan) from the same decode.

    Returns:
        A :class:`ScanReport`.

    Raises:
        DataError: the folder does not exist or has no classes at all (nothing to scan).
    """
    problems: list[str] = []
    splits = find_splits(
        Path(root), val_fraction=val_fraction, seed=seed, train_csv=train_csv, val_csv=val_csv,
        classes_file=classes_file, problems=problems,
    )
    items = [("train", s) for s in splits.train] + [("val", s) for s in splits.val]
    infos = _inspect_all([s.path for _, s in items], threads=threads, progress=progress, fingerprints=fingerprints)
    report = ScanReport(
        root=splits.root, layout=splits.layout, classes=splits.classes,
        counts={"train": _per_class(splits, "train"), "val": _per_class(splits, "val")},
        readable={"train": {}, "val": {}}, imbalance_threshold=imbalance_threshold,
        ignored=splits.ignored, layout_problems=problems, splits=splits,
        digests={i.path: i.digest for i in infos if i.digest is not None and i.error is None},
        fingerprints={i.path: i.fingerprint for i in infos if i.fingerprint is not None},
    )
    _tally(report, splits, items, infos)
    _find_duplicates(report, splits, items, infos)
    return report


def _per_class(splits: DataSplits, split: str) -> dict[str, int]:
    return dict(zip(splits.classes, splits.counts(split), strict=True))


def _inspect_all(paths: list[str], *, threads: int | None, progress, fingerprints: bool = False) -> list[_FileInfo]:
    out: list[_FileInfo] = []
    inspect = _inspect_with_fingerprint if fingerprints else _inspect
    with ThreadPoolExecutor(max(1, threads or min(8, cpu_count())), thread_name_prefix="regraft-scan") as pool:
        for info in pool.map(inspect, paths):
            out.append(info)
            if progress is not None:
                progress(len(out), len(paths))
    return out


def _inspect(path: str) -> _FileInfo:
    info = _FileInfo(path)
    try:
        data = read_image_bytes(path)
        info.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        header = inspect_bytes(data, name=path)  # decodes every byte, at 1/8 scale for JPEGs
        info.width, info.height, info.mode, info.format = header.width, header.height, header.mode, header.format
    except ImageDecodeError as exc:
        info.error = exc
    return info


def _inspect_with_fingerprint(path: str) -> _FileInfo:
    """:func:`_inspect`, decoding upright RGB to take the perceptual hash too (JPEGs at the smallest
    scale that keeps 128 px: at 64 px the centre hashes of cropped copies moved up to 12 bits, not 6)."""
    info = _FileInfo(path)
    try:
        data = read_image_bytes(path)
        info.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        header = header_info(data, name=path)
        info.width, info.height, info.mode, info.format = header.width, header.height, header.mode, header.format
        info.fingerprint = fingerprint(decode_image(data, name=path, draft=(128, 128)))
    except ImageDecodeError as exc:
        info.error = exc
    return info


def _tally(report: ScanReport, splits: DataSplits, items, infos: list[_FileInfo]) -> None:
    readable: dict[str, Counter] = {"train": Counter(), "val": Counter()}
    modes: Counter = Counter()
    formats: Counter = Counter()
    widths, heights = [], []
    for (split, sample), info in zip(items, infos, strict=True):
        name = splits.classes[sample.label]
        if info.error is not None:
            e = info.error
            report.bad_files.append(BadFile(info.path, split, name, e.kind, e.reason))
            continue
        readable[split][name] += 1
        modes[info.mode] += 1
        formats[info.format] += 1
        widths.append(info.width)
        heights.append(info.height)
    report.readable = {s: {c: readable[s][c] for c in splits.classes} for s in ("train", "val")}
    report.empty_classes = [f"{s}/{c}" for s in ("train", "val") for c in splits.classes if not readable[s][c]]
    report.modes, report.formats = dict(modes.most_common()), dict(formats.most_common())
    for split in ("train", "val"):
        present = [n for n in report.readable[split].values() if n]
        if present:
            report.imbalance[split] = round(max(present) / min(present), 2)
    if widths:
        shorter = [min(w, h) for w, h in zip(widths, heights, strict=True)]
        report.sizes = {
            "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
            "tiny": sum(1 for s in shorter if s < _TINY),
            "tiny_below_px": _TINY,
        }


def _find_duplicates(report: ScanReport, splits: DataSplits, items, infos: list[_FileInfo]) -> None:
    groups: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for (split, sample), info in zip(items, infos, strict=True):
        if info.digest is not None:
            groups[info.digest].append((split, sample.label, info.path))
    for members in groups.values():
        if len(members) < 2:
            continue
        paths = sorted(p for _, _, p in members)
        report.duplicates.append(paths)
        if len({s for s, _, _ in members}) > 1:
            report.leakage.append(paths)
        if len({label for _, label, _ in members}) > 1:
            report.label_conflicts.append(paths)
    for lst in (report.duplicates, report.leakage, report.label_conflicts):
        lst.sort()
