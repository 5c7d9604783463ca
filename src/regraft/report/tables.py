"""The comparison table (``comparison.md``): one row per strategy, from its ``summary.json``.

Each result is a run's ``summary.json`` dict (``strategy``, ``best_val_acc``, ``final_val_acc``,
``best_val_loss``, ``train_seconds``, ``images_per_sec``, ``trainable_params``, ``best_epoch``,
``best_stage``, ``validation``). Accuracies are fractions, shown as percent. The verdict under
the table is :func:`regraft.report.verdict.verdict`.

Example:
    >>> print(comparison_markdown([{"strategy": "full", "best_val_acc": 0.939, "best_epoch": 3}]).splitlines()[2])
    | full | **93.9%** | — | — | — | — | — | epoch 3 |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from regraft.report._figure import ReportError, as_float
from regraft.report._timeline import stage_name, validation_of

__all__ = ["comparison_markdown"]

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # header, summary key, format
    ("strategy", "strategy", "text"),
    ("best val acc", "best_val_acc", "percent"),
    ("final val acc", "final_val_acc", "percent"),
    ("val loss", "best_val_loss", "loss"),
    ("train s", "train_seconds", "seconds"),
    ("images/s", "images_per_sec", "rate"),
    ("trainable params", "trainable_params", "count"),
    ("kept", "best_epoch", "kept"),
)


def comparison_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table with one row per strategy, in the order given; the best accuracy in bold.

    Missing figures print as "—". "best val acc" and "val loss" are the kept weights' figures
    (``best_val_loss``, falling back to ``final_val_loss``); a cross-validated figure shows its
    spread and folds ("94.0% ± 2.1% (5-fold)"). "kept" says which row of the run's metrics
    those weights are ("epoch 3, fine-tune").

    Args:
        results: one summary dict per strategy.

    Returns:
        The table as Markdown text, ending with a newline.

    Raises:
        ReportError: ``results`` is empty.
    """
    if not results:
        raise ReportError("no results to tabulate: pass one summary dict per strategy")
    best = max((as_float(r.get("best_val_acc")) for r in results), key=lambda v: -1.0 if math.isnan(v) else v)
    lines = [
        "| " + " | ".join(h for h, _, _ in _COLUMNS) + " |",
        "| " + " | ".join("---" if kind in ("text", "kept") else "---:" for _, _, kind in _COLUMNS) + " |",
    ]
    for r in results:
        cells = []
        for _, key, kind in _COLUMNS:
            value = r.get(key)
            if key == "best_val_loss" and value is None:
                value = r.get("final_val_loss")
            cell = _cell(value, kind, r, key)
            if key == "best_val_acc" and not math.isnan(best) and as_float(value) == best:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(acc: float) -> str:
    return f"{acc * 100:.1f}%"


def _cell(value: Any, kind: str, result: Mapping[str, Any], key: str) -> str:
    if kind == "text":
        return str(value).replace("|", "\\|") if value is not None else "—"
    v = as_float(value)
    if math.isnan(v):
        return "—"
    if kind == "kept":
        stage = stage_name(result.get("best_stage")).replace("|", "\\|")
        return f"epoch {v:g}" + (f", {stage}" if stage else "")
    if key == "best_val_acc":
        return validation_of(result).accuracy(v)
    if kind == "percent":
        return _pct(v)
    if kind == "loss":
        return f"{v:.4f}"
    if kind == "seconds":
        return f"{v:.1f}"
    if kind == "rate":
        return f"{v:,.1f}"
    return f"{int(v):,}"
