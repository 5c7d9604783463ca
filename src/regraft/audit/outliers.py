"""Outliers: images far from every other image, and near-uniform ones.

An image of another domain (a screenshot among photographs), a blank frame or a file whose
content is garbage has no close neighbour in feature space, whatever its class. The score is
one minus the mean cosine similarity (centred features) to its ``neighbours`` nearest images.
An image is flagged when both

- its score is at least ``alone`` (its nearest images are, on average, less than a quarter
  similar to it: alone in the folder), and
- its score stands out from the folder's, above the median by ``spread`` robust standard
  deviations (1.4826 × the median absolute deviation), so that a folder of very varied images
  does not flag its ordinary members.

On bench/deep_scan.py's photographs the planted page of text, printed text and colour wheel
scored 0.77-0.85 and the highest ordinary image 0.72 (median 0.28); a z-score alone put the
planted ones at only 2.3-2.7 robust deviations, among ordinary images of constructed data.
Near-uniform images (too little detail for any picture: :attr:`regraft.data.phash.Fingerprint.flat`)
are flagged unless a quarter or more of their class is near-uniform too (``flat_share``): a
blank frame among photographs is odd, the dark crops of a class of night-sky images are not (on
the benchmark 13 of 36 crops of the moon were near-uniform, its shadow side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from regraft.audit._neighbours import nearest, unit_rows
from regraft.data.phash import Fingerprint

__all__ = ["Outlier", "find_outliers", "FAR", "FLAT"]

FAR = "far from every other image"
FLAT = "near-uniform (blank, dark or overexposed)"


@dataclass(frozen=True)
class Outlier:
    """An image unlike the rest: ``score`` 0 (typical) .. 2 (opposite of its neighbours)."""

    path: str
    split: str
    label: str
    score: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def find_outliers(
    features: torch.Tensor,
    *,
    paths: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str],
    fingerprints: Sequence[Fingerprint | None] | None = None,
    neighbours: int = 5,
    alone: float = 0.75,
    spread: float = 2.0,
    flat_share: float = 0.25,
) -> list[Outlier]:
    """The outliers, highest score first (near-uniform images first of all).

    Args:
        features: ``(n, d)`` embeddings. paths, splits, labels: per image.
        fingerprints: per image, for the near-uniform check (None: features only).
        neighbours: how many nearest images an image is compared with.
        alone: the least score flagged. spread: how many robust standard deviations above the
            folder's median a score must be. flat_share: the share of near-uniform images in a
            class from which they are that class's normal.
    """
    n = features.shape[0]
    if n < 3:
        return []
    sims, _ = nearest(unit_rows(features), k=neighbours)
    score = (1.0 - sims.mean(dim=1)).numpy().astype(np.float64)
    median = float(np.median(score))
    mad = 1.4826 * float(np.median(np.abs(score - median)))
    far = (score >= alone) & (score > median + spread * max(mad, 1e-6))
    flat = np.array([f is not None and f.flat for f in fingerprints]) if fingerprints is not None else np.zeros(n, bool)
    names = np.asarray(labels, dtype=object)
    for name in set(names[flat].tolist()):
        members = names == name
        if flat[members].mean() >= flat_share:
            flat &= ~members
    out = [Outlier(paths[i], splits[i], labels[i], round(float(score[i]), 4), FLAT if flat[i] else FAR)
           for i in np.flatnonzero(far | flat).tolist()]
    return sorted(out, key=lambda o: (o.reason != FLAT, -o.score, o.path))
