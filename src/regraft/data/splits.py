"""What a data set's discovery yields: samples, class names, the stratified split."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from regraft.errors import DataError

__all__ = ["Sample", "DataSplits", "split_stratified"]

log = logging.getLogger("regraft.data.discovery")


class Sample(NamedTuple):
    """One image: its path and the index of its class in ``DataSplits.classes`` (multi-label data:
    the sorted tuple of its positive labels' indices, empty for an image with none)."""

    path: str
    label: int | tuple[int, ...]


@dataclass
class DataSplits:
    """What :func:`discover` found: class names and the train and validation samples."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str
    root: str
    ignored: list[str] = field(default_factory=list)  # non-image files inside the class folders
    multilabel: bool = False  # each sample's label is a tuple of label indices

    def counts(self, split: str) -> list[int]:
        """Images per class in ``split`` ("train" or "val"), in class order (multi-label: positives per label)."""
        samples = getattr(self, split)
        tally = Counter(c for s in samples for c in s.label) if self.multilabel else Counter(s.label for s in samples)
        return [tally.get(i, 0) for i in range(len(self.classes))]


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
