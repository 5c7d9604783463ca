"""Classification metrics of a set of logits, from torchmetrics.

Accuracy, per-class precision / recall / F1, the confusion matrix and the expected calibration
error (15 equal-width bins, Guo et al. 2017) are torchmetrics' functional metrics; the loss is
the mean cross-entropy accumulated in float64 batch by batch, as training's validation
accumulates it, so that ``regraft eval`` reproduces ``summary.json``'s loss.

Example:
    >>> import torch
    >>> m = classification_metrics(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), ["a", "b"])
    >>> m["accuracy"], m["confusion_matrix"]
    (0.5, [[1, 1], [0, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from regraft.tasks import balanced_accuracy, label_table, rules

__all__ = ["classification_metrics", "multilabel_metrics", "expected_calibration_error", "summed_loss"]

ECE_BINS = 15


def summed_loss(logits: torch.Tensor, targets: torch.Tensor, *, batches: Sequence[int] | None = None) -> float:
    """The sum of the cross-entropy over all rows: float32 sums per batch (``batches``: their
    sizes, in order; default one batch), added in float64 -- what training's ``evaluate`` computes
    over its validation batches."""
    sizes = list(batches) if batches else [len(targets)]
    if sum(sizes) != len(targets):
        raise ValueError(f"batch sizes add up to {sum(sizes)}, not to the {len(targets)} rows")
    total, start = torch.zeros((), dtype=torch.float64), 0
    for size in sizes:
        if size:
            total += F.cross_entropy(logits[start : start + size], targets[start : start + size], reduction="sum").double()
        start += size
    return float(total)


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, *, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins (torchmetrics' ``multiclass_calibration_error``, L1)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    if len(targets) == 0:
        return 0.0
    k = max(int(logits.shape[1]), 2)
    return float(multiclass_calibration_error(logits.float().softmax(1), targets, num_classes=k, n_bins=bins, norm="l1"))


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], *, batches: Sequence[int] | None = None
) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy/precision/recall/F1, the confusion matrix, macro F1 and ECE.

    Args:
        logits: ``(n, K)`` float logits (or log-probabilities: test-time augmentation passes the
            log of its averaged probabilities).
        targets: ``(n,)`` class indices.
        classes: the ``K`` class names, in output order.
        batches: the sizes of the batches the loss is summed in (see :func:`summed_loss`).

    Returns:
        ``accuracy``, ``loss``, ``n_images``, ``per_class`` (name -> accuracy, precision, recall,
        f1, support), ``confusion_matrix`` (rows: true class), ``ece``, ``macro_f1``,
        ``balanced_accuracy`` (the mean recall over the classes with an image, as training's
        ``val_balanced_acc``).
    """
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    k, n = len(classes), len(targets)
    if n == 0:
        empty = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {"accuracy": 0.0, "loss": float("nan"), "n_images": 0, "per_class": {c: dict(empty) for c in classes},
                "confusion_matrix": [[0] * k for _ in range(k)], "ece": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0}
    logits, targets = logits.float(), targets.long()
    kk = max(k, 2)  # torchmetrics' multiclass metrics want two classes at least
    args = {"num_classes": kk, "average": "none"}
    cm = multiclass_confusion_matrix(logits, targets, num_classes=kk)[:k, :k]
    precision = multiclass_precision(logits, targets, **args)
    recall = multiclass_recall(logits, targets, **args)
    f1 = multiclass_f1_score(logits, targets, **args)
    support = cm.sum(1)
    per_class = {
        name: {"accuracy": float(recall[i]), "precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(cm.diagonal().sum()) / n,
        "loss": summed_loss(logits, targets, batches=batches) / n,
        "n_images": n,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(logits, targets),
        "macro_f1": float(f1[:k].mean()),
        "balanced_accuracy": balanced_accuracy(cm.diagonal(), support),
    }


def multilabel_metrics(
    logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], *, thresholds: Sequence[float],
    batches: Sequence[int] | None = None,
) -> dict[str, Any]:
    """mAP, loss, the F1 figures at 0.5 and at the run's thresholds, exact match and the per-label table.

    ``map`` and ``loss`` are computed as training's validation computes ``val_map`` and
    ``val_loss`` (:mod:`regraft.tasks`), so on the run's own split they reproduce ``summary.json``.

    Args:
        logits: ``(n, L)`` logits (or the logit of averaged probabilities, with test-time augmentation).
        targets: ``(n, L)`` 0/1.
        classes: the ``L`` label names.
        thresholds: one per label (``model.json``).
        batches: the sizes of the batches the loss is summed in.

    Returns:
        ``map``, ``loss``, ``n_images``, ``f1_macro``, ``f1_micro``, ``exact_match`` (at the
        thresholds), ``f1_macro_at_0.5``, ``f1_micro_at_0.5``, ``per_label`` (name -> ap,
        threshold, precision, recall, f1, support), ``thresholds``.
    """
    scored = rules("multilabel").evaluation(logits.float(), targets.float(), batches=batches)
    table = label_table(logits, targets, classes, thresholds)
    return {
        "map": scored.figures["val_map"], "loss": scored.loss if len(targets) else float("nan"), "n_images": len(targets),
        "f1_macro": table["f1_macro"], "f1_micro": table["f1_micro"], "exact_match": table["exact_match"],
        "f1_macro_at_0.5": scored.figures["val_f1_macro"], "f1_micro_at_0.5": scored.figures["val_f1_micro"],
        "per_label": table["per_label"], "thresholds": list(map(float, thresholds)),
    }
