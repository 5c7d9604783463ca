"""``regraft scan DATA --model M``: the byte-level scan's readable images, embedded and analysed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from regraft.audit.analysis import DeepScan, analyse
from regraft.data.fixes import Fix
from regraft.errors import DataError

__all__ = ["deep_scan", "fix_rows"]


def deep_scan(
    report: Any,
    *,
    model: str,
    weights: str = "DEFAULT",
    img_size: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    notify: Callable[[str], None] | None = None,
) -> DeepScan:
    """Embed every readable image of a scanned folder once and analyse the embeddings.

    Args:
        report: from ``regraft.data.scan(..., fingerprints=True)`` (its splits, content hashes
            and perceptual hashes; a report without hashes judges duplicates by features only).
        model, weights, img_size, batch_size, device, workers, cache_dir: as for
            :func:`regraft.audit.embed.embed_images`.
        seed: seeds the cross-validation folds.
        notify: told one line per step.

    Returns:
        A :class:`~regraft.audit.analysis.DeepScan` with ``model`` and the embedding time set.

    Raises:
        DataError: fewer than 2 readable images in 2 classes.
    """
    from regraft.audit.embed import embed_images

    splits = report.splits
    if splits is None:
        raise DataError("the deep scan needs the scan's splits; call regraft.data.scan(...) first")
    rows = [(split, s) for split in ("train", "val") for s in getattr(splits, split) if s.path in report.digests]
    if len(rows) < 2:
        raise DataError(f"{splits.root}: {len(rows)} readable image(s); the deep scan needs at least 2 in 2 classes")
    paths = [s.path for _, s in rows]
    embeddings = embed_images(paths, model=model, weights=weights, img_size=img_size, batch_size=batch_size,
                              device=device, workers=workers, cache_dir=cache_dir,
                              digests=[report.digests[p] for p in paths], notify=notify)
    prints = [report.fingerprints.get(p) for p in paths] if report.fingerprints else None
    identical = {frozenset(pair) for group in report.duplicates for pair in _pairs(group)}
    t0 = time.perf_counter()
    result = analyse(embeddings.features, [s.label for _, s in rows], classes=splits.classes, paths=paths,
                     splits=[split for split, _ in rows], fingerprints=prints, skip_pairs=identical, seed=seed)
    result.model = {**embeddings.model, "computed": embeddings.computed, "reused": embeddings.reused}
    result.seconds = {"embed": embeddings.seconds, **result.seconds, "analysis": time.perf_counter() - t0}
    return result


def _pairs(group: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(group) for b in group[i + 1 :]]


def fix_rows(result: DeepScan) -> list[Fix]:
    """The fixes file's rows: one per finding, with the action regraft would take by default.

    Label issues: ``exclude`` (leaving a doubtful image out costs less than filing it under a
    guess; change it to ``relabel`` to accept the suggestion). A near-duplicate pair: exclude
    the validation copy of a leak, else the second image. Outliers: ``keep`` (rare but valid
    images look like outliers too), listed for review. Each path appears once, first finding first.
    """
    rows: dict[str, Fix] = {}
    for issue in result.label_issues:
        rows.setdefault(issue.path, Fix(issue.path, issue.given, issue.suggested, "exclude",
                                        f"label issue: p({issue.given})={issue.given_probability:.2f}, "
                                        f"p({issue.suggested})={issue.suggested_probability:.2f}"))
    for pair in result.near_duplicates:
        drop, other = (pair.b, pair.a) if not pair.leak or pair.split_b == "val" else (pair.a, pair.b)
        label = pair.label_b if drop == pair.b else pair.label_a
        kind = "leak: near-duplicate across train and validation" if pair.leak else "near-duplicate"
        rows.setdefault(drop, Fix(drop, label, "", "exclude", f"{kind} of {other} (similarity {pair.similarity:.2f})"))
    for outlier in result.outliers:
        rows.setdefault(outlier.path, Fix(outlier.path, outlier.label, "", "keep", f"outlier: {outlier.reason}"))
    return list(rows.values())
