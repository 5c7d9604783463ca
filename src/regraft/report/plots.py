"""Line plots and the confusion matrix: curves, strategy comparison, LR range test, confusion.

Every function takes plain Python/NumPy data (metrics rows as dicts, arrays), writes one PNG
atomically and returns its path. Accuracies are fractions in [0, 1] and are drawn as percent.

Example:
    >>> rows = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "train_acc": 0.6, "val_acc": 0.7}]
    >>> plot_curves(rows, "runs/exp1/curves.png")   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regraft.report._figure import COLORS, ReportError, column, epochs_of, png_figure, short_label

__all__ = ["plot_curves", "plot_comparison", "plot_lr_find", "plot_confusion"]

_MARKER_MAX_POINTS = 30  # beyond this many epochs, markers only clutter the line


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``curves.png``: train/val loss (left) and train/val accuracy (right) per epoch.

    Stage changes (the ``stage`` column, e.g. lp-ft's probe then fine-tune) are marked with a
    dashed line and the best validation accuracy with a dot.

    Args:
        rows: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss``, ``train_acc``,
            ``val_acc`` (missing or ``None`` values leave gaps) and optionally ``stage``.
        path: where to write the PNG.
        title: a heading above both panels (e.g. "resnet18 · lp-ft").

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: ``rows`` is empty.
    """
    if not rows:
        raise ReportError("no epochs to plot: the metrics rows are empty; train at least one epoch before drawing curves")
    x = epochs_of(rows)
    with png_figure(path, figsize=(10.0, 4.0)) as fig:
        loss_ax, acc_ax = fig.subplots(1, 2)
        _line(loss_ax, x, column(rows, "train_loss"), label="train", color=COLORS[0])
        _line(loss_ax, x, column(rows, "val_loss"), label="validation", color=COLORS[1])
        _line(acc_ax, x, _percent(column(rows, "train_acc")), label="train", color=COLORS[0])
        val_acc = _percent(column(rows, "val_acc"))
        _line(acc_ax, x, val_acc, label="validation", color=COLORS[1])
        _mark_best(acc_ax, x, val_acc)
        for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy (%)")):
            _mark_stages(ax, rows, x)
            ax.set_xlabel("epoch")
            ax.set_title(name)
            _integer_epochs(ax)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
        if title:
            fig.suptitle(title)
    return Path(path)


def plot_comparison(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``comparison.png``: validation accuracy (left) and loss (right), one line per strategy.

    Args:
        runs: strategy name -> its metrics rows (as for :func:`plot_curves`), in legend order.
        path: where to write the PNG.
        title: a heading above both panels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: ``runs`` is empty or every run has no rows.
    """
    if not runs or not any(runs.values()):
        raise ReportError("nothing to compare: no strategy has any metrics rows; run at least one strategy for one epoch")
    with png_figure(path, figsize=(10.0, 4.2)) as fig:
        acc_ax, loss_ax = fig.subplots(1, 2)
        for i, (name, rows) in enumerate(runs.items()):
            if not rows:
                continue
            style = {"color": COLORS[i % len(COLORS)], "linestyle": ("-", "--", ":")[i // len(COLORS) % 3]}
            x = epochs_of(rows)
            acc = _percent(column(rows, "val_acc"))
            best = np.nanmax(acc) if not np.all(np.isnan(acc)) else math.nan
            label = f"{name} (best {best:.1f}%)" if not math.isnan(best) else str(name)
            _line(acc_ax, x, acc, label=label, **style)
            _line(loss_ax, x, column(rows, "val_loss"), label=str(name), **style)
        for ax, name in ((acc_ax, "validation accuracy (%)"), (loss_ax, "validation loss")):
            ax.set_xlabel("epoch")
            ax.set_title(name)
            _integer_epochs(ax)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
        if title:
            fig.suptitle(title)
    return Path(path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None, path: str | Path) -> Path:
    """Draw the learning-rate range test: loss against learning rate (log axis), the suggestion marked.

    The y axis is cut a little above the starting loss, so the divergence at the end of the
    sweep does not flatten the interesting part of the curve.

    Args:
        lrs: learning rates tried, increasing.
        losses: the (smoothed) training loss at each learning rate.
        suggestion: the suggested learning rate, or ``None`` when the test found none.
        path: where to write the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: fewer than two points, lengths differ, or a learning rate is not positive.
    """
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if lr.ndim != 1 or lr.shape != loss.shape or len(lr) < 2:
        raise ReportError(
            f"cannot plot an LR range test from {lr.size} learning rates and {loss.size} losses: "
            "pass two equal-length sequences of at least two points"
        )
    if not np.all(lr > 0):
        raise ReportError(f"learning rates must be positive for a log axis, got minimum {lr.min():g}; drop the non-positive points")
    from matplotlib.ticker import FuncFormatter

    with png_figure(path, figsize=(6.5, 4.2)) as fig:
        ax = fig.subplots()
        ax.plot(lr, loss, color=COLORS[0], linewidth=1.5, label="training loss")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0e}"))
        _clip_divergence(ax, loss)
        if suggestion is not None and suggestion > 0:
            at = float(np.interp(math.log(suggestion), np.log(lr), loss))
            ax.axvline(suggestion, color=COLORS[3], linestyle="--", linewidth=1)
            ax.plot([suggestion], [at], "o", color=COLORS[3], label=f"suggested lr {suggestion:.1e}")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss")
        ax.set_title("learning-rate range test")
        ax.legend(loc="best", fontsize=8)
    return Path(path)


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


# --------------------------------------------------------------------------------------- helpers


def _percent(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=float) * 100.0


def _line(ax: Any, x: Sequence[float], y: Sequence[float], *, label: str, **style: Any) -> None:
    y = np.asarray(y, dtype=float)
    if np.all(np.isnan(y)):
        return  # a column the run did not record: no empty legend entry
    marker = "o" if len(y) <= _MARKER_MAX_POINTS else None
    ax.plot(x, y, label=label, marker=marker, markersize=3, linewidth=1.6, **style)


def _mark_best(ax: Any, x: Sequence[float], acc: np.ndarray) -> None:
    if np.all(np.isnan(acc)):
        return
    i = int(np.nanargmax(acc))
    ax.plot([x[i]], [acc[i]], "*", color=COLORS[3], markersize=11, zorder=5, label=f"best {acc[i]:.1f}% (epoch {x[i]:g})")


def _mark_stages(ax: Any, rows: Sequence[Mapping[str, Any]], x: Sequence[float]) -> None:
    stages = [r.get("stage") for r in rows]
    for i in range(1, len(rows)):
        if stages[i] != stages[i - 1] and stages[i]:
            at = (x[i - 1] + x[i]) / 2
            ax.axvline(at, color="#555555", linestyle="--", linewidth=0.8)
            ax.annotate(str(stages[i]), (at, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                        textcoords="offset points", fontsize=7, color="#555555")


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _clip_divergence(ax: Any, loss: np.ndarray) -> None:
    finite = loss[np.isfinite(loss)]
    if finite.size < 2:
        return
    lo, start = float(finite.min()), float(finite[0])
    hi = start + 0.5 * (start - lo) if start > lo else float(finite.max())
    if hi > lo:
        ax.set_ylim(lo - 0.05 * (hi - lo), hi)


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
