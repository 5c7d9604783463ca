"""One way to make a figure and write it as a PNG, without touching matplotlib's global state.

Figures are built with :class:`matplotlib.figure.Figure` on an explicit Agg canvas, never through
``pyplot``: nothing is registered with pyplot's figure manager (so nothing leaks when a caller
forgets to close), and ``matplotlib.use`` is never called (so a user's notebook backend stays).
The house style is applied with ``rc_context`` for the lifetime of one figure only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from regraft.errors import ReportError
from regraft.runs import atomic_write_bytes

__all__ = ["ReportError", "png_figure", "as_float", "short_label", "column", "epochs_of", "COLORS"]

# tab10, spelled out so that colours do not depend on the user's rcParams
COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "text.usetex": False,
    # class names are data, not markup: "$5 note" must not be read as mathtext
    "text.parse_math": False,
    "svg.hashsalt": "regraft",
}
DPI = 100


@contextmanager
def png_figure(path: str | Path, *, figsize: tuple[float, float]) -> Iterator[Any]:
    """Yield a fresh ``Figure``; on a clean exit write it to ``path`` as a PNG (atomically).

    The PNG carries no timestamp, so the same data gives the same bytes.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    with rc_context(_STYLE):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        try:
            yield fig
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": "regraft"})
        finally:
            fig.clear()
    atomic_write_bytes(path, buf.getvalue())


def as_float(value: Any) -> float:
    """A metric value as a float; ``None``, empty strings and non-numbers become NaN."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def short_label(text: Any, *, limit: int = 18) -> str:
    """A label cut to ``limit`` characters with an ellipsis, so long class names keep axes readable."""
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


def column(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """One metric per row as floats (NaN where absent)."""
    return [as_float(r.get(key)) for r in rows]


def epochs_of(rows: Sequence[dict[str, Any]]) -> list[float]:
    """The x axis: the ``epoch`` column where present, else 1, 2, 3, ..."""
    xs = [as_float(r.get("epoch")) for r in rows]
    if any(math.isnan(x) for x in xs):
        return [float(i + 1) for i in range(len(rows))]
    return xs
