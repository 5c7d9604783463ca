"""Is one model better than another on the same validation images? The exact McNemar test.

Two runs validated on the same images disagree on some of them: ``b`` images only the first
got right, ``c`` only the second. Under "neither is better" each disagreement is a fair coin,
so ``min(b, c)`` is a binomial tail: the exact (conditional) McNemar test. It uses the pairing
that a comparison of two accuracies would throw away, and needs no large-sample approximation
(a 100-image validation split has a handful of disagreements).

scipy is not one of regraft's dependencies, so the binomial tail is written here with exact
integer arithmetic (``math.comb``'s recurrence), which is also exact where floating point would
underflow; the tests check it against ``scipy.stats.binomtest``. Several pairs are corrected
together with Holm's step-down method (it controls the chance of any false "beats" at
``alpha`` and is never less powerful than Bonferroni).

Example:
    >>> mcnemar_exact(12, 3)
    0.03515625
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from regraft.errors import ReportError

__all__ = [
    "ValPredictions", "read_val_predictions", "mcnemar_exact", "holm", "PairedTest", "paired_test", "paired_tests",
    "ALPHA", "PREDICTIONS_FILE",
]  # fmt: skip

ALPHA = 0.05
PREDICTIONS_FILE = "val_predictions.csv"


@dataclass(frozen=True)
class ValPredictions:
    """Which validation images a run got right, in validation order (``paths`` pair two runs)."""

    correct: tuple[bool, ...]
    paths: tuple[str, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / self.n if self.n else math.nan

    @classmethod
    def of(cls, value: ValPredictions | Sequence[bool] | Mapping[str, bool]) -> ValPredictions:
        """From a list of right/wrong flags (in validation order) or a ``{path: right}`` mapping."""
        if isinstance(value, ValPredictions):
            return value
        if isinstance(value, Mapping):
            return cls(correct=tuple(bool(v) for v in value.values()), paths=tuple(str(k) for k in value))
        return cls(correct=tuple(bool(v) for v in value))


def read_val_predictions(run: str | Path) -> ValPredictions | None:
    """A run's ``val_predictions.csv`` (``path,label,predicted,correct,...``), or None when absent.

    ``correct`` is read when present, else ``label == predicted``.

    Raises:
        ReportError: the file is there but has no ``correct`` column and no ``label``/``predicted``
            pair, or a ``correct`` value that is not 0/1.
    """
    path = Path(getattr(run, "path", run)) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ValPredictions(correct=())
    fields = set(rows[0])
    if "correct" not in fields and not {"label", "predicted"} <= fields:
        raise ReportError(f"{path} has columns {sorted(fields)}; it needs 'correct' or 'label' and 'predicted': re-run 'regraft eval' on the run to rewrite it")
    correct = []
    for i, row in enumerate(rows, 2):
        if "correct" in fields:
            flag = str(row["correct"]).strip().lower()
            if flag not in ("0", "1", "true", "false"):
                raise ReportError(f"{path}, line {i}: correct={row['correct']!r}, expected 0 or 1; re-run 'regraft eval' on the run to rewrite it")
            correct.append(flag in ("1", "true"))
        else:
            correct.append(row["label"] == row["predicted"])
    paths = tuple(row["path"] for row in rows) if "path" in fields else None
    return ValPredictions(correct=tuple(correct), paths=paths)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    ``min(1, 2 * P[X <= min(b, c)])`` for ``X ~ Binomial(b + c, 1/2)``; 1.0 when there is no
    disagreement at all. Computed with integers, so it is exact for any ``b + c``.

    Raises:
        ReportError: a negative count.
    """
    if b < 0 or c < 0:
        raise ReportError(f"discordant counts must be non-negative, got b={b}, c={c}; pass counts of images")
    n, k = b + c, min(b, c)
    term, tail = 1, 1  # C(n, 0), and the running sum of C(n, i) for i <= k
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, (2 * tail) / (1 << n))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given (compare each with ``alpha``)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    """``a`` against ``b`` on the images both were validated on.

    ``a_only``/``b_only`` count the images only that run got right; ``p`` is the exact McNemar
    p-value and ``p_adjusted`` the Holm-adjusted one over every pair tested together (``pairs``).
    ``untested`` says why there is no test (no predictions, different images), else is empty.
    """

    a: str
    b: str
    n: int = 0
    a_only: int = 0
    b_only: int = 0
    p: float = math.nan
    p_adjusted: float = math.nan
    pairs: int = 1
    alpha: float = ALPHA
    untested: str = ""

    @property
    def difference(self) -> float:
        """a's accuracy minus b's on the paired images, as a fraction."""
        return (self.a_only - self.b_only) / self.n if self.n else math.nan

    @property
    def significant(self) -> bool:
        return not self.untested and self.p_adjusted < self.alpha

    @property
    def winner(self) -> str | None:
        """The better run's name when the difference is significant, else None."""
        if not self.significant:
            return None
        return self.a if self.a_only > self.b_only else self.b

    def swapped(self) -> PairedTest:
        return PairedTest(self.b, self.a, self.n, self.b_only, self.a_only, self.p, self.p_adjusted, self.pairs, self.alpha, self.untested)


def paired_test(a: str, pa: Any, b: str, pb: Any, *, alpha: float = ALPHA) -> PairedTest:
    """The exact McNemar test of run ``a`` against run ``b`` (unadjusted: ``p_adjusted == p``).

    Images are paired by path when both runs list paths, else by position (then the counts must
    match). Runs that validated on different images are not tested; ``untested`` says so.
    """
    if pa is None or pb is None:
        missing = " and ".join(name for name, p in ((a, pa), (b, pb)) if p is None)
        return PairedTest(a, b, alpha=alpha, untested=f"no {PREDICTIONS_FILE} for {missing}")
    pa, pb = ValPredictions.of(pa), ValPredictions.of(pb)
    pairs = _pair(pa, pb)
    if pairs is None:
        return PairedTest(a, b, alpha=alpha, untested=f"{a} and {b} were validated on different images ({pa.n} vs {pb.n})")
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if y and not x)
    p = mcnemar_exact(a_only, b_only)
    return PairedTest(a, b, n=len(pairs), a_only=a_only, b_only=b_only, p=p, p_adjusted=p, alpha=alpha)


def paired_tests(predictions: Mapping[str, Any], *, alpha: float = ALPHA) -> list[PairedTest]:
    """Every pair of runs (in the order given) tested, Holm-adjusted over the pairs that could be.

    Args:
        predictions: run name -> its :class:`ValPredictions` (or right/wrong flags, or
            ``{path: right}``), or None when the run has none.
        alpha: the family-wise significance level.

    Returns:
        One :class:`PairedTest` per pair ``(names[i], names[j])``, ``i < j``.
    """
    tests = [paired_test(a, predictions[a], b, predictions[b], alpha=alpha) for a, b in combinations(list(predictions), 2)]
    tested = [i for i, t in enumerate(tests) if not t.untested]
    adjusted = holm([tests[i].p for i in tested])
    for i, p_adj in zip(tested, adjusted, strict=True):
        t = tests[i]
        tests[i] = PairedTest(t.a, t.b, t.n, t.a_only, t.b_only, t.p, p_adj, len(tested), alpha)
    return tests


def _pair(pa: ValPredictions, pb: ValPredictions) -> list[tuple[bool, bool]] | None:
    if pa.paths is not None and pb.paths is not None:
        if pa.paths == pb.paths:
            return list(zip(pa.correct, pb.correct, strict=True))
        a_map, b_map = dict(zip(pa.paths, pa.correct, strict=True)), dict(zip(pb.paths, pb.correct, strict=True))
        if len(a_map) != pa.n or len(b_map) != pb.n or set(a_map) != set(b_map):
            return None  # other images (or one listed twice): no honest pairing
        return [(a_map[p], b_map[p]) for p in pa.paths]
    if pa.n != pb.n:
        return None
    return list(zip(pa.correct, pb.correct, strict=True))
