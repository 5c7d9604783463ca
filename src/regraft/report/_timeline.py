"""One epoch axis for a run's metrics rows: stages as spans, and which row's weights were kept.

Every figure and table that shows a run reads its rows through :func:`timeline`, so the curves,
the report's highlighted row and the comparison's legend cannot disagree about where a stage
starts or which weights ``model.safetensors`` holds.

The contract (docs/report.md): ``metrics.csv`` has one row per evaluation in time order,
``epoch`` non-decreasing (lp-ft's probe is one row at epoch 0, a WiSE-FT mix one row at the last
epoch), a ``stage`` column (contiguous equal stages form one span) and ``kept`` = 1 on exactly
the row whose weights were saved. Older runs numbered each stage's epochs from 1 again and had no
``kept`` column: their stages are laid end to end and the kept row is found from ``summary.json``.

The figure that decides which row is kept is the run's primary figure: ``summary.json``'s
``primary`` names its column (``val_acc``; ``val_map`` for multi-label runs), ``val_acc`` when the
summary does not say (runs before multi-label support).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regraft.report._figure import as_float

__all__ = ["Span", "Kept", "Timeline", "timeline", "Validation", "validation_of", "stage_name", "primary_of", "FIGURE_NAMES"]

log = logging.getLogger(__name__)

UNNAMED = "(no stage)"  # rows without a stage in a run whose other rows have one
# metrics.csv holds 6 significant digits, summary.json more: figures this close are the same figure
_SAME = 5e-6
FIGURE_NAMES = {"val_acc": "accuracy", "val_map": "mAP"}  # a primary column -> its name for people


def primary_of(summary: Mapping[str, Any] | None) -> str:
    """The column of the run's primary figure: ``summary.json``'s ``primary``, else ``val_acc``."""
    key = str((summary or {}).get("primary") or "val_acc")
    return key if key in FIGURE_NAMES else "val_acc"


@dataclass(frozen=True)
class Span:
    """Rows ``first..last`` (inclusive) of one stage, at epochs ``x0..x1`` of the shared axis.

    ``point`` is a stage evaluated at a moment an earlier stage already reached (a WiSE-FT mix
    at the last epoch): it has no width on the axis and is drawn as a marker, not a band.
    """

    stage: str
    first: int
    last: int
    x0: float
    x1: float
    point: bool = False


@dataclass(frozen=True)
class Kept:
    """The row whose weights were kept, and how that is known.

    ``source`` is ``"kept"`` (the ``kept`` column), ``"summary"`` (``summary.json``'s best
    epoch and figures) or ``"highest"`` (neither recorded: the highest validation accuracy,
    which is what older runs kept). ``acc_key``/``loss_key`` name the columns that hold the
    kept figures (``val_acc_ema`` when the summary's figures are the EMA weights'; ``val_map``
    for a multi-label run).
    """

    index: int
    source: str
    acc_key: str = "val_acc"
    loss_key: str = "val_loss"

    @property
    def recorded(self) -> bool:
        return self.source != "highest"


@dataclass(frozen=True)
class Timeline:
    """A run's rows on one epoch axis. ``epochs`` is each row's own ``epoch`` value (for labels)."""

    rows: list[Mapping[str, Any]]
    x: list[float]
    epochs: list[float]
    stages: list[str]
    spans: list[Span]
    kept: Kept | None
    restarted: bool  # an older run whose stages each counted epochs from 1, laid end to end here
    primary: str = "val_acc"  # the column of the figure that decides "best" (val_acc | val_map)

    def label(self, i: int, *, of: Any = None) -> str:
        """``"epoch 3, fine-tune"`` (``"epoch 3 of 5, fine-tune"`` with ``of=5``): the row's own
        epoch number, and its stage when the run has several."""
        stage = self.stages[i] if len(self.spans) > 1 else ""
        total = f" of {of}" if of is not None else ""
        return f"epoch {self.epochs[i]:g}{total}" + (f", {stage}" if stage else "")

    @property
    def staged(self) -> bool:
        """Two or more stages that take time: worth drawing as bands."""
        return sum(1 for s in self.spans if not s.point) >= 2


def stage_name(value: Any) -> str:
    """A ``stage`` cell as text (``read_metrics`` turns a numeric-looking stage into a number)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def timeline(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> Timeline:
    """Put ``rows`` on one epoch axis, split them into stage spans and find the kept row.

    Args:
        rows: metrics rows in time order (``RunDir.read_metrics()``).
        summary: the run's ``summary.json``, used to find the kept row when the rows have no
            ``kept`` column (older runs).

    Returns:
        The :class:`Timeline`; ``kept`` is None only when there is no validation accuracy at all.

    Example:
        >>> t = timeline([{"epoch": 0, "stage": "probe", "val_acc": 0.8},
        ...               {"epoch": 1, "stage": "fine-tune", "val_acc": 0.9, "kept": 1}])
        >>> t.x, [s.stage for s in t.spans], t.kept.index
        ([0.0, 1.0], ['probe', 'fine-tune'], 1)
    """
    rows = list(rows)
    epochs = [as_float(r.get("epoch")) for r in rows]
    if any(math.isnan(e) for e in epochs):
        epochs = [float(i + 1) for i in range(len(rows))]
    x, restarted = _one_axis(epochs)
    stages = [stage_name(r.get("stage")) for r in rows]
    spans = _spans(stages, x)
    primary = primary_of(summary)
    kept = _kept(rows, epochs, stages, spans, restarted, summary or {}, primary)
    return Timeline(rows=rows, x=x, epochs=epochs, stages=stages, spans=spans, kept=kept, restarted=restarted,
                    primary=primary)


def _one_axis(epochs: list[float]) -> tuple[list[float], bool]:
    """Epochs as given when they never go back; else each restart continues where the last row was."""
    if all(b >= a for a, b in zip(epochs, epochs[1:], strict=False)):
        return list(epochs), False
    x: list[float] = []
    offset = 0.0
    for i, e in enumerate(epochs):
        if i and e < epochs[i - 1]:
            offset = x[-1] if e > 0 else x[-1] + 1.0  # a stage counted from 0 starts one epoch later
        x.append(e + offset)
    return x, True


def _spans(stages: list[str], x: list[float]) -> list[Span]:
    if not any(stages):
        return []
    spans: list[Span] = []
    start = 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            x0, x1 = x[start], x[i - 1]
            point = bool(spans) and x0 == x1 == spans[-1].x1
            spans.append(Span(stages[start] or UNNAMED, start, i - 1, x0, x1, point))
            start = i
    return spans


def _kept(rows, epochs, stages, spans, restarted, summary, primary) -> Kept | None:
    flagged = [i for i, r in enumerate(rows) if _truthy(r.get("kept"))]
    acc_key, loss_key = _kept_columns(rows, flagged, summary, primary)
    if len(flagged) == 1:
        return Kept(flagged[0], "kept", acc_key, loss_key)
    if len(flagged) > 1:
        log.warning("metrics.csv marks %d rows as kept; expected one, using the last", len(flagged))
        return Kept(flagged[-1], "kept", acc_key, loss_key)
    found = _from_summary(rows, epochs, stages, spans, restarted, summary, acc_key)
    if found is not None:
        return Kept(found, "summary", acc_key, loss_key)
    accs = [as_float(r.get(primary)) for r in rows]
    if all(math.isnan(a) for a in accs):
        return None
    return Kept(max(range(len(rows)), key=lambda i: -math.inf if math.isnan(accs[i]) else accs[i]), "highest",
                primary, "val_loss")


def _kept_columns(rows, flagged, summary, primary) -> tuple[str, str]:
    """The primary figure's ``_ema`` column when the summary's best figure is the EMA weights' (closer than the raw one)."""
    best = as_float(summary.get(f"best_{primary}"))
    ema_key = f"{primary}_ema"
    if math.isnan(best) or not any(ema_key in r for r in rows):
        return primary, "val_loss"
    candidates = [rows[i] for i in flagged] or rows
    raw = min((abs(as_float(r.get(primary)) - best) for r in candidates), default=math.inf, key=_nan_last)
    ema = min((abs(as_float(r.get(ema_key)) - best) for r in candidates), default=math.inf, key=_nan_last)
    return (ema_key, "val_loss_ema") if _nan_last(ema) < _nan_last(raw) else (primary, "val_loss")


def _from_summary(rows, epochs, stages, spans, restarted, summary, acc_key) -> int | None:
    """The row the summary's ``best_epoch`` (and ``best_stage``) names, its figures deciding ties.

    Older lp-ft runs wrote ``best_epoch: 0`` for "the probe's head, before fine-tuning" while
    numbering the probe's own epochs from 1: epoch 0 there means any row of the first stage.
    """
    best_epoch = as_float(summary.get("best_epoch"))
    best_acc = as_float(summary.get(f"best_{acc_key.removesuffix('_ema')}"))
    best_loss = as_float(summary.get("best_val_loss"))
    loss_key = "val_loss_ema" if acc_key.endswith("_ema") else "val_loss"
    best_stage = stage_name(summary.get("best_stage"))
    if math.isnan(best_epoch) and math.isnan(best_acc):
        return None
    idx = range(len(rows))
    cands = [i for i in idx if epochs[i] == best_epoch and (not best_stage or stages[i] == best_stage)]
    if not cands and best_epoch == 0 and restarted and spans:
        cands = list(range(spans[0].first, spans[0].last + 1))
    if not cands:
        if math.isnan(best_acc):
            return None
        cands = [i for i in idx if _close(as_float(rows[i].get(acc_key)), best_acc)]
        if not cands:
            return None

    def distance(i: int) -> tuple[float, float, int]:
        acc = abs(as_float(rows[i].get(acc_key)) - best_acc)
        loss = abs(as_float(rows[i].get(loss_key)) - best_loss)
        return (_nan_last(acc), _nan_last(loss), -i)  # the later row on a tie: older runs kept the last best

    return min(cands, key=distance)


def _close(a: float, b: float) -> bool:
    return not math.isnan(a) and abs(a - b) <= _SAME * max(1.0, abs(b))


def _nan_last(v: float) -> float:
    return math.inf if math.isnan(v) else v


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------------- validation kind


@dataclass(frozen=True)
class Validation:
    """How a run's validation figure was measured: a held-out split or k-fold cross-validation.

    ``figure`` names the figure (``accuracy``; ``mAP`` for multi-label runs).
    """

    folds: int | None = None  # None: a held-out split
    std: float = math.nan
    figure: str = "accuracy"

    @property
    def cross_validated(self) -> bool:
        return self.folds is not None

    def accuracy(self, acc: Any) -> str:
        """``"93.9%"``, or ``"94.0% ± 2.0% (5-fold)"`` for a cross-validated figure."""
        value = as_float(acc)
        if math.isnan(value):
            return "—"
        if not self.cross_validated:
            return f"{value * 100:.1f}%"
        spread = f" ± {self.std * 100:.1f}%" if not math.isnan(self.std) else ""
        return f"{value * 100:.1f}%{spread} ({self.folds}-fold)"

    @property
    def noun(self) -> str:
        return f"cross-validated {self.figure}" if self.cross_validated else f"validation {self.figure}"


def validation_of(summary: Mapping[str, Any] | None) -> Validation:
    """The summary's ``validation`` field read: ``"cv5"``, ``"cv-5"``, ``"5-fold"`` are 5-fold CV.

    Anything else (``"holdout"``, absent) is a held-out split. The spread is the summary's
    ``best_<primary>_std`` (``val_acc_std`` in older runs).
    """
    summary = summary or {}
    primary = primary_of(summary)
    figure = FIGURE_NAMES[primary]
    text = str(summary.get("validation") or "").strip().lower()
    match = re.fullmatch(r"(?:cv[-_ ]?(\d+)|(\d+)[-_ ]?fold(?:[-_ ]?cv)?)", text)
    if not match:
        return Validation(figure=figure)
    folds = int(match.group(1) or match.group(2))
    std = summary.get("val_acc_std") if primary == "val_acc" and summary.get("val_acc_std") is not None else summary.get(f"best_{primary}_std")
    return Validation(folds=folds, std=as_float(std), figure=figure)
