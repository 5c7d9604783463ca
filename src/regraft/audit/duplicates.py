"""Near-duplicate pairs: perceptual hashes that match, confirmed by the features.

On bench/deep_scan.py's photographs neither signal does it alone. The features of a copy
resized to half size or saved at JPEG quality 25 moved a long way (cosine similarity of centred
features 0.57 to 0.96), while crops of the same texture or of black sky reached 0.99 without
being copies. The hashes of resized and re-encoded copies stayed within 4 of 64 bits, and with
the centre-crop hashes (:meth:`regraft.data.phash.Fingerprint.distance`) cropped copies within
8, but a few unrelated low-detail pairs came as close. So a pair is reported when

- its hashes are at most ``hash_close`` bits apart, and
- its features agree (cosine similarity of centred features at least ``similar``), and
- neither image is near-uniform (:attr:`~regraft.data.phash.Fingerprint.flat`: a blank
  patch's hash is noise).

On the benchmark this found all 40 planted pairs with no false one, where a cosine threshold
alone and a hash alone each paid for recall with false pairs (docs/scan.md). Candidates are
all pairs within ``hash_close`` (every pair is compared up to ``MAX_ALL_PAIRS`` images; past
that, each image's ``neighbours`` nearest in feature space). Without hashes (a training run's
cached features) a pair needs ``features_only`` similarity, which misses most resized copies;
and since features alone cannot tell a copy from a look-alike, an image with more than
``crowd`` neighbours that close is in a crowd of look-alikes (a texture, dark frames, or a trunk
that sees little difference), whose pairs are reported only when virtually identical
(``identical``): so a crowd does not flood the list, while an exact copy inside it is still found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from regraft.audit._neighbours import nearest, unit_rows
from regraft.data.phash import Fingerprint, distance_matrix

__all__ = ["NearDuplicate", "find_near_duplicates", "DuplicateRule", "clusters"]


MAX_ALL_PAIRS = 20_000  # images up to which every pair's hashes are compared


@dataclass(frozen=True)
class DuplicateRule:
    """Thresholds of the pair rule (see the module doc); cosine similarity of centred features."""

    similar: float = 0.5
    hash_close: int = 8
    features_only: float = 0.97  # without hashes
    neighbours: int = 20
    crowd: int = 3  # without hashes: more neighbours than this at features_only is a crowd of look-alikes
    identical: float = 0.999  # without hashes: a pair inside a crowd is reported from this similarity


@dataclass(frozen=True)
class NearDuplicate:
    """Two images that are copies of each other, as far as the evidence goes.

    ``leak`` when one is in train and the other in validation (every validation figure is
    inflated by it); ``same_label`` False when the two are filed under different classes.
    """

    a: str
    b: str
    similarity: float
    hash_distance: int | None
    split_a: str
    split_b: str
    label_a: str
    label_b: str

    @property
    def leak(self) -> bool:
        return self.split_a != self.split_b

    @property
    def same_label(self) -> bool:
        return self.label_a == self.label_b

    def to_dict(self) -> dict:
        return {**asdict(self), "leak": self.leak, "same_label": self.same_label}


def find_near_duplicates(
    features: torch.Tensor,
    *,
    paths: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str],
    fingerprints: Sequence[Fingerprint | None] | None = None,
    skip: set[frozenset[str]] | None = None,
    rule: DuplicateRule = DuplicateRule(),
) -> list[NearDuplicate]:
    """Pairs of near-duplicate images, leaks (train × validation) first, then most similar first.

    Args:
        features: ``(n, d)`` embeddings, one per image.
        paths, splits, labels: per image: its path, ``train``/``val`` and class name.
        fingerprints: per image, from :func:`regraft.data.phash.fingerprint` (None: features only).
        skip: pairs of paths not to report (identical files, already listed by the byte scan).
        rule: the thresholds.

    Returns:
        The pairs, each once (``a`` before ``b`` in path order).
    """
    n = features.shape[0]
    if n < 2:
        return []
    unit = unit_rows(features)
    pairs: dict[tuple[int, int], NearDuplicate] = {}
    for a, b in _candidates(unit, fingerprints, rule):
        if (a, b) in pairs:
            continue
        pair = _judge(a, b, float(unit[a] @ unit[b]), paths, splits, labels, fingerprints, rule)
        if pair is not None and (skip is None or frozenset((pair.a, pair.b)) not in skip):
            pairs[(a, b)] = pair
    return sorted(pairs.values(), key=lambda p: (not p.leak, -p.similarity, p.a, p.b))


def _candidates(unit: torch.Tensor, fingerprints, rule: DuplicateRule) -> list[tuple[int, int]]:
    """Index pairs ``a < b`` worth judging: close hashes, else (or also, past MAX_ALL_PAIRS) close features."""
    n = unit.shape[0]
    out: set[tuple[int, int]] = set()
    if fingerprints is not None and n <= MAX_ALL_PAIRS:
        usable = [i for i, f in enumerate(fingerprints) if f is not None and not f.flat]
        if len(usable) > 1:
            hashes = np.array([fingerprints[i].hashes for i in usable], dtype=np.uint64)
            for start in range(0, len(usable), 2048):
                close = distance_matrix(hashes[start : start + 2048], hashes) <= rule.hash_close
                for i, j in zip(*np.nonzero(close), strict=True):
                    a, b = usable[start + int(i)], usable[int(j)]
                    if a < b:
                        out.add((a, b))
        return sorted(out)
    sims, index = nearest(unit, k=rule.neighbours)
    floor = rule.similar if fingerprints is not None else rule.features_only
    close = sims >= floor
    crowded = close.sum(dim=1) > rule.crowd if fingerprints is None else torch.zeros(len(sims), dtype=torch.bool)
    for i, j in close.nonzero().tolist():
        b = int(index[i, j])
        if (crowded[i] or crowded[b]) and float(sims[i, j]) < rule.identical:
            continue
        out.add(tuple(sorted((i, b))))
    return sorted(out)


def _judge(a: int, b: int, similarity: float, paths, splits, labels, fingerprints, rule: DuplicateRule) -> NearDuplicate | None:
    distance = None
    if fingerprints is not None:
        fa, fb = fingerprints[a], fingerprints[b]
        if fa is None or fb is None or fa.flat or fb.flat:
            return None
        distance = fa.distance(fb)
        if distance > rule.hash_close or similarity < rule.similar:
            return None
    elif similarity < rule.features_only:
        return None
    first, second = (a, b) if paths[a] <= paths[b] else (b, a)
    return NearDuplicate(paths[first], paths[second], round(similarity, 4), distance, splits[first], splits[second],
                         labels[first], labels[second])


def clusters(pairs: Sequence[NearDuplicate], paths: Sequence[str]) -> np.ndarray:
    """A group id per image: images joined by a pair share one (union-find), others are alone."""
    position = {p: i for i, p in enumerate(paths)}
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        if pair.a in position and pair.b in position:
            parent[root(position[pair.a])] = root(position[pair.b])
    return np.array([root(i) for i in range(len(paths))], dtype=np.int64)
