"""Issue 18.6: a verdict that knows its noise. The exact McNemar test, Holm over pairs, and
the wording that names a winner only when the paired difference is significant."""

from __future__ import annotations

import csv
import logging
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regraft import report
from regraft.report import ReportError
from regraft.report.stats import (
    holm,
    mcnemar_exact,
    paired_test,
    paired_tests,
    read_val_predictions,
)
from tests import report_runs as R


def _pair(a_only: int, b_only: int, both: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Right/wrong flags of two runs on the same images with the given agreement counts."""
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


def _result(strategy: str, acc: float | None, **extra) -> dict:
    return {"strategy": strategy, "best_val_acc": acc, "n_val": 100, **extra}


# ------------------------------------------------------------------------------------- the test


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 120), st.integers(0, 120))
def test_mcnemar_exact_matches_scipys_binomial_test(b, c):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_exact_known_values_and_extremes():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(12, 3) == 0.03515625  # 2 * (1 + 15 + 105 + 455) / 2**15
    assert mcnemar_exact(5, 4) == 1.0
    assert 0 < mcnemar_exact(5000, 5300) < 0.01  # big counts stay exact, no overflow
    assert mcnemar_exact(0, 1200) == 0.0  # 2**-1199 underflows honestly to 0
    with pytest.raises(ReportError, match="discordant counts must be non-negative, got b=-1"):
        mcnemar_exact(-1, 3)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([]) == []
    assert holm([0.02, 0.9, 0.001, 0.04]) == pytest.approx([0.06, 0.9, 0.004, 0.08])


def test_a_verdict_between_two_equal_models_is_rarely_a_winner():
    """Two models with the same 85% accuracy, 100 images, 2,000 draws: "beats" at most 5% of the time."""
    rng = np.random.default_rng(0)
    winners = 0
    for _ in range(2000):
        a, b = rng.random(100) < 0.85, rng.random(100) < 0.85
        winners += paired_test("a", list(a), "b", list(b)).winner is not None
    assert winners / 2000 <= 0.05


def test_pairs_by_path_whatever_the_order(tmp_path):
    a, b = _pair(9, 1, 80, 10)
    pa, pb = R.predictions(a), R.predictions(b)
    R.write_run(tmp_path / "a", *R.plain(), preds=pa)
    R.write_run(tmp_path / "b", *R.plain(), preds=random.Random(0).sample(pb, len(pb)))
    t = paired_test("a", read_val_predictions(tmp_path / "a"), "b", read_val_predictions(tmp_path / "b"))
    assert (t.n, t.a_only, t.b_only, t.p) == (100, 9, 1, mcnemar_exact(9, 1))
    assert t.winner == "a" and t.difference == pytest.approx(0.08)
    other = [{**row, "path": "other/" + row["path"]} for row in pb]
    R.write_run(tmp_path / "c", *R.plain(), preds=other)
    t = paired_test("a", read_val_predictions(tmp_path / "a"), "c", read_val_predictions(tmp_path / "c"))
    assert t.untested == "a and c were validated on different images (100 vs 100)" and t.winner is None
    assert read_val_predictions(tmp_path / "nowhere") is None


def test_read_val_predictions_says_what_is_wrong(tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "val_predictions.csv").write_text("path,score\na.jpg,0.5\n")
    with pytest.raises(ReportError, match=r"needs 'correct' or 'label' and 'predicted': re-run 'regraft eval'"):
        read_val_predictions(bad)
    (bad / "val_predictions.csv").write_text("path,correct\na.jpg,yes\n")
    with pytest.raises(ReportError, match=r"line 2: correct='yes', expected 0 or 1"):
        read_val_predictions(bad)
    with (bad / "val_predictions.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "predicted"], ["a.jpg", "cat", "cat"], ["b.jpg", "cat", "dog"]])
    assert read_val_predictions(bad).correct == (True, False)


def test_paired_tests_holm_adjust_over_the_pairs_that_could_be_tested():
    a, b = _pair(12, 2, 80, 6)
    tests = paired_tests({"x": a, "y": b, "z": None})
    assert [(t.a, t.b) for t in tests] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert tests[0].pairs == 1 and tests[0].p_adjusted == tests[0].p  # one pair tested: nothing to adjust
    assert tests[1].untested == "no val_predictions.csv for z"


# ---------------------------------------------------------------------------------- the wording


def test_the_issues_case_is_no_longer_a_win():
    """"full beats scratch by 1.0 points" on 100 images was noise: 5 images against 4."""
    full, scratch = _pair(5, 4, 80, 11)
    line = report.verdict([_result("scratch", 0.84), _result("full", 0.85)], predictions={"full": full, "scratch": scratch})
    assert line == (
        "no significant difference between pretrained and scratch: 1.0 points apart "
        "(full 85.0% vs scratch 84.0%; exact McNemar p=1, n=100)"
    )


@pytest.mark.parametrize(
    ("results", "counts", "expected"),
    [
        ([_result("scratch", 0.84), _result("full", 0.94)], {("full", "scratch"): (12, 2, 82, 4)},
         "pretrained beats scratch by 10.0 points (full 94.0% vs scratch 84.0%; exact McNemar p=0.013, n=100)"),
        ([_result("scratch", 0.94), _result("full", 0.84)], {("full", "scratch"): (2, 12, 82, 4)},
         "scratch beats pretrained by 10.0 points (scratch 94.0% vs full 84.0%; exact McNemar p=0.013, n=100)"),
        ([_result("scratch", 0.5), _result("full", 0.9, weights="none")], {("full", "scratch"): (40, 0, 50, 10)},
         "full beats scratch by 40.0 points (full 90.0% vs scratch 50.0%; exact McNemar p<0.001, n=100)"),
        ([_result("head", 0.80), _result("lp-ft", 0.95)], {("lp-ft", "head"): (16, 1, 79, 4)},
         "lp-ft beats head by 15.0 points (lp-ft 95.0% vs head 80.0%; exact McNemar p<0.001, n=100)"),
        ([_result("head", 0.9), _result("lp-ft", 0.92)], {("lp-ft", "head"): (4, 2, 88, 6)},
         "no significant difference between lp-ft and head: 2.0 points apart (lp-ft 92.0% vs head 90.0%; exact McNemar p=0.69, n=100)"),
        ([_result("head", 0.9), _result("full", 0.9)], {("full", "head"): (3, 3, 87, 7)},
         "no significant difference between head and full: 0.0 points apart (head 90.0% vs full 90.0%; exact McNemar p=1, n=100)"),
    ],
)  # fmt: skip
def test_verdict(results, counts, expected):
    predictions = {}
    for (a, b), c in counts.items():
        predictions[a], predictions[b] = _pair(*c)
    assert report.verdict(results, predictions=predictions) == expected


def _four(top_gap: int):
    """scratch 60%, head 80%, full 85%, lp-ft 85+top_gap% on 100 shared images."""
    correct = {"scratch": 60, "head": 80, "full": 85, "lp-ft": 85 + top_gap}
    preds = {name: [i < k for i in range(100)] for name, k in correct.items()}  # nested: every gap is one-sided
    return [_result(n, k / 100) for n, k in correct.items()], preds


def test_four_strategies_holm_adjusted_winner_only_when_it_beats_everyone():
    results, preds = _four(12)
    assert report.verdict(results, predictions=preds) == (
        "pretrained beats scratch by 37.0 points (lp-ft 97.0% vs scratch 60.0%; exact McNemar p<0.001 (Holm, 6 pairs), n=100)"
    )
    no_scratch = [r for r in results if r["strategy"] != "scratch"]
    line = report.verdict(no_scratch, predictions=preds)
    assert line == ("lp-ft is best, 12.0 points ahead of full (lp-ft 97.0% vs full 85.0%; exact McNemar p<0.001 (Holm, 3 pairs), "
                    "n=100; significantly better than each of the 2 others)")  # fmt: skip
    results, preds = _four(3)
    no_scratch = [r for r in results if r["strategy"] != "scratch"]
    assert report.verdict(no_scratch, predictions=preds) == (
        "no significant difference between lp-ft and full: 3.0 points apart (lp-ft 88.0% vs full 85.0%; exact McNemar p=0.25 (Holm, 3 pairs), n=100)"
    )
    table = report.pairwise_markdown(results, predictions=preds)
    assert "Holm-adjusted over 6 pairs, significant below 0.05" in table
    assert "| lp-ft vs scratch | -28.0 points |" not in table and "| scratch vs lp-ft | -28.0 points | 0 | 28 | 100 | <0.001 | <0.001 | lp-ft better |" in table
    assert "| full vs lp-ft | -3.0 points | 0 | 3 | 100 | 0.25 | 0.25 | no significant difference |" in table


def test_without_predictions_nothing_is_named_a_winner():
    line = report.verdict([_result("scratch", 0.843), _result("full", 0.939)], predictions={"scratch": [True] * 100})
    assert line == ("pretrained 9.6 points above scratch (full 93.9% vs scratch 84.3%); "
                    "not tested for significance: no val_predictions.csv for full (n=100 validation images)")  # fmt: skip
    line = report.verdict([_result("head", 0.918), _result("lp-ft", 0.939)])
    assert line.startswith("lp-ft has the highest accuracy, 2.1 points ahead of head (lp-ft 93.9% vs head 91.8%); not tested")
    table = report.pairwise_markdown([_result("head", 0.918), _result("lp-ft", 0.939)])
    assert "| head vs lp-ft | — | — | — | — | — | — | not tested: no val_predictions.csv for head and lp-ft |" in table


def test_verdict_labels_cross_validated_figures_and_single_runs():
    cv = {"validation": "cv5", "val_acc_std": 0.021}
    a, b = _pair(1, 0, 93, 6)
    line = report.verdict([_result("head", 0.93, **cv), _result("lp-ft", 0.94, **cv)], predictions={"lp-ft": a, "head": b})
    assert "(lp-ft 94.0% ± 2.1% (5-fold) vs head 93.0% ± 2.1% (5-fold); exact McNemar p=1, n=100)" in line
    assert report.verdict([_result("full", 0.9), _result("head", None)]) == "only full ran: 90.0% validation accuracy"
    with pytest.raises(ReportError, match="no result has a best_val_acc to compare"):
        report.verdict([_result("head", None)])


def test_predictions_of_other_weights_are_flagged(caplog):
    full, scratch = _pair(12, 2, 82, 4)  # full's predictions give 94%, its summary says 90%
    with caplog.at_level(logging.WARNING, logger="regraft.report"):
        report.verdict([_result("scratch", 0.84), _result("full", 0.90)], predictions={"full": full, "scratch": scratch})
    assert "full: val_predictions.csv gives 94.0% but summary.json says 90.0%" in caplog.text


def test_comparison_table_names_the_kept_row_and_cv_spread():
    rows, summary = R.lpft()
    cv_rows, cv = R.cross_validated()
    md = report.comparison_markdown([summary, {**cv, "strategy": "lp-ft cv"}])
    lines = md.splitlines()
    assert lines[0].endswith("| trainable params | kept |")
    assert lines[2].startswith("| lp-ft | **97.0%** |") and lines[2].endswith("| epoch 3, fine-tune |")
    assert lines[3].startswith("| lp-ft cv | 94.0% ± 2.1% (5-fold) |") and lines[3].endswith("| epoch 0, probe |")


def test_untested_level_figures_read_level():
    line = report.verdict([_result("scratch", 1.0), _result("lp-ft", 1.0)])
    assert line.startswith("pretrained level with scratch (lp-ft 100.0% vs scratch 100.0%); not tested for significance")


def test_results_must_be_told_apart():
    with pytest.raises(ReportError, match="results named 'full' more than once; give each summary a distinct 'strategy'"):
        report.verdict([_result("full", 0.9), _result("full", 0.8)])
    with pytest.raises(ReportError, match="pairwise tests need at least two results, got 1"):
        report.pairwise_markdown([_result("full", 0.9)])
