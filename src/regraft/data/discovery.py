"""Find the images of a data set: folder layouts, CSV/TSV lists, class names and the split.

Layouts, tried in this order:

``csv``
    ``train_csv`` (and optionally ``val_csv``) list ``path,label`` rows; paths are relative to
    ``root``. Without ``val_csv`` the train rows are split like ``flat-split``.
``split:val`` / ``split:valid`` / ``split:test``
    ``root/train/<class>/`` and one of ``root/val/``, ``root/valid/``, ``root/test/`` (first found).
``flat-split``
    ``root/<class>/`` (or ``root/train/<class>/`` with no validation folder) split per class,
    ``val_fraction`` of each class to validation, deterministically from ``seed``.

Class names are the sorted class folder names (or, for CSVs, the sorted train labels), unless a
classes file (one name per line) is given or ``root/classes.txt`` exists; its order then defines
the label indices. Hidden files and folders, ``__MACOSX`` and non-image extensions are ignored.

Example:
    >>> splits = discover("data/pets")      # doctest: +SKIP
    >>> splits.layout, len(splits.classes)
    ('split:val', 37)
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from regraft.errors import DataError

__all__ = ["Sample", "DataSplits", "discover", "split_stratified", "list_images", "IMAGE_EXTENSIONS", "VAL_DIR_NAMES"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
VAL_DIR_NAMES = ("val", "valid", "test")
_SKIP_DIRS = frozenset({"__MACOSX"})


class Sample(NamedTuple):
    """One image: its path and the index of its class in ``DataSplits.classes``."""

    path: str
    label: int


@dataclass
class DataSplits:
    """What :func:`discover` found: class names and the train and validation samples."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str
    root: str
    ignored: list[str] = field(default_factory=list)  # non-image files inside the class folders

    def counts(self, split: str) -> list[int]:
        """Images per class in ``split`` ("train" or "val"), in class order."""
        tally = Counter(s.label for s in getattr(self, split))
        return [tally.get(i, 0) for i in range(len(self.classes))]


def discover(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_csv: str | os.PathLike | None = None,
    val_csv: str | os.PathLike | None = None,
    classes_file: str | os.PathLike | None = None,
) -> DataSplits:
    """Find classes and train/validation samples under ``root`` (layouts in the module doc).

    Args:
        root: the data folder (CSV paths are relative to it).
        val_fraction: share of each class held out when the data has no validation split.
        seed: makes that split reproducible; the same seed gives the same split.
        train_csv, val_csv: ``path,label`` files (comma or tab separated, header optional; a
            label is a class name or an index into the class list).
        classes_file: class names, one per line (default ``root/classes.txt`` when present).

    Returns:
        A :class:`DataSplits`; samples are sorted by path within each class.

    Raises:
        DataError: missing folder or file, no classes, a class without images, a validation
            class not in train, or a CSV label outside the class list (names file and row).
    """
    from regraft.data._layouts import find_splits

    return find_splits(
        Path(root), val_fraction=val_fraction, seed=seed, train_csv=train_csv,
        val_csv=val_csv, classes_file=classes_file, problems=None,
    )


def split_stratified(
    samples: list[Sample], *, classes: list[str], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split per class: ``round(n * val_fraction)`` images of each class to validation.

    Every class with at least 2 images gets at least 1 validation image and keeps at least 1
    training image; a class with a single image stays in train. Each class is shuffled with
    its own generator seeded by ``(seed, class name)``, so adding images to one class does not
    move the others.

    Returns:
        ``(train, val)``, each sorted by (label, path).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1; got {val_fraction}")
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_label):
        group = sorted(by_label[label])
        n = len(group)
        n_val = 0 if n < 2 else min(max(int(n * val_fraction + 0.5), 1), n - 1)
        order = list(range(n))
        random.Random(f"regraft-split:{seed}:{classes[label]}").shuffle(order)
        held = set(order[:n_val])
        val.extend(s for i, s in enumerate(group) if i in held)
        train.extend(s for i, s in enumerate(group) if i not in held)
        if n == 1:
            log.warning("class '%s' has a single image: it stays in train, none in validation", classes[label])
    return train, val


def list_images(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under ``folder`` (recursively, sorted) and the non-image files skipped.

    Hidden files and folders (names starting with '.') and ``__MACOSX`` are left out of both.
    """
    images: list[str] = []
    others: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            (images if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else others).append(path)
    return sorted(images), sorted(others)
