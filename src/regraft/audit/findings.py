"""The run report's "data" section (issue 20, item 3): the deep scan on a run's cached features.

When training caches the frozen trunk's features anyway, they are the deep scan's embeddings
for free: :func:`run_findings` analyses the training images' un-augmented view and the
validation images together (no extra pass over the images) and returns what ``RUN/data_findings.json``
holds: the most suspect label issues and the near-duplicate pairs across train and validation,
with their totals. ``report.html`` shows the file when it is there (``regraft.report`` renders
it); :func:`summary_counts` gives the two numbers for ``summary.json``.

Wiring (training's side, one call after the caches are built)::

    findings = run_findings(train_cache.features[0], train_cache.labels, val_cache.features[0],
                            val_cache.labels, classes=classes, train_paths=[s.path for s in train_ds.samples],
                            val_paths=[s.path for s in val_ds.samples])
    run.write_json("data_findings.json", findings)
    summary["data"] = summary_counts(findings)

Without perceptual hashes near-duplicates are judged by features alone (``DuplicateRule.features_only``),
which finds near-identical copies but misses most resized or re-encoded ones (docs/scan.md);
passing ``fingerprints`` (per image, train then validation) lifts that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from regraft.audit.analysis import analyse
from regraft.data.phash import Fingerprint
from regraft.errors import DataError

__all__ = ["run_findings", "summary_counts", "FINDINGS_FILE", "TOP"]

FINDINGS_FILE = "data_findings.json"
TOP = 20  # label issues and leaks kept in the file (the totals count them all)


def run_findings(
    train_features: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    val_features: torch.Tensor,
    val_labels: torch.Tensor | Sequence[int],
    *,
    classes: Sequence[str],
    train_paths: Sequence[str],
    val_paths: Sequence[str],
    fingerprints: Sequence[Fingerprint | None] | None = None,
    top: int = TOP,
    seed: int = 0,
) -> dict[str, Any]:
    """Suspected label issues and train/validation near-duplicates of a run, as a JSON-ready dict.

    Args:
        train_features, val_features: ``(n, d)`` cached features (the training images'
            un-augmented view; pooled features, flattened if they are maps).
        train_labels, val_labels: class indices. classes: class names.
        train_paths, val_paths: one path per row, in the caches' order.
        fingerprints: optional perceptual hashes, train rows then validation rows.
        top: how many of each to keep. seed: seeds the folds.

    Returns:
        ``{"images", "label_issues", "label_issues_total", "leaks", "leaks_total", "label_method",
        "probe", "duplicates_by", "seconds"}``.

    Raises:
        DataError: the rows and paths disagree in number.
    """
    if len(train_paths) != train_features.shape[0] or len(val_paths) != val_features.shape[0]:
        raise DataError(f"run_findings needs one path per cached row: {train_features.shape[0]} + {val_features.shape[0]} "
                        f"rows, {len(train_paths)} + {len(val_paths)} paths")
    x = torch.cat([train_features.flatten(1), val_features.flatten(1)]).float()  # (n, ...) -> (n, d), also for n = 0
    y = torch.cat([torch.as_tensor(train_labels), torch.as_tensor(val_labels)]).long()
    splits = ["train"] * len(train_paths) + ["val"] * len(val_paths)
    result = analyse(x, y, classes=classes, paths=list(train_paths) + list(val_paths), splits=splits,
                     fingerprints=fingerprints, seed=seed)
    leaks = result.leaks
    return {
        "images": result.images,
        "label_issues": [i.to_dict() for i in result.label_issues[:top]],
        "label_issues_total": len(result.label_issues),
        "leaks": [p.to_dict() for p in leaks[:top]],
        "leaks_total": len(leaks),
        "label_method": result.method,
        "probe": result.probe,
        "duplicates_by": "perceptual hash and features" if fingerprints is not None else "features only",
        "seconds": round(sum(result.seconds.values()), 3),
    }


def summary_counts(findings: dict[str, Any]) -> dict[str, int]:
    """``{"label_issues": n, "leaks": m}`` for ``summary.json``."""
    return {"label_issues": int(findings.get("label_issues_total", 0)), "leaks": int(findings.get("leaks_total", 0))}
