"""The run's data findings: the deep scan on the probe's cached features (issue 20, item 3).

When a run fits the probe it has just embedded every training and validation image with the
frozen trunk. Those features are the deep scan's embeddings (``regraft.audit``), so the run can
say which images look mislabelled and which validation images copy a training image, with no
extra pass over the images: ``RUN/data_findings.json``, the "data" section of report.html, and
their totals in ``summary.json``'s ``data``.

Rows and paths: the training cache has one row per training sample (an unreadable file's row
holds the features of the image that stood in for it, so it is left out here); the validation
cache has one row per readable validation image, in order. Which files were unreadable is what
the run already knows: ``skipped_files.txt``, written by every data-loading process. Multi-label
runs are not analysed (a given label there is a set; the scan's rules are for one class per
image): the run says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from regraft.audit.findings import FINDINGS_FILE, run_findings, summary_counts
from regraft.errors import RegraftError
from regraft.runs import RunDir
from regraft.training.probe import ProbeOutcome

__all__ = ["write_data_findings"]

log = logging.getLogger(__name__)


def write_data_findings(run: RunDir, probe: ProbeOutcome, *, train_dataset: Any, val_dataset: Any | None,
                        classes: Sequence[str], multilabel: bool,
                        seed: int = 0, notify: Callable[[str], None] = log.info) -> dict[str, int] | None:
    """Analyse the probe's features, write ``data_findings.json`` and return its totals.

    Returns:
        ``{"label_issues": n, "leaks": m}`` for ``summary.json``, or None when nothing was
        analysed (a multi-label run, features not kept, rows that cannot be matched to files).
    """
    if multilabel:
        notify("data findings: not computed for multi-label runs (regraft scan --model checks one class per image)")
        return None
    if probe.train_features is None or probe.train_targets is None:
        return None
    skipped = _skip_log(run)
    train = _rows(train_dataset, probe.train_features, probe.train_targets, skipped)
    val = _rows(val_dataset, probe.val_features, probe.val_targets, skipped) if val_dataset is not None and len(val_dataset) else ([], None, None)
    if train is None or val is None:
        log.warning("data findings skipped: the cached rows do not match the files (unreadable images changed the count)")
        return None
    (train_paths, tx, ty), (val_paths, vx, vy) = train, val
    if vx is None:
        vx, vy = tx[:0], ty[:0]
    try:
        findings = run_findings(tx, ty, vx, vy, classes=list(classes), train_paths=train_paths, val_paths=val_paths, seed=seed)
    except RegraftError as exc:  # the run itself is fine: say why the section is missing
        notify(f"data findings skipped: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - a fault in this extra must not cost the user the trained model
        log.warning("data findings failed (%s: %s); the run goes on without them", type(exc).__name__, exc, exc_info=True)
        notify(f"data findings skipped: {type(exc).__name__}: {exc}")
        return None
    run.write_json(FINDINGS_FILE, findings)
    counts = summary_counts(findings)
    notify(f"data findings: {counts['label_issues']} suspected label issue(s), {counts['leaks']} near-duplicate "
           f"pair(s) across train and validation ({FINDINGS_FILE}; 'regraft scan DATA --model M' for the whole list)")
    return counts


def _skip_log(run: RunDir) -> set[str]:
    path = run.path / "skipped_files.txt"
    try:
        return {line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line}
    except OSError:
        return set()


def _rows(dataset: Any, features: torch.Tensor | None, targets: torch.Tensor | None, skipped: set[str]
          ) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
    """``(paths, features, targets)`` of the readable images, or None when rows and files disagree."""
    if features is None or targets is None:
        return None
    paths = [s.path for s in dataset.samples]
    readable = [i for i, p in enumerate(paths) if p not in skipped]
    if len(features) == len(paths):  # one row per sample: leave out the stand-ins
        keep = torch.as_tensor(readable, dtype=torch.long)
        return [paths[i] for i in readable], features[keep], targets[keep]
    if len(features) == len(readable):  # the unreadable ones were dropped, in order
        return [paths[i] for i in readable], features, targets
    return None
