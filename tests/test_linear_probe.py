"""regraft.features.linear: the converged, cross-validated linear probe.

The reference is scikit-learn's ``LogisticRegression`` (lbfgs, tight tol) on the same features:
sklearn minimises ``C·Σ wᵢℓᵢ + ½||W||²`` and regraft ``Σ wᵢℓᵢ/Σw + l2/2·||W||²``, so
``C = 1 / (l2·Σw)`` (``2 / (l2·Σw)`` for two classes, where sklearn fits one sigmoid vector).
Tolerances: coefficients within 1e-3 of the largest coefficient, probabilities within 1e-4.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from regraft.errors import ConfigError, DataError, TrainingError
from regraft.features.linear import (
    assign_folds,
    cross_validate,
    fit_linear,
    fit_probe,
    fold_count,
    rows_from_views,
)

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits, make_blobs  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

COEF_TOL = 1e-3  # of the largest coefficient
PROB_TOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for torch and sklearn's BLAS: the test machine's 2 cores are shared by several
    jobs, where two threads that wait for each other made these solves ten times slower."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def _sklearn(x: np.ndarray, y: np.ndarray, *, C: float, sample_weight=None) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, tol=1e-10, max_iter=20_000).fit(x, y, sample_weight=sample_weight)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x[:500] / 16.0, y[:500]


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=300, centers=4, n_features=12, cluster_std=3.0, random_state=0)
    return x + 5.0, y  # off-centre, as post-ReLU features are


def _close_to_sklearn(fit, sk: LogisticRegression, x: np.ndarray) -> None:
    scale = np.abs(sk.coef_).max()
    assert np.abs(fit.weight.numpy() - sk.coef_).max() <= COEF_TOL * scale
    assert np.abs(fit.probabilities(torch.from_numpy(x)).numpy() - sk.predict_proba(x)).max() <= PROB_TOL


@pytest.mark.parametrize("l2", [1e-1, 1e-2, 1e-3])
def test_multiclass_matches_sklearn_on_digits(digits, l2):
    x, y = digits
    fit = fit_linear(torch.from_numpy(x).float(), torch.from_numpy(y), num_classes=10, l2=l2, tol=1e-7)
    sk = _sklearn(x.astype(np.float32).astype(np.float64), y, C=1 / (l2 * len(y)))
    assert fit.converged and fit.weight.shape == (10, 64) and fit.bias.shape == (10,)
    _close_to_sklearn(fit, sk, x.astype(np.float32).astype(np.float64))
    assert abs(float(fit.bias.sum())) < 1e-9  # the softmax gauge sklearn uses too


def test_multiclass_matches_sklearn_on_blobs(blobs):
    x, y = blobs
    fit = fit_linear(torch.from_numpy(x), torch.from_numpy(y), num_classes=4, l2=1e-2, tol=1e-7)
    _close_to_sklearn(fit, _sklearn(x, y, C=1 / (1e-2 * len(y))), x)


def test_two_classes_match_sklearns_single_sigmoid(blobs):
    x, y = blobs
    y = (y >= 2).astype(np.int64)
    fit = fit_linear(torch.from_numpy(x), torch.from_numpy(y), num_classes=2, l2=1e-2, tol=1e-7)
    sk = _sklearn(x, y, C=2 / (1e-2 * len(y)))
    w = (fit.weight[1] - fit.weight[0]).numpy()
    assert np.abs(w - sk.coef_[0]).max() <= COEF_TOL * np.abs(sk.coef_).max()
    assert abs(float(fit.bias[1] - fit.bias[0]) - sk.intercept_[0]) <= 1e-3 * max(1.0, abs(sk.intercept_[0]))
    assert np.abs(fit.probabilities(torch.from_numpy(x)).numpy() - sk.predict_proba(x)).max() <= PROB_TOL


def test_sample_weight_matches_sklearn(blobs):
    x, y = blobs
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(y))
    w[:10] = 0.0  # rows of weight 0 do not count
    fit = fit_linear(torch.from_numpy(x), torch.from_numpy(y), num_classes=4, l2=1e-2,
                     sample_weight=torch.from_numpy(w), tol=1e-7)
    _close_to_sklearn(fit, _sklearn(x, y, C=1 / (1e-2 * w.sum()), sample_weight=w), x)
    dropped = fit_linear(torch.from_numpy(x[10:]), torch.from_numpy(y[10:]), num_classes=4, l2=1e-2,
                         sample_weight=torch.from_numpy(w[10:]), tol=1e-7)
    assert torch.allclose(fit.weight, dropped.weight, atol=1e-5)


def test_multilabel_matches_sklearn_one_vs_rest_per_label(blobs):
    x, y = blobs
    labels = np.stack([y == 0, y <= 1, (y % 2) == 1], axis=1).astype(np.int64)
    fit = fit_linear(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, l2=1e-2, multilabel=True, tol=1e-7)
    p = fit.probabilities(torch.from_numpy(x)).numpy()
    for j in range(3):
        sk = _sklearn(x, labels[:, j], C=1 / (1e-2 * len(y)))
        assert np.abs(fit.weight[j].numpy() - sk.coef_[0]).max() <= COEF_TOL * np.abs(sk.coef_).max()
        assert abs(float(fit.bias[j]) - sk.intercept_[0]) <= 1e-3 * max(1.0, abs(sk.intercept_[0]))
        assert np.abs(p[:, j] - sk.predict_proba(x)[:, 1]).max() <= PROB_TOL


def test_weights_are_for_the_raw_features_and_load_into_a_linear_head(blobs):
    x, y = blobs
    fit = fit_linear(torch.from_numpy(x).float(), torch.from_numpy(y), num_classes=4, l2=1e-2)
    head = nn.Linear(12, 4)
    fit.load_into(head)
    with torch.no_grad():
        logits = head(torch.from_numpy(x).float())
    assert torch.allclose(logits.double(), fit.logits(torch.from_numpy(x)), atol=1e-4)
    with pytest.raises(ConfigError, match=r"graft a Linear\(in=12, out=4\) head first"):
        fit.load_into(nn.Linear(12, 5))


def test_a_class_without_rows_gets_a_zero_row_and_no_probability(blobs):
    x, y = blobs
    fit = fit_linear(torch.from_numpy(x), torch.from_numpy(y), num_classes=6, l2=1e-2)
    assert fit.converged and fit.weight.shape == (6, 12)
    assert torch.equal(fit.weight[4:], torch.zeros(2, 12, dtype=torch.float64))
    assert float(fit.probabilities(torch.from_numpy(x))[:, 4:].max()) < 1e-7
    alone = fit_linear(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), num_classes=3, l2=1e-2)
    assert torch.allclose(alone.probabilities(torch.randn(4, 3))[:, 0], torch.ones(4, dtype=torch.float64))


def test_rows_of_weight_zero_whose_class_has_no_weight_are_left_out_not_nan(blobs):
    """A class whose rows all weigh 0 is a class without rows (found by the deep scan's second
    pass: a fold's training rows of one class all left out gave NaN, 0 times a -inf log-probability)."""
    x, y = blobs
    weight = torch.from_numpy((y != 3).astype(np.float64))
    fit = fit_linear(torch.from_numpy(x), torch.from_numpy(y), num_classes=4, l2=1e-2, sample_weight=weight)
    kept = y != 3
    ref = fit_linear(torch.from_numpy(x[kept]), torch.from_numpy(y[kept]), num_classes=4, l2=1e-2)
    assert fit.converged and torch.isfinite(fit.weight).all()
    assert float((fit.weight - ref.weight).abs().max()) <= COEF_TOL * float(ref.weight.abs().max())
    probs = fit.probabilities(torch.from_numpy(x[kept])) - ref.probabilities(torch.from_numpy(x[kept]))
    assert float(probs.abs().max()) <= PROB_TOL
    cv = cross_validate(torch.from_numpy(x), torch.from_numpy(y), num_classes=4, sample_weight=weight,
                        groups=torch.from_numpy(y), l2_grid=[1e-2])  # a whole class per fold: some folds see one class
    assert torch.isfinite(cv.oof_probabilities).all()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 40), d=st.integers(1, 6), k=st.integers(2, 4),
    l2=st.floats(1e-3, 1.0), shift=st.floats(-50.0, 50.0), seed=st.integers(0, 10_000),
)
def test_the_solution_is_stationary_for_the_raw_features(n, d, k, l2, shift, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + shift
    y = torch.randint(0, k, (n,), generator=g)
    fit = fit_linear(x, y, num_classes=k, l2=l2, tol=1e-7)
    w, b = fit.weight.clone().requires_grad_(True), fit.bias.clone().requires_grad_(True)
    active = torch.bincount(y, minlength=k) > 0
    z = (x @ w.T + b)[:, active]
    target = torch.cumsum(active.long(), 0)[y] - 1
    loss = nn.functional.cross_entropy(z, target) + l2 / 2 * w.pow(2).sum()
    loss.backward()
    assert fit.converged
    assert float(w.grad[active].abs().max()) < 1e-5 * max(1.0, abs(shift))
    assert abs(float(loss.detach()) - fit.loss) < 1e-9 * max(1.0, fit.loss)


def test_bad_input_raises_one_clear_error(blobs):
    x = torch.from_numpy(blobs[0]).float()
    y = torch.from_numpy(blobs[1])
    bad = x.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(TrainingError, match="NaN or infinity .* the first is row 7"):
        fit_linear(bad, y, num_classes=4, l2=1e-2)
    bad[7, 3] = float("inf")
    with pytest.raises(TrainingError, match="NaN or infinity"):
        fit_probe(bad, y, num_classes=4)
    with pytest.raises(DataError, match="labels must lie in 0..2"):
        fit_linear(x, y, num_classes=3, l2=1e-2)
    with pytest.raises(DataError, match="pass multilabel=True"):
        fit_linear(x, y.float(), num_classes=4, l2=1e-2)
    with pytest.raises(DataError, match="multilabel targets must be 0 or 1"):
        fit_linear(x, torch.full((len(y), 2), 2), num_classes=2, l2=1e-2, multilabel=True)
    with pytest.raises(ConfigError, match="l2 must be a finite number >= 0"):
        fit_linear(x, y, num_classes=4, l2=-1.0)
    with pytest.raises(ConfigError, match="l2_grid must be a non-empty list of numbers > 0"):
        cross_validate(x, y, num_classes=4, l2_grid=[1.0, 0.0])
    with pytest.raises(DataError, match="sample_weight must be finite, non-negative"):
        fit_linear(x, y, num_classes=4, l2=1e-2, sample_weight=-torch.ones(len(y)))


# ----------------------------------------------------------------------------- folds


def test_folds_are_stratified_and_never_split_a_group():
    labels = torch.tensor([0] * 12 + [1] * 8 + [2] * 5)
    images = torch.arange(25)
    views = 3
    strata, groups = labels.repeat(views), images.repeat(views)
    fold = assign_folds(strata, folds=5, seed=3, groups=groups)
    for image in range(25):
        assert len(set(fold[groups == image].tolist())) == 1  # an image's views share a fold
    per_image = fold[:25]
    for c in range(3):
        counts = torch.bincount(per_image[labels == c], minlength=5)
        assert int(counts.max() - counts.min()) <= 1  # each class spread evenly
    assert int(torch.bincount(per_image).max() - torch.bincount(per_image).min()) <= 1
    assert torch.equal(fold, assign_folds(strata, folds=5, seed=3, groups=groups))  # seeded
    with pytest.raises(DataError, match="rows of group 4 carry different labels"):
        bad = strata.clone()
        bad[25 + 4] = (bad[4] + 1) % 3
        assign_folds(bad, folds=5, groups=groups)


def test_fold_count_is_the_smallest_class_between_2_and_5():
    assert fold_count(torch.tensor([0] * 30 + [1] * 30)) == 5
    assert fold_count(torch.tensor([0] * 30 + [1] * 3)) == 3
    assert fold_count(torch.tensor([0] * 30 + [1] * 1)) == 2
    views = torch.tensor([0, 1, 1] * 4)  # 4 images of class 0... counted once per group
    assert fold_count(views, groups=torch.tensor([0, 1, 1] * 4) + torch.arange(12) // 3 * 2) == 4
    with pytest.raises(DataError, match="at least 2 images"):
        fold_count(torch.tensor([0]))


def test_cross_validation_uses_every_views_group_and_scores_only_marked_rows(blobs):
    x, y = torch.from_numpy(blobs[0]), torch.from_numpy(blobs[1])
    g = torch.Generator().manual_seed(0)
    cache = torch.stack([x, x + torch.randn(x.shape, generator=g, dtype=torch.float64)])  # 2 views
    rows, labels, groups, scored = rows_from_views(cache, y)
    assert rows.shape == (600, 12) and torch.equal(groups[:300], groups[300:]) and int(scored.sum()) == 300
    assert torch.equal(rows[300:], cache[1]) and torch.equal(labels[:300], y)
    cv = cross_validate(rows, labels, num_classes=4, groups=groups, scored=scored)
    assert torch.equal(cv.fold[:300], cv.fold[300:])


# ----------------------------------------------------------------------------- cross-validation


def test_out_of_fold_probabilities_come_from_the_fold_that_held_the_row_out(blobs):
    x, y = torch.from_numpy(blobs[0]), torch.from_numpy(blobs[1])
    cv = cross_validate(x, y, num_classes=4, l2_grid=[1.0, 1e-2, 1e-4], patience=None)
    assert cv.folds == 5 and len(cv.scores) == 3 and [s.l2 for s in cv.scores] == [1.0, 1e-2, 1e-4]
    for f, fit in enumerate(cv.fold_fits):
        held = cv.fold == f
        assert fit.l2 > cv.l2  # a fold's prior strength matches the whole set's: l2 / (its share)
        assert torch.allclose(cv.oof_probabilities[held], fit.probabilities(x[held]), atol=1e-10)
    best = cv.best
    assert best.l2 == cv.l2 and best.log_loss == min(s.log_loss for s in cv.scores)
    assert len(best.fold_accuracy) == 5 and abs(best.accuracy - float(np.mean(best.fold_accuracy))) < 1e-12
    assert abs(best.accuracy_std - float(np.std(best.fold_accuracy, ddof=1))) < 1e-12


def test_a_fold_is_sklearn_fitted_on_the_other_folds_at_the_same_C(blobs):
    x, y = blobs
    cv = cross_validate(torch.from_numpy(x), torch.from_numpy(y), num_classes=4, l2_grid=[1e-2], tol=1e-7)
    for f in range(cv.folds):
        train, held = (cv.fold != f).numpy(), (cv.fold == f).numpy()
        sk = _sklearn(x[train], y[train], C=1 / (1e-2 * len(y)))  # C of the whole set, held fixed
        assert np.abs(cv.oof_probabilities[held].numpy() - sk.predict_proba(x[held])).max() <= PROB_TOL


def test_noisy_labels_choose_a_stronger_l2(blobs):
    x, y = torch.from_numpy(blobs[0]), torch.from_numpy(blobs[1])
    g = torch.Generator().manual_seed(1)
    noisy = torch.where(torch.rand(len(y), generator=g) < 0.4, torch.randint(0, 4, (len(y),), generator=g), y)
    grid = [10.0 ** -e for e in range(0, 7)]
    clean = cross_validate(x, y, num_classes=4, l2_grid=grid, patience=None)
    dirty = cross_validate(x, noisy, num_classes=4, l2_grid=grid, patience=None)
    assert dirty.l2 >= 100 * clean.l2


def test_fit_probe_refits_every_row_at_the_chosen_l2_like_sklearn(digits):
    x, y = digits
    probe = fit_probe(torch.from_numpy(x), torch.from_numpy(y), num_classes=10, tol=1e-7)
    sk = _sklearn(x, y, C=1 / (probe.cv.l2 * len(y)))
    _close_to_sklearn(probe.fit, sk, x)
    summary = probe.summary()
    assert summary["validation"] == "cv5" and summary["l2"] == probe.cv.l2 and summary["converged"]
    assert 0.85 < summary["accuracy"] <= 1.0 and summary["accuracy_std"] > 0
    assert probe.describe().startswith("linear probe: cv5 accuracy 0.9")


def test_a_class_of_one_image_makes_two_folds_and_is_marked_unseen(blobs):
    x, y = torch.from_numpy(blobs[0]), torch.from_numpy(blobs[1]).clone()
    y[0] = 4  # the only image of class 4
    cv = cross_validate(x, y, num_classes=5, l2_grid=[1e-2])
    assert cv.folds == 2
    assert cv.unseen.nonzero().flatten().tolist() == [0]
    assert float(cv.oof_probabilities[0, 4]) < 1e-7  # its fold never saw class 4
