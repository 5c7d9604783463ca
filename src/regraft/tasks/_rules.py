"""The torch side of a task: its loss, how a batch and a validation set are scored, its decisions.

The training loop, the probe, ``finish``, eval/predict and the report ask a :class:`TaskRules`
(``rules(task)``) instead of branching on the task themselves.

=====================  ===========================================  ============================================
                       multiclass                                   multilabel
=====================  ===========================================  ============================================
training loss          cross-entropy (label smoothing, class        BCE-with-logits (smoothing towards 0.5,
                       weights with ``--balance loss``)             ``pos_weight``) or the asymmetric loss
validation loss        mean cross-entropy per image                 mean over labels of the BCE, per image
row figures            ``val_acc``, ``val_balanced_acc``            ``val_map``, ``val_f1_macro``, ``val_f1_micro``
                                                                    (F1 at 0.5; the thresholds come at the end)
train figure           ``train_acc`` (argmax = label)               none (``train_acc`` is left out)
"better"               higher ``val_acc``, then lower loss          higher ``val_map``, then lower loss
decision               argmax                                       each sigmoid above its label's threshold
=====================  ===========================================  ============================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from regraft.errors import ConfigError
from regraft.tasks._metrics import (
    balanced_accuracy,
    multiclass_summary,
    multilabel_figures,
    multilabel_summary,
)
from regraft.tasks._thresholds import Thresholds, choose_thresholds
from regraft.tasks.names import Task

__all__ = ["TaskRules", "Evaluation", "rules"]

# the asymmetric loss's parameters recommended by Ridnik et al. 2021 (ASL, section 4): gamma- 4, gamma+ 0, margin 0.05
ASL = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}


class Evaluation(NamedTuple):
    """A validation pass: mean loss per image, images, and the row's figures (``val_acc``, ``val_map`` ...)."""

    loss: float
    n: int
    figures: dict[str, float]


class TaskRules:
    """What depends on the task; see the module table. Get one with :func:`rules`."""

    task: Task

    @property
    def primary(self) -> str:
        return self.task.primary

    @property
    def figure(self) -> str:
        return self.task.figure

    @property
    def multilabel(self) -> bool:
        return self.task.multilabel

    @staticmethod
    def better(score: float, loss: float, than_score: float, than_loss: float) -> bool:
        """The one rule for "better" on validation evidence: a higher primary figure, or the same and a lower loss."""
        return score > than_score or (score == than_score and loss < than_loss)

    def criterion(self, *, label_smoothing: float = 0.0, weights: Sequence[float] | None = None, loss: str = "bce") -> nn.Module:
        raise NotImplementedError

    def loss_sum(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The validation loss summed over the batch's images (float64 scalar, on the logits' device)."""
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Right predictions in a training batch (``train_acc``), or None when the task has no train figure."""
        raise NotImplementedError

    def accumulator(self, device: torch.device | None = None) -> Any:
        """Scores a validation set batch by batch: ``add(logits, y)``, then ``result(reduce_sum=, gather=)``
        with the processes' sum and gather (identity and ``[x]`` in one process)."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def targets(self, labels: Sequence[Any], num_classes: int) -> torch.Tensor:
        """Batch targets from samples' labels (class indices, or tuples of positive labels)."""
        raise NotImplementedError

    def evaluation(self, logits: torch.Tensor, y: torch.Tensor, *, batches: Sequence[int] | None = None) -> Evaluation:
        """Score all of a validation set at once (the probe, eval): the same figures :meth:`accumulator` gives."""
        acc = self.accumulator(logits.device)
        start = 0
        for size in list(batches) if batches else [len(y)]:
            if size:
                acc.add(logits[start : start + size], y[start : start + size])
            start += size
        return acc.result(reduce_sum=lambda t: t, gather=lambda obj: [obj])

    def thresholds(self, logits: torch.Tensor, targets: torch.Tensor, *, source: str = "validation") -> Thresholds | None:
        """The decision thresholds chosen on these validation outputs (None: the task decides by argmax)."""
        return None

    def summary(self, logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], *,
                thresholds: Thresholds | None = None) -> dict[str, Any]:
        """The ``summary.json`` fields of the kept weights' validation outputs beyond the row's figures."""
        raise NotImplementedError

    def prediction_columns(self, logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], *,
                           thresholds: Sequence[float] | None = None) -> tuple[list[str], list[list[str]]]:
        """``val_predictions.csv`` without its ``path`` column: the header and one row per image."""
        raise NotImplementedError


class _Multiclass(TaskRules):
    task = Task.MULTICLASS

    def criterion(self, *, label_smoothing: float = 0.0, weights: Sequence[float] | None = None, loss: str = "bce") -> nn.Module:
        weight = torch.tensor(list(weights), dtype=torch.float32) if weights is not None else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def loss_sum(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="sum").double()

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y.argmax(dim=1) if y.ndim == 2 else y  # mixup/cutmix: the larger share names the class
        return (logits.argmax(dim=1) == target).sum()

    def accumulator(self, device: torch.device | None = None) -> _CountingAccumulator:
        return _CountingAccumulator(self, device)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.double().softmax(dim=1)

    def targets(self, labels: Sequence[Any], num_classes: int) -> torch.Tensor:
        return torch.tensor([int(y) for y in labels], dtype=torch.long)

    def summary(self, logits, targets, classes, *, thresholds=None) -> dict[str, Any]:
        return multiclass_summary(logits, targets, classes)

    def prediction_columns(self, logits, targets, classes, *, thresholds=None) -> tuple[list[str], list[list[str]]]:
        probs = torch.softmax(logits.float(), dim=1)
        rows = []
        for p, target in zip(probs, targets.tolist(), strict=True):
            predicted = int(p.argmax())
            rows.append([classes[target], classes[predicted], str(int(predicted == target)),
                         f"{float(p[target]):.6g}", f"{float(p[predicted]):.6g}"])
        return ["label", "predicted", "correct", "p_label", "p_predicted"], rows


class _CountingAccumulator:
    """Multiclass: loss, right predictions and images, and per class hits and support, summed as they come."""

    def __init__(self, rules: _Multiclass, device: torch.device | None) -> None:
        self.rules, self.device = rules, device
        self.totals: torch.Tensor | None = None  # loss sum, correct, count, hits per class, support per class

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        k = logits.shape[1]
        if y.shape[0] == 0:  # a batch whose every image failed to decode
            return
        if self.totals is None:
            self.totals = torch.zeros(3 + 2 * k, dtype=torch.float64, device=logits.device)
        right = logits.argmax(dim=1) == y
        self.totals[0] += self.rules.loss_sum(logits, y)
        self.totals[1] += right.sum()
        self.totals[2] += y.shape[0]
        self.totals[3 : 3 + k] += torch.bincount(y[right], minlength=k)[:k]
        self.totals[3 + k :] += torch.bincount(y, minlength=k)[:k]

    def result(self, *, reduce_sum: Callable[[torch.Tensor], torch.Tensor], gather: Callable[[Any], list[Any]]) -> Evaluation:
        # every process takes part in the sum with the same width, also one whose shard was empty
        k = (len(self.totals) - 3) // 2 if self.totals is not None else 0
        width = max(int(w) for w in gather(k))
        totals = self.totals if self.totals is not None else torch.zeros(3 + 2 * width, dtype=torch.float64, device=self.device)
        totals = reduce_sum(totals).cpu()
        n = int(totals[2].item())
        figures = {"val_acc": float(totals[1] / max(n, 1))}
        if width:
            figures["val_balanced_acc"] = balanced_accuracy(totals[3 : 3 + width], totals[3 + width :])
        return Evaluation(float(totals[0] / max(n, 1)), n, figures)


class _Multilabel(TaskRules):
    task = Task.MULTILABEL

    def criterion(self, *, label_smoothing: float = 0.0, weights: Sequence[float] | None = None, loss: str = "bce") -> nn.Module:
        pos_weight = torch.tensor(list(weights), dtype=torch.float32) if weights is not None else None
        if loss == "asl":
            return _asl(label_smoothing=label_smoothing, pos_weight=pos_weight)
        return SmoothedBCE(label_smoothing=label_smoothing, pos_weight=pos_weight)

    def loss_sum(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").mean(dim=1).sum().double()

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        return None

    def accumulator(self, device: torch.device | None = None) -> _CollectingAccumulator:
        return _CollectingAccumulator(self, device)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.double())

    def targets(self, labels: Sequence[Any], num_classes: int) -> torch.Tensor:
        out = torch.zeros(len(labels), num_classes, dtype=torch.float32)
        for i, y in enumerate(labels):
            out[i, list(y)] = 1.0
        return out

    def thresholds(self, logits, targets, *, source: str = "validation") -> Thresholds:
        if len(targets) == 0:
            return Thresholds.default(logits.shape[1])
        return choose_thresholds(torch.sigmoid(logits.float()), targets, source=source)

    def summary(self, logits, targets, classes, *, thresholds=None) -> dict[str, Any]:
        return multilabel_summary(logits, targets, classes, thresholds=thresholds)

    def prediction_columns(self, logits, targets, classes, *, thresholds=None) -> tuple[list[str], list[list[str]]]:
        """``labels`` and ``predicted`` joined by ``;``, ``correct`` = the same set, then one probability per label."""
        probs = torch.sigmoid(logits.float())
        limits = list(thresholds) if thresholds is not None else [0.5] * len(classes)
        rows = []
        for p, t in zip(probs, targets, strict=True):
            truth = [c for j, c in enumerate(classes) if float(t[j]) > 0.5]
            chosen = [c for j, c in enumerate(classes) if float(p[j]) > limits[j]]
            rows.append([";".join(truth), ";".join(chosen), str(int(truth == chosen)), *(f"{float(v):.6g}" for v in p)])
        return ["labels", "predicted", "correct", *(f"p_{c}" for c in classes)], rows


class _CollectingAccumulator:
    """Multi-label: mAP needs every image's outputs at once, so they are kept (and gathered under DDP)."""

    def __init__(self, rules: _Multilabel, device: torch.device | None) -> None:
        self.rules, self.device = rules, device
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.loss: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if y.shape[0] == 0:  # a batch whose every image failed to decode
            return
        part = self.rules.loss_sum(logits, y)
        self.loss = part if self.loss is None else self.loss + part
        self.logits.append(logits.detach().float().cpu())
        self.targets.append(y.detach().float().cpu())

    def result(self, *, reduce_sum: Callable[[torch.Tensor], torch.Tensor], gather: Callable[[Any], list[Any]]) -> Evaluation:
        mine = (torch.cat(self.logits), torch.cat(self.targets)) if self.logits else None
        parts = [p for p in gather(mine) if p is not None]
        loss = self.loss if self.loss is not None else torch.zeros((), dtype=torch.float64, device=self.device)
        loss = float(reduce_sum(loss.reshape(1).to(torch.float64)).sum())
        if not parts:
            return Evaluation(0.0, 0, {"val_map": 0.0, "val_f1_macro": 0.0, "val_f1_micro": 0.0})
        logits, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        n = len(targets)
        return Evaluation(loss / max(n, 1), n, multilabel_figures(logits, targets))


class SmoothedBCE(nn.Module):
    """``BCEWithLogitsLoss`` (mean over images and labels) with targets smoothed towards 0.5 and ``pos_weight``."""

    def __init__(self, *, label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(logits.dtype)
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)


def _asl(*, label_smoothing: float, pos_weight: torch.Tensor | None) -> nn.Module:
    """timm's ``AsymmetricLossMultiLabel`` with the paper's parameters, averaged like BCE (not summed)."""
    import timm
    from timm.loss import AsymmetricLossMultiLabel

    accepts = inspect.signature(AsymmetricLossMultiLabel).parameters
    if not {"reduction", "pos_weight", "smoothing"} <= set(accepts):
        raise ConfigError(
            f"multilabel_loss asl needs timm's AsymmetricLossMultiLabel with reduction, smoothing and pos_weight, which "
            f"timm {timm.__version__} lacks; upgrade timm (pip install -U timm) or use multilabel_loss bce"
        )
    return AsymmetricLossMultiLabel(**ASL, smoothing=label_smoothing, reduction="mean", pos_weight=pos_weight)


_RULES: dict[Task, TaskRules] = {Task.MULTICLASS: _Multiclass(), Task.MULTILABEL: _Multilabel()}


def rules(task: str | Task | None = None) -> TaskRules:
    """The rules of ``task`` (None: ``multiclass``, what runs before multi-label support were).

    Raises:
        ConfigError: an unknown task.

    Example:
        >>> rules("multilabel").primary
        'val_map'
    """
    return _RULES[Task.parse(task)]
