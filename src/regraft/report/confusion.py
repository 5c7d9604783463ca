"""The confusion matrix: counts and row-normalised percent side by side, legible up to 50+ classes.

Example:
    >>> plot_confusion([[5, 1], [2, 4]], ["cat", "dog"], "runs/exp1/confusion_matrix.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regraft.report._figure import ReportError, png_figure, short_label

__all__ = ["plot_confusion"]


def plot_confusion(cm: Any, classes: Sequence[str], path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``confusion_matrix.png``: counts (left) and row-normalised percent (right).

    Rows are true classes, columns predictions. Sizes scale with the class count: cells keep
    their numbers up to 30 classes, label text shrinks, and 50 or more classes stay legible.

    Args:
        cm: a K×K array of non-negative counts (anything ``numpy.asarray`` takes).
        classes: the K class names, in index order.
        path: where to write the PNG.
        title: a heading above both panels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: ``cm`` is not square, does not match ``classes`` or holds negative counts.
    """
    counts = _check_confusion(cm, classes)
    k = counts.shape[0]
    sums = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, sums, out=np.zeros_like(counts, dtype=float), where=sums > 0)
    panel = min(max(2.5 + 0.28 * k, 4.0), 14.0)
    cell_pt = (panel - 1.6) * 72 / k
    fonts = {"tick": min(max(cell_pt * 0.6, 4.5), 9.0), "cell": min(max(cell_pt * 0.32, 4.0), 9.0)}
    total, correct = counts.sum(), np.trace(counts)
    acc = f"accuracy {100 * correct / total:.1f}%, n={int(total)}" if total else "no samples"
    with png_figure(path, figsize=(2 * panel + 1.2, panel + 0.6)) as fig:
        left, right = fig.subplots(1, 2)
        _matrix(fig, left, counts, classes, fonts, vmax=max(float(counts.max()), 1.0), fmt=lambda v: f"{int(v)}")
        _matrix(fig, right, norm * 100, classes, fonts, vmax=100.0, fmt=lambda v: f"{v:.0f}")
        left.set_title(f"counts ({acc})")
        right.set_title("row-normalised (% of each true class)")
        if title:
            fig.suptitle(title)
    return Path(path)


def _check_confusion(cm: Any, classes: Sequence[str]) -> np.ndarray:
    counts = np.asarray(cm, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ReportError(f"confusion matrix has shape {counts.shape}, expected K×K with K ≥ 1; pass the square matrix of counts")
    if counts.shape[0] != len(classes):
        raise ReportError(
            f"confusion matrix is {counts.shape[0]}×{counts.shape[0]} but {len(classes)} class names were given; pass one name per row"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ReportError("confusion matrix holds negative or non-finite values; pass counts (non-negative integers)")
    return counts


def _matrix(fig: Any, ax: Any, values: np.ndarray, classes: Sequence[str], fonts: dict[str, float], *, vmax: float, fmt: Any) -> None:
    k = values.shape[0]
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    names = [short_label(c) for c in classes]
    ax.set_xticks(range(k), names, fontsize=fonts["tick"], rotation=90 if k > 6 else 45, ha="center" if k > 6 else "right")
    ax.set_yticks(range(k), names, fontsize=fonts["tick"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    if k > 30:
        return  # colour alone: at this size the numbers would overlap
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            if v == 0 and k > 10:
                continue
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=fonts["cell"],
                    color="white" if v > vmax / 2 else "#222222")
