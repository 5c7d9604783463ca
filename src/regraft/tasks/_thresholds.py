"""Per-label decision thresholds of a multi-label model, chosen on validation probabilities.

For each label, the threshold with the highest F1 on the validation images: the images are
ranked by that label's probability, every cut between two different probabilities is a
candidate, and the threshold is the midpoint of the two probabilities at the chosen cut (the
cut below the lowest probability is half of it). Ties in F1 go to the threshold nearest 0.5.

Written by hand rather than read off torchmetrics' precision-recall curve: its thresholds are
the probabilities themselves, so an image sitting exactly on one would flip when the ONNX
runtime computes its probability 1e-7 away; a midpoint leaves every validation image half a gap
away from its label's threshold.

A label with no positive validation image cannot have an F1-optimal threshold: it keeps
:data:`~regraft.tasks.decide.DEFAULT_THRESHOLD` (0.5) and is named in ``Thresholds.defaulted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from regraft.tasks.decide import DEFAULT_THRESHOLD

__all__ = ["Thresholds", "choose_thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """One threshold per label (``p > t`` predicts it) and where they come from.

    Attributes:
        values: the thresholds, in label order.
        defaulted: the labels that kept 0.5 (no positive image to choose on).
        source: ``validation``, ``cross-validation`` (the probe's out-of-fold probabilities) or
            ``default`` (none chosen).
    """

    values: list[float]
    defaulted: list[int]
    source: str

    @classmethod
    def default(cls, n: int) -> Thresholds:
        return cls([DEFAULT_THRESHOLD] * n, list(range(n)), "default")


def choose_thresholds(probabilities: torch.Tensor, targets: torch.Tensor, *, source: str = "validation") -> Thresholds:
    """The F1-optimal threshold of every label (see the module doc).

    Args:
        probabilities: ``(n, L)`` sigmoid probabilities.
        targets: ``(n, L)`` 0/1.
        source: recorded in the result.

    Example:
        >>> p = torch.tensor([[0.9], [0.6], [0.3], [0.2]])
        >>> choose_thresholds(p, torch.tensor([[1.0], [1.0], [0.0], [0.0]])).values
        [0.45]
    """
    p = probabilities.detach().double().cpu()
    t = targets.detach().double().cpu()
    values, defaulted = [], []
    for j in range(p.shape[1]):
        best = _best_cut(p[:, j], t[:, j])
        if best is None:
            defaulted.append(j)
            values.append(DEFAULT_THRESHOLD)
        else:
            values.append(best)
    return Thresholds(values, defaulted, source)


def _best_cut(p: torch.Tensor, t: torch.Tensor) -> float | None:
    positives = float(t.sum())
    if positives == 0:
        return None
    order = torch.argsort(p, descending=True, stable=True)
    ps, ts = p[order], t[order]
    tp = torch.cumsum(ts, 0)
    predicted = torch.arange(1, len(ps) + 1, dtype=torch.float64)
    f1 = 2 * tp / (predicted + positives)
    below = torch.cat([ps[1:], ps.new_tensor([0.0])])
    cut = torch.cat([ps[1:] < ps[:-1], ps.new_tensor([True], dtype=torch.bool)])  # between two distinct values
    threshold = (ps + below) / 2
    candidates = [(float(f1[k]), float(threshold[k])) for k in torch.nonzero(cut).flatten().tolist()]
    top = max(f for f, _ in candidates)
    tied = [th for f, th in candidates if f >= top - 1e-12]
    return min(tied, key=lambda th: (abs(th - DEFAULT_THRESHOLD), th))
