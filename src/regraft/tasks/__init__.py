"""What the labels are: one class per image (``multiclass``) or any number (``multilabel``).

The one owner of every rule that depends on it (docs/tasks.md):

- the training loss: cross-entropy with label smoothing and class weights; BCE-with-logits or
  the asymmetric loss with per-label positive weights (:func:`rules`, ``TaskRules.criterion``);
- how a batch and a validation set are scored, the primary figure and the rule for "better"
  (``TaskRules.accumulator`` / ``figures`` / ``primary`` / ``better``): accuracy then loss, or
  mAP then loss;
- how predictions are decided (argmax; a sigmoid above each label's threshold) and how the
  thresholds are chosen on validation (the F1-optimal threshold per label,
  :func:`choose_thresholds`);
- class imbalance (:mod:`regraft.tasks.balance`): what ``--balance auto`` chooses and why, the
  class weights, positive weights and per-image sampling weights.

``import regraft.tasks`` loads neither torch nor torchmetrics: the enums, the balance rules and
the numpy decisions (:mod:`regraft.tasks.decide`, used by the torch-free ONNX runtime) are plain
Python; the torch parts load on first use of their names.

Example:
    >>> Task.parse("multilabel").primary
    'val_map'
    >>> choose_balance("auto", counts=[100, 10], multilabel=False).reason
    'balance: loss (the largest class has 10.0x the images of the smallest)'
"""

from __future__ import annotations

import importlib
from typing import Any

from regraft.tasks.balance import (
    AUTO_RATIO,
    Balance,
    BalanceChoice,
    choose_balance,
    class_weights,
    imbalance_ratio,
    pos_weights,
    sample_weights,
)
from regraft.tasks.names import Task

__all__ = [
    "Task", "Balance", "BalanceChoice", "choose_balance", "class_weights", "pos_weights", "sample_weights",
    "imbalance_ratio", "AUTO_RATIO",
    "TaskRules", "rules", "Thresholds", "choose_thresholds", "DEFAULT_THRESHOLD",
    "probabilities", "above_thresholds", "read_thresholds", "balanced_accuracy", "label_table", "average_precisions",
]

_WHERE = {
    "regraft.tasks._rules": ("TaskRules", "rules"),
    "regraft.tasks._thresholds": ("Thresholds", "choose_thresholds"),
    "regraft.tasks.decide": ("DEFAULT_THRESHOLD", "probabilities", "above_thresholds", "read_thresholds"),
    "regraft.tasks._metrics": ("balanced_accuracy", "label_table", "average_precisions"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'regraft.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
