"""Line plots: a run's curves, the strategy comparison, the LR range test.

Every function takes plain Python/NumPy data (metrics rows as dicts, arrays), writes one PNG
atomically and returns its path. Accuracies are fractions in [0, 1] and are drawn as percent.
Rows are read through :func:`regraft.report._timeline.timeline`: one epoch axis, stages as
shaded spans, the star on the row whose weights were kept.

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

from regraft.report import _spans as sp
from regraft.report._figure import COLORS, ReportError, as_float, png_figure
from regraft.report._timeline import Timeline, Validation, timeline, validation_of
from regraft.report.confusion import plot_confusion

__all__ = ["plot_curves", "plot_comparison", "plot_lr_find", "plot_confusion"]

_PANEL_INCHES = 4.3  # the drawable width of one of two panels on a 10-inch figure
_STAR = {"marker": "*", "markersize": 13, "zorder": 7, "linestyle": "none", "markeredgecolor": "white", "markeredgewidth": 0.5}


def plot_curves(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None, summary: Mapping[str, Any] | None = None
) -> Path:
    """Draw ``curves.png``: train/val loss (left) and train/val accuracy (right) on one epoch axis.

    Stages (the ``stage`` column: lp-ft's probe then fine-tune, staged unfreezing's
    head/+layer4/...) are shaded spans of the axis, named inside the span or, where a span is
    too narrow, in a legend under the panels. A stage evaluated at a moment already on the axis
    (a WiSE-FT mix at the last epoch) is a diamond, not a span. The star marks the row whose
    weights were kept (the ``kept`` column; else the row ``summary``'s best epoch names; else,
    for runs that recorded neither, the highest validation accuracy, labelled as such).

    Args:
        rows: one dict per evaluation, in time order, with ``epoch``, ``train_loss``,
            ``val_loss``, ``train_acc``, ``val_acc`` (missing or ``None`` values leave gaps) and
            optionally ``stage``, ``kept``, ``val_acc_ema``, ``val_loss_ema``.
        path: where to write the PNG.
        title: a heading above both panels (e.g. "resnet18 · lp-ft").
        summary: the run's ``summary.json``: finds the kept row of runs without a ``kept``
            column, and labels a cross-validated figure as such (``validation: cv5``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: ``rows`` is empty.
    """
    if not rows:
        raise ReportError("no epochs to plot: the metrics rows are empty; train at least one epoch before drawing curves")
    with png_figure(path, figsize=(10.0, 4.2)) as fig:
        _draw_curves(fig, rows, title=title, summary=summary)
    return Path(path)


def _draw_curves(fig: Any, rows: Sequence[Mapping[str, Any]], *, title: str | None, summary: Mapping[str, Any] | None) -> None:
    tl = timeline(rows, summary)
    val = validation_of(summary)
    colors = sp.stage_colors([tl])
    margin = sp.pad(tl.x)
    loss_ax, acc_ax = fig.subplots(1, 2)
    unlabelled: list[str] = []
    figure = tl.primary.removeprefix("val_")  # acc | map: the right panel draws the run's primary figure
    for ax, metric, scale, name in ((loss_ax, "loss", 1.0, "loss"), (acc_ax, figure, 100.0, f"{val.figure} (%)")):
        _run_lines(ax, tl, metric, scale=scale, validation=val, summary=summary or {})
        unlabelled += [s for s in sp.shade(ax, tl, colors, margin=margin, axes_inches=_PANEL_INCHES) if s not in unlabelled]
        ax.set_xlim(min(tl.x) - margin, max(tl.x) + margin)
        ax.set_xlabel(_epoch_axis_label(tl))
        ax.set_title(name if not val.cross_validated or metric == "loss" else f"{name}, validation by {val.folds}-fold CV")
        sp.integer_epochs(ax)
        if metric != "loss":  # accuracy and mAP have a ceiling: room above 100% for the stage names, no tick there
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, min(top, 100.0 + 0.12 * max(100.0 - bottom, 1.0)))
            ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= 100.0])
        _legend_below(ax)
    if unlabelled:
        _stage_legend(fig, colors)
    if title:
        fig.suptitle(title)


def _run_lines(ax: Any, tl: Timeline, metric: str, *, scale: float, validation: Validation, summary: Mapping[str, Any]) -> None:
    """One panel of ``curves.png``: train, validation (and EMA) lines, re-evaluations, the star."""
    val_label = "validation" if not validation.cross_validated else f"validation ({validation.folds}-fold CV)"
    sp.series(ax, tl, f"train_{metric}", scale=scale, label="train", color=COLORS[0])
    sp.series(ax, tl, f"val_{metric}", scale=scale, label=val_label, color=COLORS[1])
    sp.series(ax, tl, f"val_{metric}_ema", scale=scale, label="validation, EMA weights", color=COLORS[1],
              linestyle="--", linewidth=1.1)  # fmt: skip
    sp.points(ax, tl, f"val_{metric}", scale=scale)
    if tl.kept is None:
        return
    recorded = tl.kept.recorded
    xy = sp.kept_xy(tl, metric, fallback=as_float(summary.get(f"best_val_{metric}")) if recorded else math.nan)
    if xy is None:
        return
    x, y = xy
    where = tl.label(tl.kept.index)
    ema = " (EMA)" if tl.kept.acc_key.endswith("_ema") else ""
    if metric != "loss":
        figure = validation.accuracy(y) if recorded else f"{y * 100:.1f}%"
        shown = f"{validation.figure} " if metric != "acc" else ""
        label = f"kept weights{ema}: {shown}{figure} at {where}" if recorded else f"highest validation {shown}{figure} at {where}"
    else:
        label = f"kept weights{ema}: loss {y:.4f}" if recorded else None
    ax.plot([x], [y * scale], color=COLORS[3], label=label, **_STAR)


def _legend_below(ax: Any, **kw: Any) -> None:
    """The legend under the panel, where it can never cover a line, a star or a stage's name."""
    handles, labels = kw.pop("handles", None), kw.pop("labels", None)
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles=handles, labels=labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2,
                  fontsize=8, frameon=False, **kw)


def _epoch_axis_label(tl: Timeline) -> str:
    return "epoch (each stage counted its own epochs; laid end to end)" if tl.restarted else "epoch"


def _stage_legend(fig: Any, colors: dict[str, str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="#bbbbbb", label=name) for name, c in colors.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=8,
               title="stages (shaded spans)", title_fontsize=8, frameon=False)


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    title: str | None = None,
    summaries: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Draw ``comparison.png``: validation accuracy (left) and loss (right), one line per strategy.

    Each strategy's star marks its kept weights and its legend entry gives the same figure as
    the comparison table (``best_val_acc`` from its summary). When any strategy has stages,
    a lane per strategy under each panel shows its stages as spans of the shared epoch axis.

    Args:
        runs: strategy name -> its metrics rows (as for :func:`plot_curves`), in legend order.
        path: where to write the PNG.
        title: a heading above both panels.
        summaries: strategy name -> its ``summary.json`` (the kept row of older runs, the legend's
            figure, cross-validated labels).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: ``runs`` is empty or every run has no rows.
    """
    if not runs or not any(runs.values()):
        raise ReportError("nothing to compare: no strategy has any metrics rows; run at least one strategy for one epoch")
    drawn = _comparison_runs(runs, summaries or {})
    staged = any(tl.staged for _, tl, _, _ in drawn)
    with png_figure(path, figsize=(10.0, 4.2 + (_lane_height(drawn) if staged else 0.0))) as fig:
        _draw_comparison(fig, drawn, summaries or {}, title=title)
    return Path(path)


_Drawn = tuple[str, Timeline, str, str]  # (strategy, its timeline, line colour, line style)


def _comparison_runs(runs: Mapping[str, Sequence[Mapping[str, Any]]], summaries: Mapping[str, Mapping[str, Any]]) -> list[_Drawn]:
    return [
        (str(name), timeline(rows, summaries.get(name)), COLORS[i % len(COLORS)], ("-", "--", ":")[i // len(COLORS) % 3])
        for i, (name, rows) in enumerate(runs.items())
        if rows
    ]


def _lane_height(drawn: Sequence[_Drawn]) -> float:
    return 0.27 * len(drawn) + 0.45


def _draw_comparison(fig: Any, drawn: list[_Drawn], summaries: Mapping[str, Mapping[str, Any]], *, title: str | None) -> None:
    staged = any(tl.staged for _, tl, _, _ in drawn)
    colors = sp.stage_colors(tl for _, tl, _, _ in drawn)
    every_x = sorted({x for _, tl, _, _ in drawn for x in tl.x})
    margin = sp.pad(every_x)
    if staged:
        grid = fig.add_gridspec(2, 2, height_ratios=[4.0, _lane_height(drawn)])
        acc_ax, loss_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
        lane_axes = [fig.add_subplot(grid[1, 0], sharex=acc_ax), fig.add_subplot(grid[1, 1], sharex=loss_ax)]
    else:
        acc_ax, loss_ax = fig.subplots(1, 2)
        lane_axes = []
    for name, tl, color, linestyle in drawn:
        _comparison_lines(acc_ax, loss_ax, name, tl, summaries.get(name) or {}, color=color, linestyle=linestyle)
    _comparison_legend(acc_ax, drawn)
    for ax, name in ((acc_ax, "validation accuracy (%)"), (loss_ax, "validation loss")):
        ax.set_title(name)
        ax.set_xlim(every_x[0] - margin, every_x[-1] + margin)
        sp.integer_epochs(ax)
        if lane_axes:
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel(_epoch_axis_label(drawn[0][1]) if len(drawn) == 1 else "epoch")
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(loc="best", fontsize=8)
    unlabelled = []
    for ax in lane_axes:
        unlabelled += sp.lanes(ax, [(n, tl, c) for n, tl, c, _ in drawn], colors, margin=margin, axes_inches=_PANEL_INCHES)
        ax.set_xlabel("epoch (stages shaded per strategy)")
    if unlabelled:
        _stage_legend(fig, colors)
    if title:
        fig.suptitle(title)


def _comparison_lines(acc_ax: Any, loss_ax: Any, name: str, tl: Timeline, summary: Mapping[str, Any], *, color: str, linestyle: str) -> None:
    val = validation_of(summary)
    best = as_float(summary.get("best_val_acc"))
    star = sp.kept_xy(tl, "acc", fallback=best)
    if math.isnan(best) and star is not None:
        best = star[1]
    label = name
    if not math.isnan(best):
        where = f", {tl.label(tl.kept.index)}" if tl.kept is not None and tl.kept.recorded else ""
        label = f"{name} (best {val.accuracy(best)}{where})"
    style = {"color": color, "linestyle": linestyle}
    sp.series(acc_ax, tl, "val_acc", scale=100.0, label=label, **style)
    sp.series(loss_ax, tl, "val_loss", label=name, **style)
    sp.points(acc_ax, tl, "val_acc", scale=100.0, color=color, labels=False)
    sp.points(loss_ax, tl, "val_loss", color=color, labels=False)
    for ax, metric, scale in ((acc_ax, "acc", 100.0), (loss_ax, "loss", 1.0)):
        fallback = as_float(summary.get(f"best_val_{metric}"))
        if (xy := sp.kept_xy(tl, metric, fallback=fallback)) is not None:
            ax.plot([xy[0]], [xy[1] * scale], color=color, **_STAR)


def _comparison_legend(ax: Any, drawn: Sequence[_Drawn]) -> None:
    """The strategies' lines, then one key for the star and one per re-evaluation stage (wise-ft)."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    extra = [Line2D([], [], color="#444444", label="kept weights", **_STAR)]
    points = list(dict.fromkeys(s.stage for _, tl, _, _ in drawn for s in tl.spans if s.point))
    extra += [Line2D([], [], marker="D", color="#888888", linestyle="none", label=f"{p} (re-evaluated at that epoch)") for p in points]
    if handles:
        ax.legend(handles=handles + extra, labels=labels + [h.get_label() for h in extra], loc="best", fontsize=7.5)


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


def _clip_divergence(ax: Any, loss: np.ndarray) -> None:
    finite = loss[np.isfinite(loss)]
    if finite.size < 2:
        return
    lo, start = float(finite.min()), float(finite[0])
    hi = start + 0.5 * (start - lo) if start > lo else float(finite.max())
    if hi > lo:
        ax.set_ylim(lo - 0.05 * (hi - lo), hi)
