"""How predictions are decided, in numpy: the torch-free ONNX runtime and ``regraft predict`` share it.

Multiclass: softmax probabilities, ranked. Multi-label: a sigmoid per label, and every label whose
probability is above its threshold (``model.json``'s ``thresholds``, chosen on validation) is
predicted, strictly above (``p > t``); a run without thresholds decides at
:data:`DEFAULT_THRESHOLD`.

Example:
    >>> import numpy as np
    >>> p = probabilities(np.array([[2.0, -1.0, 0.0]]), multilabel=True)
    >>> above_thresholds(p[0], ["cat", "dog", "bird"], [0.5, 0.5, 0.4])
    [{'class': 'cat', 'prob': 0.880797, 'threshold': 0.5}, {'class': 'bird', 'prob': 0.5, 'threshold': 0.4}]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "probabilities", "above_thresholds", "read_thresholds", "thresholds_problem"]

DEFAULT_THRESHOLD = 0.5


def probabilities(logits: np.ndarray, *, multilabel: bool) -> np.ndarray:
    """``(n, K)`` logits -> float64 probabilities: softmax over classes, or a sigmoid per label."""
    z = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def above_thresholds(probs: Sequence[float], classes: Sequence[str], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """The labels whose probability is above their threshold, most probable first (ties: label order)."""
    chosen = [j for j in range(len(classes)) if float(probs[j]) > float(thresholds[j])]
    chosen.sort(key=lambda j: (-float(probs[j]), j))
    return [{"class": classes[j], "prob": round(float(probs[j]), 6), "threshold": round(float(thresholds[j]), 6)} for j in chosen]


def thresholds_problem(card: dict[str, Any]) -> str | None:
    """What is wrong with a model card's ``task`` and ``thresholds`` (None when they are usable)."""
    task = card.get("task", "multiclass")
    if task not in ("multiclass", "multilabel"):
        return f"'task' must be multiclass or multilabel, got {task!r}"
    values = card.get("thresholds")
    if values is None:
        return None
    n = len(card.get("classes") or [])
    if task != "multilabel":
        return "'thresholds' belong to a multilabel model, but 'task' is multiclass"
    if not isinstance(values, list) or len(values) != n:
        return f"'thresholds' must list one number per class ({n}), got {values!r}"[:200]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        return "'thresholds' must be probabilities between 0 and 1"
    return None


def read_thresholds(card: dict[str, Any]) -> list[float] | None:
    """A checked card's per-label thresholds (multi-label), :data:`DEFAULT_THRESHOLD` each when it has none."""
    if card.get("task", "multiclass") != "multilabel":
        return None
    values = card.get("thresholds")
    n = len(card["classes"])
    return [float(v) for v in values] if values is not None else [DEFAULT_THRESHOLD] * n
