"""regraft.tasks: the rules of multiclass and multi-label labels, thresholds and class imbalance."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
)
from torch.nn import functional as F

from regraft.errors import ConfigError
from regraft.tasks import (
    Balance,
    Task,
    above_thresholds,
    choose_balance,
    choose_thresholds,
    class_weights,
    pos_weights,
    probabilities,
    rules,
    sample_weights,
)
from regraft.tasks.decide import thresholds_problem


def test_import_needs_no_torch():
    code = "import sys, regraft.tasks, regraft.tasks.decide; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_task_parse_and_primary():
    assert Task.parse(None) is Task.MULTICLASS  # runs written before the task existed
    assert Task.parse("MultiLabel").primary == "val_map"
    assert Task.parse("multiclass").primary == "val_acc"
    with pytest.raises(ConfigError, match="task must be one of multiclass, multilabel; got 'both'"):
        Task.parse("both")
    with pytest.raises(ConfigError, match="balance must be one of auto, none, loss, sampler; got 'oversample'"):
        Balance.parse("oversample")


# ----------------------------------------------------------------------------- balance


def test_auto_balances_a_ten_to_one_split_and_says_why():
    choice = choose_balance("auto", counts=[100, 10], multilabel=False)
    assert choice.mode is Balance.LOSS and choice.ratio == 10.0
    assert choice.reason == "balance: loss (the largest class has 10.0x the images of the smallest)"
    calm = choose_balance("auto", counts=[12, 10, 11], multilabel=False)
    assert calm.mode is Balance.NONE and "1.2x" in calm.reason and "auto balances from 3x" in calm.reason
    asked = choose_balance("sampler", counts=[12, 10], multilabel=False)
    assert asked.mode is Balance.SAMPLER and asked.reason.startswith("balance: sampler (--balance sampler;")
    labels = choose_balance("auto", counts=[40, 0, 4], multilabel=True)
    assert labels.mode is Balance.LOSS and "the most frequent label has 10.0x the positives of the rarest" in labels.reason


def test_class_weights_keep_the_loss_scale():
    counts = [90, 30, 10]
    w = class_weights(counts)
    assert sum(c * x for c, x in zip(counts, w, strict=True)) / sum(counts) == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(9.0)
    assert pos_weights([100, 0, 400], 400) == [3.0, 1.0, 0.0]


@given(st.lists(st.integers(0, 3), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_sample_weights_give_every_present_class_the_same_mass(labels):
    w = sample_weights(labels, 4, multilabel=False)
    assert np.mean(w) == pytest.approx(1.0)
    mass = {c: sum(x for x, y in zip(w, labels, strict=True) if y == c) for c in set(labels)}
    assert max(mass.values()) == pytest.approx(min(mass.values()))


def test_multilabel_sample_weights_follow_the_rarest_label():
    labels = [(0,), (0,), (0,), (0, 1), (), ()]
    w = sample_weights(labels, 2, multilabel=True)
    raw = [1 / 4, 1 / 4, 1 / 4, 1 / 1, 1 / 2, 1 / 2]
    assert w == pytest.approx([x / np.mean(raw) for x in raw])


# ----------------------------------------------------------------------------- scoring


def test_multiclass_figures_match_sklearn_and_batches_do_not_change_them():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    r = rules("multiclass")
    whole = r.evaluation(logits, y)
    batched = r.evaluation(logits, y, batches=[16, 16, 16, 2])
    assert whole.figures == batched.figures and whole.n == 50
    pred = logits.argmax(1).numpy()
    assert whole.figures["val_acc"] == accuracy_score(y.numpy(), pred)
    assert whole.figures["val_balanced_acc"] == pytest.approx(balanced_accuracy_score(y.numpy(), pred))
    assert whole.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    recall = r.summary(logits, y, ["a", "b", "c", "d"])["per_class_recall"]
    assert np.mean(list(recall.values())) == pytest.approx(whole.figures["val_balanced_acc"])


def test_multilabel_map_and_f1_match_sklearn_over_labels_with_positives():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 4, generator=g)
    y = (torch.rand(40, 4, generator=g) > 0.6).float()
    y[:, 3] = 0  # a label without a positive validation image
    r = rules("multilabel")
    ev = r.evaluation(logits, y, batches=[10, 30])
    p = torch.sigmoid(logits).numpy()
    aps = [average_precision_score(y[:, j].numpy(), p[:, j]) for j in range(3)]
    assert ev.figures["val_map"] == pytest.approx(np.mean(aps), abs=1e-6)
    pred = (p > 0.5).astype(int)
    assert ev.figures["val_f1_micro"] == pytest.approx(f1_score(y.numpy(), pred, average="micro"))
    assert ev.figures["val_f1_macro"] == pytest.approx(np.mean([f1_score(y[:, j].numpy(), pred[:, j]) for j in range(3)]))
    per_image = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    assert ev.loss == pytest.approx(float(per_image.mean()), rel=1e-6)


def test_multilabel_without_any_positive_scores_zero_not_nan():
    ev = rules("multilabel").evaluation(torch.randn(5, 2), torch.zeros(5, 2))
    assert ev.figures == {"val_map": 0.0, "val_f1_macro": 0.0, "val_f1_micro": 0.0}


# ----------------------------------------------------------------------------- thresholds


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_thresholds_are_f1_optimal_and_sit_between_validation_scores(data):
    n = data.draw(st.integers(2, 25))
    scores = data.draw(st.lists(st.sampled_from([0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]), min_size=n, max_size=n))
    truth = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    p, t = torch.tensor(scores, dtype=torch.float64)[:, None], torch.tensor(truth, dtype=torch.float64)[:, None]
    chosen = choose_thresholds(p, t).values[0]

    def f1(th: float) -> float:
        pred = p[:, 0] > th
        tp = float((pred & (t[:, 0] > 0)).sum())
        return 2 * tp / (float(pred.sum()) + float(t.sum()))

    grid = [x / 1000 for x in range(0, 1001)]
    assert f1(chosen) == pytest.approx(max(f1(x) for x in grid))
    assert min(abs(chosen - s) for s in scores) > 0.01  # never on a validation score


def test_a_label_without_positives_keeps_half_and_is_named():
    p = torch.tensor([[0.9, 0.8], [0.2, 0.7], [0.6, 0.1]])
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    th = choose_thresholds(p, t)
    assert th.values[1] == 0.5 and th.defaulted == [1]
    assert th.values[0] == pytest.approx(0.4)  # midway between 0.6 (positive) and 0.2 (negative)
    tied = choose_thresholds(torch.tensor([[0.9], [0.1]]), torch.tensor([[1.0], [1.0]]))
    assert tied.values == [pytest.approx(0.05)]  # only predicting both gets F1 1


def test_decisions_in_numpy():
    p = probabilities(np.array([[0.0, 2.0, -3.0]]), multilabel=True)[0]
    out = above_thresholds(p, ["a", "b", "c"], [0.4, 0.9, 0.01])
    assert [d["class"] for d in out] == ["a", "c"]  # b's 0.88 is under its 0.9
    soft = probabilities(np.array([[1.0, 1.0]]), multilabel=False)
    assert soft.tolist() == [[0.5, 0.5]]
    card = {"task": "multilabel", "classes": ["a", "b"], "thresholds": [0.5, 1.5]}
    assert "between 0 and 1" in thresholds_problem(card)
    assert "one number per class (2)" in thresholds_problem(card | {"thresholds": [0.5]})
    assert "multiclass" in thresholds_problem({"classes": ["a"], "thresholds": [0.5]})


# ----------------------------------------------------------------------------- losses


def test_multiclass_criterion_weights_classes():
    crit = rules().criterion(weights=[1.0, 3.0], label_smoothing=0.1)
    logits, y = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]), label_smoothing=0.1)(logits, y)
    assert torch.equal(crit(logits, y), ref)


def test_multilabel_losses_are_means_with_positive_weights():
    logits, y = torch.randn(8, 3), (torch.rand(8, 3) > 0.5).float()
    bce = rules("multilabel").criterion(weights=[2.0, 1.0, 1.0])
    manual = -(2.0 * y[:, :1] * F.logsigmoid(logits[:, :1]) + (1 - y[:, :1]) * F.logsigmoid(-logits[:, :1]))
    rest = F.binary_cross_entropy_with_logits(logits[:, 1:], y[:, 1:], reduction="none")
    assert float(bce(logits, y)) == pytest.approx(float(torch.cat([manual, rest], 1).mean()), rel=1e-6)
    smoothed = rules("multilabel").criterion(label_smoothing=0.2)
    assert float(smoothed(logits, y)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, y * 0.8 + 0.1)))
    asl = rules("multilabel").criterion(loss="asl")
    twice = asl(torch.cat([logits, logits]), torch.cat([y, y]))
    assert float(twice) == pytest.approx(float(asl(logits, y)))  # averaged, not summed over the batch
    assert math.isfinite(float(twice))
