"""The comparison's verdict, which names a winner only when the difference is significant.

Figures come from each run's ``summary.json`` (the same numbers as the comparison table); whether
a difference is real comes from the runs' validation predictions, paired image by image, with an
exact McNemar test, Holm-adjusted over every pair (:mod:`regraft.report.stats`). Without
predictions the verdict gives the figures and says they were not tested.

Example:
    >>> results = [{"strategy": "scratch", "best_val_acc": 0.84}, {"strategy": "full", "best_val_acc": 0.85}]
    >>> print(verdict(results, predictions={"scratch": [True] * 84 + [False] * 16,
    ...                                     "full": [True] * 85 + [False] * 15}))
    no significant difference between pretrained and scratch: 1.0 points apart (full 85.0% vs scratch 84.0%; exact McNemar p=1, n=100)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from regraft.report._figure import ReportError, as_float
from regraft.report._timeline import validation_of
from regraft.report.stats import ALPHA, PairedTest, ValPredictions, paired_tests

__all__ = ["verdict", "pairwise_markdown", "SCRATCH"]

log = logging.getLogger(__name__)

SCRATCH = "scratch"
_Scored = tuple[str, float, Mapping[str, Any]]  # (strategy, best_val_acc, summary)


def verdict(
    results: Sequence[Mapping[str, Any]], *, predictions: Mapping[str, Any] | None = None, alpha: float = ALPHA
) -> str:
    """One line that says who won, and names a winner only when the difference is significant.

    With ``scratch`` among the results, the best of the others is tested against it ("pretrained
    beats scratch by 9.6 points ..."; a strategy that trained from random weights too is named
    instead of "pretrained"). Without it, the best is tested against every other ("lp-ft beats
    head by ..."). A difference that is not significant at ``alpha`` (exact McNemar on the paired
    validation predictions, Holm-adjusted over all pairs) reads "no significant difference
    between ...", with the p-value and the number of images it rests on.

    Args:
        results: one summary dict per strategy (``strategy`` and ``best_val_acc`` are used).
        predictions: strategy -> its validation predictions (:func:`~regraft.report.stats.read_val_predictions`,
            a list of right/wrong flags, or ``{path: right}``); without them nothing is tested.
        alpha: the family-wise significance level.

    Returns:
        The verdict, one line, no trailing full stop.

    Raises:
        ReportError: no result has a best validation accuracy.
    """
    scored = [s for s in _scored(results) if not math.isnan(s[1])]
    if not scored:
        raise ReportError("no result has a best_val_acc to compare; pass the summary.json dict of each finished run")
    if len(scored) == 1:
        name, acc, r = scored[0]
        return f"only {name} ran: {validation_of(r).accuracy(acc)} {validation_of(r).noun}"
    tests = _tests(scored, predictions or {}, alpha)
    scratch = [s for s in scored if s[0] == SCRATCH]
    others = [s for s in scored if s[0] != SCRATCH]
    if scratch and others:
        return _against_scratch(scratch[0], others, tests)
    return _against_the_rest(sorted(scored, key=lambda s: -s[1]), tests)


def pairwise_markdown(
    results: Sequence[Mapping[str, Any]], *, predictions: Mapping[str, Any] | None = None, alpha: float = ALPHA
) -> str:
    """A Markdown table with one row per pair of strategies: the paired difference and its test.

    Args:
        results: one summary dict per strategy, in table order.
        predictions: as for :func:`verdict`.
        alpha: the family-wise significance level.

    Returns:
        The table as Markdown text ending with a newline, preceded by a line saying how it was tested.
    """
    scored = _scored(results)
    if len(scored) < 2:
        raise ReportError(f"pairwise tests need at least two results, got {len(scored)}; pass one summary dict per strategy")
    tests = paired_tests({name: (predictions or {}).get(name) for name, _, _ in scored}, alpha=alpha)
    tested = next((t.pairs for t in tests if not t.untested), 0)
    lines = [
        f"Pairs tested on the same validation images with the exact McNemar test; p-values Holm-adjusted over "
        f"{tested} pair{'s' if tested != 1 else ''}, significant below {alpha:g}.",
        "",
        "| pair | difference | only A right | only B right | n | p | p (Holm) | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in tests:
        if t.untested:
            lines.append(f"| {_md(t.a)} vs {_md(t.b)} | — | — | — | — | — | — | not tested: {_md(t.untested)} |")
            continue
        said = f"{t.winner} better" if t.winner else "no significant difference"
        lines.append(
            f"| {_md(t.a)} vs {_md(t.b)} | {t.difference * 100:+.1f} points | {t.a_only} | {t.b_only} | {t.n} "
            f"| {_p(t.p)} | {_p(t.p_adjusted)} | {_md(said)} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ the wording


def _scored(results: Sequence[Mapping[str, Any]]) -> list[_Scored]:
    names = [str(r.get("strategy", "?")) for r in results]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReportError(f"results named {', '.join(repr(n) for n in twice)} more than once; give each summary a distinct 'strategy'")
    return [(name, as_float(r.get("best_val_acc")), r) for name, r in zip(names, results, strict=True)]


def _against_scratch(scratch: _Scored, others: list[_Scored], tests: dict[tuple[str, str], PairedTest]) -> str:
    top = max(acc for _, acc, _ in others)
    winners = [s for s in others if _same(s[1], top)]
    names = ", ".join(name for name, _, _ in winners)
    side = "pretrained" if any(_pretrained(r) for _, _, r in winners) else names
    figures = f"{names} {_pct(top, winners[0][2])} vs scratch {_pct(scratch[1], scratch[2])}"
    gap = abs(top - scratch[1]) * 100
    pair = [tests[(name, SCRATCH)] for name, _, _ in winners]
    if any(t.untested for t in pair):
        return f"{side} {_signed(top - scratch[1])} scratch ({figures}); not tested for significance: {_untested(pair, scratch)}"
    stat = _stat(pair)
    if all(t.winner == t.a for t in pair):
        return f"{side} beats scratch by {gap:.1f} points ({figures}; {stat})"
    if all(t.winner == SCRATCH for t in pair):
        return f"scratch beats {side} by {gap:.1f} points (scratch {_pct(scratch[1], scratch[2])} vs {names} {_pct(top, winners[0][2])}; {stat})"
    return f"no significant difference between {side} and scratch: {gap:.1f} points apart ({figures}; {stat})"


def _against_the_rest(ranked: list[_Scored], tests: dict[tuple[str, str], PairedTest]) -> str:
    top, rest = ranked[0], ranked[1:]
    runner = rest[0]
    gap = (top[1] - runner[1]) * 100
    pair = [tests[(top[0], name)] for name, _, _ in rest]
    if any(t.untested for t in pair):
        return (f"{top[0]} has the highest accuracy, {gap:.1f} points ahead of {runner[0]} "
                f"({_figures([top, runner])}); not tested for significance: {_untested(pair, top)}")  # fmt: skip
    level = [s for s, t in zip(rest, pair, strict=True) if t.winner != top[0]]
    if not level:
        head = f"{top[0]} beats {runner[0]} by {gap:.1f} points" if len(rest) == 1 else f"{top[0]} is best, {gap:.1f} points ahead of {runner[0]}"
        also = "" if len(rest) == 1 else f"; significantly better than each of the {len(rest)} others"
        return f"{head} ({_figures([top, runner])}; {_stat(pair)}{also})"
    apart = f"{(top[1] - level[-1][1]) * 100:.1f} points apart" if len(level) == 1 else f"up to {(top[1] - level[-1][1]) * 100:.1f} points apart"
    level_tests = [tests[(top[0], name)] for name, _, _ in level]
    return f"no significant difference between {top[0]} and {_join([n for n, _, _ in level])}: {apart} ({_figures([top, *level])}; {_stat(level_tests)})"


def _tests(scored: list[_Scored], predictions: Mapping[str, Any], alpha: float) -> dict[tuple[str, str], PairedTest]:
    """Every pair's test, looked up either way round."""
    for name, acc, summary in scored:
        _check_consistent(name, acc, summary, predictions.get(name))
    out = {}
    for t in paired_tests({name: predictions.get(name) for name, _, _ in scored}, alpha=alpha):
        out[(t.a, t.b)], out[(t.b, t.a)] = t, t.swapped()
    return out


def _check_consistent(name: str, acc: float, summary: Mapping[str, Any], preds: Any) -> None:
    """A warning when a holdout run's predictions do not give its summary's accuracy (other weights?)."""
    if preds is None or validation_of(summary).cross_validated:
        return
    p = ValPredictions.of(preds)
    if p.n and abs(p.accuracy - acc) > 0.5 / p.n:
        log.warning("%s: val_predictions.csv gives %.1f%% but summary.json says %.1f%%; the test may not be of the kept weights",
                    name, p.accuracy * 100, acc * 100)  # fmt: skip


def _stat(tests: Sequence[PairedTest]) -> str:
    """"exact McNemar p=0.004, n=100" (the least significant of several; Holm-adjusted when many)."""
    worst = max(tests, key=lambda t: t.p_adjusted)
    holm = f" (Holm, {worst.pairs} pairs)" if worst.pairs > 1 else ""
    ns = sorted({t.n for t in tests})
    n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    return f"exact McNemar {_p(worst.p_adjusted, prefix=True)}{holm}, {n}"


def _untested(tests: Sequence[PairedTest], anchor: _Scored) -> str:
    reason = next(t.untested for t in tests if t.untested)
    n = anchor[2].get("n_val")
    return reason + (f" (n={int(as_float(n))} validation images)" if n is not None and not math.isnan(as_float(n)) else "")


def _figures(runs: Sequence[_Scored]) -> str:
    return " vs ".join(f"{name} {_pct(acc, r)}" for name, acc, r in runs)


def _pct(acc: float, summary: Mapping[str, Any]) -> str:
    return validation_of(summary).accuracy(acc)


def _p(p: float, *, prefix: bool = False) -> str:
    text = "<0.001" if p < 0.001 else f"{p:.2g}" if p < 0.995 else "1"
    return ("p" + text if text.startswith("<") else f"p={text}") if prefix else text


def _signed(diff: float) -> str:
    if _same(diff, 0.0):
        return "level with"
    return f"{abs(diff) * 100:.1f} points {'above' if diff > 0 else 'below'}"


def _same(a: float, b: float) -> bool:
    return abs(a - b) < 0.0005  # equal at one decimal of a percent: shown as the same figure


def _pretrained(result: Mapping[str, Any]) -> bool:
    weights = result.get("weights", "pretrained")
    return weights is not None and str(weights).strip().lower() not in ("", "none", "random", "scratch")


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "any of " + ", ".join(names)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")
