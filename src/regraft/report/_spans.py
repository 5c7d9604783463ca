"""Drawing a :class:`~regraft.report._timeline.Timeline` on matplotlib axes: stage bands, the
series that skip re-evaluations (WiSE-FT), their markers, and the star on the kept weights.

Shared by ``curves.png`` (bands behind both panels) and ``comparison.png`` (one lane of bands per
strategy under each panel), so both read stages the same way and colour a stage name the same.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from regraft.report._figure import COLORS, as_float
from regraft.report._timeline import Span, Timeline

__all__ = [
    "BAND_COLORS", "POINT_COLORS", "MARKER_MAX_POINTS", "stage_colors", "pad", "bands", "shade",
    "series", "points", "kept_xy", "lanes", "integer_epochs",
]  # fmt: skip

# light enough that lines stay the loudest thing on the axes, distinct enough to tell apart
BAND_COLORS = ("#e3ebf6", "#fbecd6", "#e1f1df", "#efe3f4", "#f8e0df", "#dff0f2", "#f2efd9", "#e8e8e8")
POINT_COLORS = (COLORS[2], COLORS[4], COLORS[5], COLORS[6])
MARKER_MAX_POINTS = 30  # beyond this many rows, markers only clutter the line
_LABEL_PT = 7.5


def stage_colors(timelines: Iterable[Timeline]) -> dict[str, str]:
    """A band colour per stage name, in order of first appearance (the same name, the same colour)."""
    names: list[str] = []
    for tl in timelines:
        names += [s.stage for s in tl.spans if not s.point and s.stage not in names]
    return {name: BAND_COLORS[i % len(BAND_COLORS)] for i, name in enumerate(names)}


def pad(x: Sequence[float]) -> float:
    """Half the usual step between rows: the margin at both ends and around a one-row stage."""
    steps = [b - a for a, b in zip(x, x[1:], strict=False) if b > a]
    return statistics.median(steps) / 2 if steps else 0.5


def bands(tl: Timeline, *, margin: float) -> list[tuple[Span, float, float]]:
    """Each span that takes time, with the x range it owns: halfway to its neighbours, ``margin``
    past the first and last rows. Point spans (re-evaluations) own no range."""
    real = [s for s in tl.spans if not s.point]
    out = []
    for k, span in enumerate(real):
        left = (real[k - 1].x1 + span.x0) / 2 if k else span.x0 - margin
        right = (span.x1 + real[k + 1].x0) / 2 if k + 1 < len(real) else span.x1 + margin
        out.append((span, left, right))
    return out


def shade(ax: Any, tl: Timeline, colors: dict[str, str], *, margin: float, axes_inches: float) -> list[str]:
    """Bands behind ``ax`` for a staged run, a dashed line at each change, names where they fit.

    Returns:
        The stage names whose label did not fit inside its band (a legend must name them).
    """
    if not tl.staged:
        return []
    ranges = bands(tl, margin=margin)
    lo, hi = ranges[0][1], ranges[-1][2]
    unlabelled: list[str] = []
    for k, (span, left, right) in enumerate(ranges):
        ax.axvspan(left, right, color=colors[span.stage], zorder=0, linewidth=0)
        if k:
            ax.axvline(left, color="#777777", linestyle="--", linewidth=0.8, zorder=1)
        width_pt = (right - left) / (hi - lo) * axes_inches * 72
        if width_pt >= len(span.stage) * _LABEL_PT * 0.62 + 6:
            ax.text((left + right) / 2, 0.985, span.stage, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=_LABEL_PT, color="#444444", zorder=6, clip_on=True)
        elif span.stage not in unlabelled:
            unlabelled.append(span.stage)
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + 0.09 * (top - bottom))  # headroom: the names sit above the lines
    return unlabelled


def series(ax: Any, tl: Timeline, key: str, *, scale: float = 1.0, label: str, **style: Any) -> bool:
    """One column as a line over the rows that move time forward (point spans are left to
    :func:`points`). Returns False, drawing nothing, when the run did not record the column."""
    skip = {i for s in tl.spans if s.point for i in range(s.first, s.last + 1)}
    idx = [i for i in range(len(tl.rows)) if i not in skip]
    y = np.array([as_float(tl.rows[i].get(key)) for i in idx], dtype=float) * scale
    if not len(y) or np.all(np.isnan(y)):
        return False
    marker = "o" if len(y) <= MARKER_MAX_POINTS else None
    style.setdefault("linewidth", 1.6)
    ax.plot([tl.x[i] for i in idx], y, label=label, marker=marker, markersize=3, **style)
    if marker is None:  # a long run: still show a one-row stage (lp-ft's probe) as a point of its own
        lone = [k for k, i in enumerate(idx) if any(s.first == s.last == i for s in tl.spans)]
        if lone:
            ax.plot([tl.x[idx[k]] for k in lone], y[lone], linestyle="none", marker="o", markersize=3.5, color=style.get("color"))
    return True


def points(ax: Any, tl: Timeline, key: str, *, scale: float = 1.0, color: str | None = None, labels: bool = True) -> None:
    """Re-evaluations (point spans, e.g. ``wise-ft``) as diamonds, each stage named in the legend."""
    for k, span in enumerate(s for s in tl.spans if s.point):
        xs = [tl.x[i] for i in range(span.first, span.last + 1)]
        ys = [as_float(tl.rows[i].get(key)) * scale for i in range(span.first, span.last + 1)]
        if all(math.isnan(v) for v in ys):
            continue
        ax.plot(xs, ys, "D", color=color or POINT_COLORS[k % len(POINT_COLORS)], markersize=6, zorder=4,
                markeredgecolor="white", markeredgewidth=0.6, label=span.stage if labels else None)


def kept_xy(tl: Timeline, metric: str, *, fallback: float = math.nan) -> tuple[float, float] | None:
    """Where the star goes for ``metric`` ("loss", or the primary figure: "acc", "map"): the kept row's x and its figure.

    ``fallback`` (the summary's own figure) is used when the row left that figure empty.
    """
    if tl.kept is None:
        return None
    key = tl.kept.loss_key if metric == "loss" else tl.kept.acc_key
    y = as_float(tl.rows[tl.kept.index].get(key))
    if math.isnan(y):
        y = fallback
    return None if math.isnan(y) else (tl.x[tl.kept.index], y)


def lanes(ax: Any, runs: Sequence[tuple[str, Timeline, str]], colors: dict[str, str], *, margin: float, axes_inches: float) -> list[str]:
    """One lane per run under a comparison panel: its stages as bands on the shared epoch axis.

    ``runs`` holds ``(name, timeline, line colour)``; the lane's name is written in the line's
    colour so that a lane reads as the legend entry above it.

    Returns:
        The stage names whose label did not fit inside a band (a legend must name them).
    """
    unlabelled: list[str] = []
    spans_all = [b for _, tl, _ in runs for b in bands(tl, margin=margin)]
    lo = min((b[1] for b in spans_all), default=0.0)
    hi = max((b[2] for b in spans_all), default=1.0)
    for lane, (_, tl, _) in enumerate(runs):
        y = len(runs) - 1 - lane
        for span, left, right in bands(tl, margin=margin):
            ax.broken_barh([(left, right - left)], (y - 0.4, 0.8), facecolors=colors.get(span.stage, "#eeeeee"),
                           edgecolors="white", linewidth=1.0)
            width_pt = (right - left) / max(hi - lo, 1e-9) * axes_inches * 72
            if width_pt >= len(span.stage) * 6.5 * 0.62 + 4:
                ax.text((left + right) / 2, y, span.stage, ha="center", va="center", fontsize=6.5, color="#333333", clip_on=True)
            elif span.stage not in unlabelled:
                unlabelled.append(span.stage)
        for span in (s for s in tl.spans if s.point):
            ax.plot([span.x0], [y], "D", color="#666666", markersize=5, markeredgecolor="white")
    ax.set_ylim(-0.6, len(runs) - 0.4)
    ax.set_yticks(range(len(runs)), [name for name, _, _ in reversed(runs)], fontsize=7.5)
    for tick, (_, _, color) in zip(ax.get_yticklabels(), reversed(runs), strict=True):
        tick.set_color(color)
    ax.grid(False)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    return unlabelled


def integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
