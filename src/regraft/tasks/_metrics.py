"""The figures of a task's validation outputs: balanced accuracy; mAP, F1 and the per-label table.

Average precision is torchmetrics' (``multilabel_average_precision``, the step-wise area under
the precision-recall curve, as scikit-learn's ``average_precision_score``). mAP and macro F1
average over the labels that have at least one positive validation image: a label without one
has no recall, and counting it as 0 (torchmetrics' ``zero_division``) would lower every run's
figure by a constant that says nothing about the model. That is why the F1 counts are taken here
rather than from ``multilabel_f1_score``. Micro F1 pools every label's counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from regraft.tasks.decide import DEFAULT_THRESHOLD

__all__ = [
    "balanced_accuracy", "average_precisions", "f1_counts", "multilabel_figures", "label_table",
    "multilabel_summary", "multiclass_summary",
]


def balanced_accuracy(hits: torch.Tensor, support: torch.Tensor) -> float:
    """The mean recall over the classes with at least one image (scikit-learn's ``balanced_accuracy_score``)."""
    present = support > 0
    if not bool(present.any()):
        return 0.0
    return float((hits[present].double() / support[present].double()).mean())


def average_precisions(probs: torch.Tensor, targets: torch.Tensor) -> list[float | None]:
    """Each label's average precision, None for a label without a positive image."""
    from torchmetrics.functional.classification import multilabel_average_precision

    has = targets.sum(dim=0) > 0
    out: list[float | None] = [None] * targets.shape[1]
    if not bool(has.any()) or len(targets) == 0:
        return out
    cols = torch.nonzero(has).flatten()
    ap = multilabel_average_precision(probs[:, cols].float(), targets[:, cols].long(), num_labels=len(cols), average=None)
    for j, value in zip(cols.tolist(), ap.reshape(-1).tolist(), strict=True):
        out[j] = float(value)
    return out


def _mean(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else 0.0


def f1_counts(predicted: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tp, fp, fn)`` per label, float64, from 0/1 decisions and targets."""
    p, t = predicted.double(), targets.double()
    return (p * t).sum(0), (p * (1 - t)).sum(0), ((1 - p) * t).sum(0)


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[list[float | None], float, float]:
    """Per-label F1 (None without a positive), macro (over labels with one) and micro F1."""
    per = [float(2 * a / (2 * a + b + c)) if float(a + c) > 0 else None for a, b, c in zip(tp, fp, fn, strict=True)]
    denominator = float(2 * tp.sum() + fp.sum() + fn.sum())
    micro = float(2 * tp.sum()) / denominator if denominator else 0.0
    return per, _mean(per), micro


def multilabel_figures(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """A row's figures: ``val_map``, and ``val_f1_macro`` / ``val_f1_micro`` with every label at 0.5."""
    probs = torch.sigmoid(logits.float())
    _, macro, micro = _f1(*f1_counts(probs > DEFAULT_THRESHOLD, targets))
    return {"val_map": _mean(average_precisions(probs, targets)), "val_f1_macro": macro, "val_f1_micro": micro}


def label_table(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], thresholds: Sequence[float]) -> dict[str, Any]:
    """Per label AP, threshold, precision, recall, F1 and support at ``thresholds``; macro/micro F1, exact match, mAP."""
    probs = torch.sigmoid(logits.float())
    limits = torch.tensor(list(thresholds), dtype=probs.dtype)
    predicted = probs > limits
    tp, fp, fn = f1_counts(predicted, targets)
    f1, macro, micro = _f1(tp, fp, fn)
    aps = average_precisions(probs, targets)
    per_label = {}
    for j, name in enumerate(classes):
        shown = float(tp[j] + fp[j])
        per_label[name] = {
            "ap": aps[j], "threshold": float(thresholds[j]),
            "precision": float(tp[j]) / shown if shown else 0.0,
            "recall": float(tp[j] / (tp[j] + fn[j])) if float(tp[j] + fn[j]) else None,
            "f1": f1[j], "support": int(tp[j] + fn[j]),
        }
    exact = float((predicted == (targets > 0.5)).all(dim=1).double().mean()) if len(targets) else 0.0
    return {"map": _mean(aps), "f1_macro": macro, "f1_micro": micro, "exact_match": exact, "per_label": per_label}


def multilabel_summary(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], *, thresholds: Any) -> dict[str, Any]:
    """``summary.json``'s multi-label fields: the label table at the chosen thresholds, and where they come from."""
    values = list(thresholds.values) if thresholds is not None else [DEFAULT_THRESHOLD] * len(classes)
    table = label_table(logits, targets, classes, values)
    return {
        "thresholds": dict(zip(classes, values, strict=True)),
        "thresholds_source": thresholds.source if thresholds is not None else "default",
        "thresholds_default": [classes[j] for j in (thresholds.defaulted if thresholds is not None else range(len(classes)))],
        "f1_macro_at_thresholds": table["f1_macro"], "f1_micro_at_thresholds": table["f1_micro"],
        "exact_match_at_thresholds": table["exact_match"], "per_label": table["per_label"],
    }


def multiclass_summary(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """``summary.json``'s imbalance field: the recall of every class (None for one without an image);
    their mean, the balanced accuracy, is the kept row's ``val_balanced_acc``."""
    k = len(classes)
    if len(targets) == 0:
        return {"per_class_recall": {c: None for c in classes}}
    right = logits.argmax(dim=1) == targets
    hits = torch.bincount(targets[right], minlength=k)[:k]
    support = torch.bincount(targets, minlength=k)[:k]
    recall = {c: (float(hits[i]) / float(support[i]) if int(support[i]) else None) for i, c in enumerate(classes)}
    return {"per_class_recall": recall}
