"""Class imbalance: what ``--balance`` does, what ``auto`` chooses and why, and the weights.

``loss``
    the training loss weighs each class (multiclass) inversely to its frequency, normalised as
    scikit-learn's ``class_weight="balanced"``: ``w_c = n / (K · n_c)``, so that the average
    weight over the training images is 1 and the loss keeps its scale. Multi-label: each label's
    positive term is weighted ``pos_weight_l = negatives_l / positives_l`` (PyTorch's
    ``BCEWithLogitsLoss`` convention: a label with 100 positives and 300 negatives gets 3).
``sampler``
    every image keeps its place in the data; each epoch draws ``n`` images with replacement,
    image ``i`` with probability proportional to :func:`sample_weights` (``1 / n_c`` of its
    class; multi-label: ``1 / n_l`` of its rarest positive label, and ``1 / n_none`` for images
    without a label), so every class is drawn about equally often.
``auto``
    measures the imbalance of the training split (largest ÷ smallest class; multi-label: the
    most ÷ the least frequent label among those with a positive) and chooses ``loss`` from
    :data:`AUTO_RATIO` (3×, the ratio ``regraft scan`` flags) up, ``none`` below. Weighting
    rather than sampling: it keeps an epoch one pass over every image, applies exactly to the
    probe (as its sample weights) and to cached features, and never repeats a rare image many
    times in one epoch.

The linear probe takes one weight per image (``features.linear.fit_probe(sample_weight=)``): it
gets the :func:`sample_weights` of its images in both modes (for single-label data these are the
class weights of ``loss`` exactly; multi-label positive weights per label have no per-image
equivalent, so the probe weighs each image by its rarest label instead).

Plain Python: no torch, so the rules can be read and tested alone.

Example:
    >>> class_weights([30, 10])
    [0.6666666666666666, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from regraft.config import BALANCES
from regraft.errors import ConfigError

__all__ = [
    "AUTO_RATIO", "Balance", "BalanceChoice", "choose_balance", "imbalance_ratio", "class_weights", "pos_weights",
    "sample_weights", "label_counts",
]

AUTO_RATIO = 3.0  # largest ÷ smallest class from which auto balances (regraft scan's --imbalance default)


class Balance(str, Enum):
    """``--balance``: ``auto``, ``none``, ``loss`` (class-weighted loss), ``sampler`` (class-balanced sampler)."""

    AUTO = "auto"
    NONE = "none"
    LOSS = "loss"
    SAMPLER = "sampler"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Balance) -> Balance:
        """``"loss"`` -> ``Balance.LOSS``; ConfigError listing the choices otherwise."""
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"balance must be one of {', '.join(BALANCES)}; got {value!r}") from None


@dataclass(frozen=True)
class BalanceChoice:
    """What a run does about imbalance, and why (one line for the user and ``summary.json``).

    Attributes:
        mode: ``none``, ``loss`` or ``sampler`` (never ``auto``).
        asked: what ``--balance`` said.
        ratio: the measured imbalance (largest ÷ smallest count), None when it cannot be measured.
        reason: ``"balance: loss (the largest class has 10.0x the images of the smallest)"``.
    """

    mode: Balance
    asked: Balance
    ratio: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "asked": self.asked.value, "imbalance": self.ratio, "reason": self.reason}


def imbalance_ratio(counts: Sequence[int]) -> float | None:
    """Largest ÷ smallest of the counts above 0 (None with fewer than one such count)."""
    present = [int(c) for c in counts if c > 0]
    return max(present) / min(present) if present else None


def _measured(ratio: float | None, multilabel: bool) -> str:
    if ratio is None:
        return "no label has a positive training image" if multilabel else "no training images"
    if multilabel:
        return f"the most frequent label has {ratio:.1f}x the positives of the rarest"
    return f"the largest class has {ratio:.1f}x the images of the smallest"


def choose_balance(asked: str | Balance, *, counts: Sequence[int], multilabel: bool) -> BalanceChoice:
    """Resolve ``--balance`` for a training split with these class (label-positive) counts.

    Args:
        asked: ``auto``, ``none``, ``loss`` or ``sampler``.
        counts: training images per class (multi-label: positive images per label).
        multilabel: whether the counts are label positives.

    Returns:
        A :class:`BalanceChoice` whose ``reason`` says what was measured and chosen.

    Raises:
        ConfigError: an unknown choice.
    """
    wanted = Balance.parse(asked)
    ratio = imbalance_ratio(counts)
    measured = _measured(ratio, multilabel)
    if wanted is not Balance.AUTO:
        return BalanceChoice(wanted, wanted, ratio, f"balance: {wanted.value} (--balance {wanted.value}; {measured})")
    if ratio is not None and ratio >= AUTO_RATIO:
        return BalanceChoice(Balance.LOSS, wanted, ratio, f"balance: loss ({measured})")
    return BalanceChoice(Balance.NONE, wanted, ratio, f"balance: none ({measured}; auto balances from {AUTO_RATIO:g}x)")


def class_weights(counts: Sequence[int]) -> list[float]:
    """``n / (K · n_c)`` per class (scikit-learn's ``"balanced"``); 1.0 for a class with no image."""
    n, k = sum(counts), len(counts)
    return [n / (k * c) if c > 0 else 1.0 for c in counts]


def pos_weights(positives: Sequence[int], n: int) -> list[float]:
    """``(n - p) / p`` per label (negatives ÷ positives); 1.0 for a label with no positive."""
    return [(n - p) / p if p > 0 else 1.0 for p in positives]


def label_counts(labels: Sequence[Any], num_classes: int, *, multilabel: bool) -> list[int]:
    """Images per class, or positive images per label (``labels``: class indices or index tuples)."""
    counts = [0] * num_classes
    for y in labels:
        for c in (y if multilabel else (y,)):
            counts[int(c)] += 1
    return counts


def sample_weights(labels: Sequence[Any], num_classes: int, *, multilabel: bool) -> list[float]:
    """One sampling weight per image, normalised to a mean of 1 (see the module doc).

    Args:
        labels: each image's class index, or (multi-label) the tuple of its positive labels.
        num_classes: classes (labels) in all.

    Example:
        >>> sample_weights([0, 0, 0, 1], 2, multilabel=False)
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    if not labels:
        return []
    counts = label_counts(labels, num_classes, multilabel=multilabel)
    empty = sum(1 for y in labels if multilabel and not y)
    raw = []
    for y in labels:
        if not multilabel:
            raw.append(1.0 / counts[int(y)])
        elif y:
            raw.append(max(1.0 / counts[int(c)] for c in y))
        else:
            raw.append(1.0 / empty)
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]
