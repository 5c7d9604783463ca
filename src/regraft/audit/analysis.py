"""The deep scan's analysis of one embedding per image: label issues, near-duplicates, outliers.

:func:`analyse` works on features already computed (``regraft scan --model`` embeds the
folder first, :mod:`regraft.audit.embed`; a training run can hand over its cached features):

1. near-duplicate pairs (:mod:`regraft.audit.duplicates`);
2. out-of-fold probabilities from a cross-validated linear probe on every image, train and
   validation alike (:func:`regraft.features.linear.cross_validate`). Copies filed under the
   same class share a fold (``groups``), or a copy would vouch for its twin's label;
3. a second pass: the probes are fitted again without every image the first pass put in
   another class (weight 0; they still get out-of-fold probabilities), so that wrong labels
   no longer pull the classifier that judges them;
   then the images whose given label those probabilities contradict (:mod:`regraft.audit.labels`);
4. outliers (:mod:`regraft.audit.outliers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from regraft.audit.duplicates import DuplicateRule, NearDuplicate, clusters, find_near_duplicates
from regraft.audit.labels import LabelIssue, find_label_issues
from regraft.audit.outliers import Outlier, find_outliers
from regraft.data.phash import Fingerprint
from regraft.errors import DataError

__all__ = ["DeepScan", "analyse"]

log = logging.getLogger(__name__)

# The probes' convergence tolerance: 1e-5 (the objective within ~1e-10 of its minimum) flagged the
# same images as 1e-6 on the benchmark, in four fifths of the time.
TOL = 1e-5


@dataclass
class DeepScan:
    """What the deep scan found; :meth:`to_dict` gives the JSON contract's keys.

    Attributes:
        label_issues: most suspect first. near_duplicates: leaks first, then most similar.
        outliers: most unusual first. method: how label issues were chosen.
        probe: the cross-validated probe's figures (``validation``, ``accuracy``, ``accuracy_std``,
            ``l2``, ``folds``). images: images analysed. seconds: wall time per part.
        model: what embedded the images (set by the caller).
        exemplars: per class, the images filed under it that the probes find most typical of it
            (highest out-of-fold probability), for showing next to a suspect.
    """

    label_issues: list[LabelIssue]
    near_duplicates: list[NearDuplicate]
    outliers: list[Outlier]
    method: str
    probe: dict[str, Any]
    images: int
    seconds: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    exemplars: dict[str, list[str]] = field(default_factory=dict)  # class -> its most typical images

    @property
    def leaks(self) -> list[NearDuplicate]:
        return [p for p in self.near_duplicates if p.leak]

    def problems(self) -> list[str]:
        """One line per kind of finding, for the scan's problem list."""
        out = []
        if self.label_issues:
            out.append(f"{_count(len(self.label_issues), 'image')} whose label the other images contradict (suspected label errors)")
        if self.leaks:
            out.append(f"{_count(len(self.leaks), 'near-duplicate pair')} across train and validation (leakage)")
        within = len(self.near_duplicates) - len(self.leaks)
        if within:
            out.append(f"{_count(within, 'near-duplicate pair')} within a split")
        if self.outliers:
            out.append(f"{_count(len(self.outliers), 'outlier')} (far from every other image, or near-uniform)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label_issues": [i.to_dict() for i in self.label_issues],
            "near_duplicates": [p.to_dict() for p in self.near_duplicates],
            "outliers": [o.to_dict() for o in self.outliers],
            "deep_scan": {"model": self.model, "images": self.images, "label_method": self.method,
                          "probe": self.probe, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}},
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def analyse(
    features: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    *,
    classes: Sequence[str],
    paths: Sequence[str],
    splits: Sequence[str],
    fingerprints: Sequence[Fingerprint | None] | None = None,
    skip_pairs: set[frozenset[str]] | None = None,
    seed: int = 0,
    passes: int = 2,
    method: str = "auto",
    rule: DuplicateRule = DuplicateRule(),
) -> DeepScan:
    """Label issues, near-duplicates and outliers of ``n`` images from their ``(n, d)`` features.

    Args:
        features: one embedding per image (float; NaN raises ``TrainingError``).
        labels: each image's given class index into ``classes``.
        classes: class names. paths, splits: per image, its path and ``train``/``val``.
        fingerprints: per image perceptual hashes (:func:`regraft.data.phash.fingerprint`);
            None judges near-duplicates by features alone.
        skip_pairs: path pairs not to report as near-duplicates (identical files).
        seed: seeds the folds. passes: 1, or 2 to refit without the first pass's suspects.
        method: label-issue method (:func:`regraft.audit.labels.flag_label_issues`).
        rule: near-duplicate thresholds.

    Returns:
        A :class:`DeepScan` (``model`` left empty).

    Raises:
        DataError: fewer than 2 images or classes, or inputs of different lengths.
    """
    y = torch.as_tensor(labels, dtype=torch.long)
    n = features.shape[0]
    if not (len(y) == len(paths) == len(splits) == n) or (fingerprints is not None and len(fingerprints) != n):
        raise DataError(f"the deep scan needs one label, path, split (and fingerprint) per image; got {n} feature rows")
    if n < 2 or len(torch.unique(y)) < 2:
        raise DataError("the deep scan needs at least 2 images in at least 2 classes")
    names = [classes[i] for i in y.tolist()]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pairs = find_near_duplicates(features, paths=paths, splits=splits, labels=names, fingerprints=fingerprints,
                                 skip=skip_pairs, rule=rule)
    seconds["near_duplicates"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probabilities, judged, probe = _out_of_fold(features, y, classes=classes, pairs=pairs, paths=paths, seed=seed,
                                                passes=passes)
    issues, name = find_label_issues(probabilities, y.numpy(), paths=paths, splits=splits, classes=classes,
                                     judged=judged, method=method)
    seconds["label_issues"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outliers = find_outliers(features, paths=paths, splits=splits, labels=names, fingerprints=fingerprints)
    seconds["outliers"] = time.perf_counter() - t0
    exemplars = _exemplars(probabilities, y.numpy(), classes=classes, paths=paths, skip={i.path for i in issues})
    return DeepScan(issues, pairs, outliers, name, probe, n, seconds, exemplars=exemplars)


def _exemplars(probabilities: np.ndarray, labels: np.ndarray, *, classes, paths, skip: set[str], count: int = 3):
    out = {}
    for c, name in enumerate(classes):
        rows = [i for i in np.flatnonzero(labels == c).tolist() if paths[i] not in skip]
        rows.sort(key=lambda i: -probabilities[i, c])
        out[name] = [paths[i] for i in rows[:count]]
    return out


MAX_GROUP = 5  # copies of one photo kept in one fold; a bigger cluster is a crowd of look-alikes


def _copy_groups(group: np.ndarray) -> np.ndarray:
    """Cross-validation groups from near-duplicate clusters: a cluster of more than ``MAX_GROUP``
    images is not copies of one photo but look-alikes (it can hold a whole class, whose fold
    would then never have seen the class), so its images are folded one by one."""
    ids, counts = np.unique(group, return_counts=True)
    big = np.isin(group, ids[counts > MAX_GROUP])
    out = group.copy()
    out[big] = group.max(initial=-1) + 1 + np.flatnonzero(big)
    return out


def _out_of_fold(features, y, *, classes, pairs, paths, seed, passes):
    """Out-of-fold probabilities of the last pass, the rows they can judge, and the probe's figures.

    Pass 2 fits without every image the first pass's probes put in another class (weight 0:
    they still get out-of-fold probabilities). That is deliberately more than the final list:
    leaving out a few hard but correctly labelled images costs the probe little, while every
    wrong label left in pulls the classifier towards it. Its grid is the first pass's l2 and the
    two decades weaker, since the data only got cleaner. On the benchmark this lifted recall
    from 0.78-0.84 to 0.98-1.00 at equal precision (docs/scan.md).
    """
    from regraft.features.linear import cross_validate

    groups = torch.as_tensor(_copy_groups(clusters([p for p in pairs if p.same_label], paths)))
    cv = cross_validate(features, y, num_classes=len(classes), groups=groups, seed=seed, tol=TOL)
    probe = {"validation": f"cv{cv.folds}", "accuracy": cv.best.accuracy, "accuracy_std": cv.best.accuracy_std,
             "log_loss": cv.best.log_loss, "l2": cv.l2, "folds": cv.folds, "passes": 1, "left_out": 0}
    judged = ~cv.unseen.numpy()
    probabilities = cv.oof_probabilities.numpy()
    labels = y.numpy()
    for _ in range(passes - 1):
        suspects = np.flatnonzero(judged & (probabilities.argmax(axis=1) != labels))
        if len(suspects) == 0 or len(suspects) >= len(labels) // 2:
            break
        weight = torch.ones(len(labels), dtype=torch.float64)
        weight[torch.as_tensor(suspects)] = 0.0
        again = cross_validate(features, y, num_classes=len(classes), groups=groups, seed=seed, sample_weight=weight,
                               l2_grid=[cv.l2, cv.l2 / 10, cv.l2 / 100], tol=TOL)
        probabilities = again.oof_probabilities.numpy()
        judged = judged & ~again.unseen.numpy()
        probe["passes"] += 1
        probe["left_out"] = len(suspects)
    return probabilities, judged, probe
