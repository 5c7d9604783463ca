"""The comparison table (``comparison.md``) and its one-line verdict.

Both take one result per strategy: a run's ``summary.json`` dict (``strategy``, ``best_val_acc``,
``final_val_acc``, ``best_val_loss``, ``train_seconds``, ``images_per_sec``,
``trainable_params``, ``weights``). Accuracies are fractions; differences are reported in
percentage points.

Example:
    >>> results = [{"strategy": "scratch", "best_val_acc": 0.843}, {"strategy": "full", "best_val_acc": 0.939}]
    >>> verdict(results)
    'pretrained beats scratch by 9.6 points (full 93.9% vs scratch 84.3%)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from regraft.report._figure import ReportError, as_float

__all__ = ["comparison_markdown", "verdict"]

SCRATCH = "scratch"
# Two accuracies closer than this (in points) print the same at one decimal: call it a tie.
TIE_POINTS = 0.05

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # header, summary key, format
    ("strategy", "strategy", "text"),
    ("best val acc", "best_val_acc", "percent"),
    ("final val acc", "final_val_acc", "percent"),
    ("val loss", "best_val_loss", "loss"),
    ("train s", "train_seconds", "seconds"),
    ("images/s", "images_per_sec", "rate"),
    ("trainable params", "trainable_params", "count"),
)


def comparison_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table with one row per strategy, in the order given; the best accuracy in bold.

    Missing figures print as "—". "val loss" is the validation loss of the best weights
    (``best_val_loss``, falling back to ``final_val_loss``).

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
        "| " + " | ".join("---" if kind == "text" else "---:" for _, _, kind in _COLUMNS) + " |",
    ]
    for r in results:
        cells = []
        for _, key, kind in _COLUMNS:
            value = r.get(key)
            if key == "best_val_loss" and value is None:
                value = r.get("final_val_loss")
            cell = _cell(value, kind)
            if key == "best_val_acc" and not math.isnan(best) and as_float(value) == best:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(results: Sequence[Mapping[str, Any]]) -> str:
    """One line that says who won, by best validation accuracy.

    With ``scratch`` among the results, the best of the others is compared against it
    ("pretrained beats scratch by 9.6 points ..."; a strategy that trained from random weights
    too is named instead of "pretrained"). Without it, the best strategy is compared against the
    runner-up ("lp-ft is best, 2.1 points ahead of head"). Differences under 0.05 points are ties.

    Args:
        results: one summary dict per strategy (``strategy`` and ``best_val_acc`` are used).

    Returns:
        The verdict, one line, no trailing full stop.

    Raises:
        ReportError: no result has a best validation accuracy.
    """
    scored = [(str(r.get("strategy", "?")), as_float(r.get("best_val_acc")), r) for r in results]
    scored = [s for s in scored if not math.isnan(s[1])]
    if not scored:
        raise ReportError("no result has a best_val_acc to compare; pass the summary.json dict of each finished run")
    if len(scored) == 1:
        name, acc, _ = scored[0]
        return f"only {name} ran: {_pct(acc)} best validation accuracy"
    scratch = [s for s in scored if s[0] == SCRATCH]
    others = [s for s in scored if s[0] != SCRATCH]
    if scratch and others:
        return _against_scratch(max(scratch, key=lambda s: s[1]), others)
    return _against_runner_up(scored)


def _against_scratch(scratch: tuple[str, float, Mapping[str, Any]], others: list[tuple[str, float, Mapping[str, Any]]]) -> str:
    top = max(acc for _, acc, _ in others)
    winners = [s for s in others if top - s[1] < TIE_POINTS / 100]
    names = ", ".join(name for name, _, _ in winners)
    side = "pretrained" if any(_pretrained(r) for _, _, r in winners) else names
    diff = (top - scratch[1]) * 100
    if abs(diff) < TIE_POINTS:
        return f"{side} and scratch tie at {_pct(top)} ({names} vs scratch)"
    if diff > 0:
        return f"{side} beats scratch by {diff:.1f} points ({names} {_pct(top)} vs scratch {_pct(scratch[1])})"
    return f"scratch beats {side} by {-diff:.1f} points (scratch {_pct(scratch[1])} vs {names} {_pct(top)})"


def _against_runner_up(scored: list[tuple[str, float, Mapping[str, Any]]]) -> str:
    ranked = sorted(scored, key=lambda s: -s[1])
    top = ranked[0][1]
    tied = [name for name, acc, _ in ranked if top - acc < TIE_POINTS / 100]
    if len(tied) == len(ranked):
        return f"{_join(tied)} tie at {_pct(top)}"
    runner = ranked[len(tied)]
    gap = (top - runner[1]) * 100
    if len(tied) > 1:
        return f"{_join(tied)} tie for best at {_pct(top)}, {gap:.1f} points ahead of {runner[0]}"
    return f"{tied[0]} is best, {gap:.1f} points ahead of {runner[0]}"


def _pretrained(result: Mapping[str, Any]) -> bool:
    weights = result.get("weights", "pretrained")
    return weights is not None and str(weights).strip().lower() not in ("", "none", "random", "scratch")


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _pct(acc: float) -> str:
    return f"{acc * 100:.1f}%"


def _cell(value: Any, kind: str) -> str:
    if kind == "text":
        return str(value).replace("|", "\\|") if value is not None else "—"
    v = as_float(value)
    if math.isnan(v):
        return "—"
    if kind == "percent":
        return _pct(v)
    if kind == "loss":
        return f"{v:.4f}"
    if kind == "seconds":
        return f"{v:.1f}"
    if kind == "rate":
        return f"{v:,.1f}"
    return f"{int(v):,}"
