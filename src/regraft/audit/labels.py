"""Label issues: images whose given class their out-of-fold probabilities contradict.

The probabilities come from cross-validated probes (:func:`regraft.features.linear.cross_validate`),
so no image judges itself. Which images to flag is confident learning's question (Northcutt,
Jiang & Chuang, JAIR 2021): with cleanlab installed (``pip install 'regraft[scan]'``) its
``find_label_issues`` decides (``prune_by_noise_rate``: it estimates how many labels of each
class went to each other class and flags that many of the least self-confident images).
Without it, regraft flags the off-diagonal of the confident joint by hand: an image is flagged
when another class's probability reaches that class's threshold (the mean probability of the
class over the images filed under it) and beats every other class that does; cleanlab's
``filter_by="confident_learning"``, without the noise-rate pruning. Either way the list is
ranked by self-confidence, the most suspect (lowest probability of the given class) first.

One addition by hand, to both: an image the probes put in another class with probability at
least ``BLATANT_OTHER`` while giving its own class at most ``BLATANT_GIVEN`` is flagged too.
Confident learning counts wrong labels per pair of classes and calibrates those counts; with a
few errors spread over many classes (25 over 13 classes on bench/deep_scan.py's 5% folder) some
pairs round to none, and it left out 4 images whose out-of-fold probability of another class was
0.95 to 1.00 and of their own 0.001 or less. The addition flagged no correct image on any
benchmark folder (docs/scan.md).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["LabelIssue", "find_label_issues", "flag_label_issues", "CLEANLAB", "CONFIDENT_JOINT"]

log = logging.getLogger(__name__)

CLEANLAB = "cleanlab find_label_issues (prune_by_noise_rate)"
CONFIDENT_JOINT = "confident joint (cleanlab not installed)"
BLATANT_OTHER = 0.9
BLATANT_GIVEN = 0.05


@dataclass(frozen=True)
class LabelIssue:
    """An image filed under ``given`` that the evidence puts in ``suggested``.

    ``score`` is 1 − the out-of-fold probability of the given class (1 = certainly wrong).
    """

    path: str
    split: str
    given: str
    suggested: str
    score: float
    given_probability: float
    suggested_probability: float

    def to_dict(self) -> dict:
        return asdict(self)


def flag_label_issues(probabilities: np.ndarray, labels: np.ndarray, *, judged: np.ndarray | None = None,
                      method: str = "auto") -> tuple[np.ndarray, str]:
    """Indices of suspected label errors (most suspect first) and the method that chose them.

    Args:
        probabilities: ``(n, k)`` out-of-fold class probabilities.
        labels: ``(n,)`` given class indices.
        judged: ``(n,)`` bool, the rows the evidence can speak for (default all); others are
            never flagged (a class of one image, whose fold never saw the class).
        method: ``auto`` (cleanlab when installed), ``cleanlab`` or ``confident-joint``.

    Returns:
        ``(indices, method name)``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(y)) if judged is None else np.flatnonzero(judged)
    use_cleanlab = method == "cleanlab" or (method == "auto" and importlib.util.find_spec("cleanlab") is not None)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64), CLEANLAB if use_cleanlab else CONFIDENT_JOINT
    p, y = p[rows], y[rows]
    if use_cleanlab and len(np.unique(y)) > 1:
        # cleanlab prunes from the confident joint's off-diagonal cells: with none, it flags
        # nothing, and a run on clean data is spared its import (1.4 s here, with scikit-learn)
        found = _cleanlab(p, y) if len(_confident_joint(p, y)) else np.zeros(0, dtype=np.int64)
        name = CLEANLAB
    else:
        found = _confident_joint(p, y)
        name = CONFIDENT_JOINT if not use_cleanlab else CLEANLAB + ", one class: confident joint"
    given = p[np.arange(len(y)), y]
    blatant = np.flatnonzero((p.argmax(axis=1) != y) & (p.max(axis=1) >= BLATANT_OTHER) & (given <= BLATANT_GIVEN))
    found = np.union1d(found, blatant).astype(np.int64)
    order = np.argsort(given[found], kind="stable")
    return rows[found[order]], name


def _cleanlab(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues as cleanlab_find

    present = np.unique(y)
    # cleanlab wants every column to be a class some image is filed under
    q = p[:, present]
    q = q / q.sum(axis=1, keepdims=True).clip(min=1e-300)
    remap = np.searchsorted(present, y)
    flags = cleanlab_find(labels=remap, pred_probs=q, filter_by="prune_by_noise_rate", n_jobs=1)
    return np.flatnonzero(flags)


def _confident_joint(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = p.shape[1]
    thresholds = np.full(k, np.inf)
    for c in np.unique(y):
        thresholds[c] = p[y == c, c].mean()
    confident = p >= thresholds[None, :]
    masked = np.where(confident, p, -np.inf)
    assigned = masked.argmax(axis=1)
    return np.flatnonzero(confident.any(axis=1) & (assigned != y))


def find_label_issues(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    paths: Sequence[str],
    splits: Sequence[str],
    classes: Sequence[str],
    judged: np.ndarray | None = None,
    method: str = "auto",
) -> tuple[list[LabelIssue], str]:
    """:func:`flag_label_issues` as :class:`LabelIssue` rows, most suspect first.

    The suggested class is the most probable class other than the given one.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    found, name = flag_label_issues(p, y, judged=judged, method=method)
    issues = []
    for i in found.tolist():
        others = p[i].copy()
        others[y[i]] = -np.inf
        s = int(others.argmax())
        issues.append(LabelIssue(paths[i], splits[i], classes[y[i]], classes[s], round(1.0 - float(p[i, y[i]]), 4),
                                 round(float(p[i, y[i]]), 4), round(float(p[i, s]), 4)))
    return issues, name
