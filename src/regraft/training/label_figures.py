"""The kept weights' per-class (per-label) figures and, for multi-label runs, the decision thresholds.

Both come from the kept weights' outputs on the validation images (``finish``'s final
evaluation); in the cross-validated regime (no validation split) from the probe's out-of-fold
probabilities, where every training image is judged by a probe that never saw it. The task
(:mod:`regraft.tasks`) says what to compute: balanced accuracy and each class's recall; or each
label's F1-optimal threshold, AP, precision, recall and F1 at that threshold. The thresholds go
into ``model.json``, which eval, predict and every export read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from regraft.runs import RunDir
from regraft.tasks import TaskRules, Thresholds

__all__ = ["LabelFigures", "label_figures", "write_thresholds"]

log = logging.getLogger(__name__)
_EPS = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class LabelFigures:
    """``summary`` fields for ``summary.json`` and the ``thresholds`` (None: the task decides by argmax)."""

    summary: dict[str, Any]
    thresholds: Thresholds | None


def label_figures(task: TaskRules, classes: list[str], *, logits: torch.Tensor | None, targets: torch.Tensor | None,
                  out_of_fold: tuple[torch.Tensor, torch.Tensor] | None = None) -> LabelFigures:
    """The figures of the kept weights' outputs (``logits``/``targets``), else of the probe's out-of-fold probabilities.

    Args:
        task: the run's rules.
        classes: class (label) names.
        logits, targets: the final evaluation's outputs on the validation images (None without any).
        out_of_fold: ``(probabilities, targets)`` of the cross-validated probe, used when there
            are no validation outputs.
    """
    source = "validation"
    if logits is None or targets is None or len(targets) == 0:
        if out_of_fold is None:
            thresholds = task.thresholds(torch.zeros(0, len(classes)), torch.zeros(0, len(classes)))
            return LabelFigures({}, thresholds)
        probs, targets = out_of_fold
        p = probs.double().clamp(_EPS, 1 - _EPS)
        logits = ((p.log() - (1 - p).log()) if task.multilabel else p.log()).float()
        source = "cross-validation"
    thresholds = task.thresholds(logits, targets, source=source)
    fields = task.summary(logits, targets, classes, thresholds=thresholds)
    return LabelFigures(fields, thresholds)


def write_thresholds(run: RunDir, thresholds: Thresholds | None) -> None:
    """Put the chosen thresholds into the run's ``model.json`` (multi-label runs; nothing otherwise)."""
    if thresholds is None:
        return
    import json

    path = run.path / "model.json"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("could not add the thresholds to %s: %s", path, exc)
        return
    card["thresholds"] = [float(v) for v in thresholds.values]
    card["thresholds_source"] = thresholds.source
    run.write_json("model.json", card)
