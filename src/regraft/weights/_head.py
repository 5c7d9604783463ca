"""Whether the checkpoint's classifier may stay: only when its classes are known to be the user's.

A head of the right size says nothing about what its outputs mean: ImageNet's 1000 classes for a
1000-class folder, or another project's 3 classes for this one's 3. So a fitting classifier is
withheld unless the caller says it keeps its meaning (``keep_head=True``, ``--keep-head``) or the
weights are a regraft run whose ``model.json`` names the same classes in the same order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from regraft.errors import WeightsError
from regraft.weights._matching import HEAD_WITHHELD, Matched
from regraft.weights._report import HeadStatus

__all__ = ["run_classes", "head_outcome"]

log = logging.getLogger(__name__)

_CARD = "model.json"
_CARD_FORMAT = "regraft-run/"
_CARD_MAX_BYTES = 10_000_000


def run_classes(weights_file: Path | None) -> list[str] | None:
    """The class names of the regraft run ``weights_file`` belongs to (``model.json`` beside it), else None.

    The card is read as untrusted data: anything but a regraft model card naming its classes as
    a list of strings counts as "not a run".
    """
    if weights_file is None:
        return None
    card_path = weights_file.parent / _CARD
    try:
        if not card_path.is_file() or card_path.stat().st_size > _CARD_MAX_BYTES:
            return None
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("%s is not a readable model card (%s); the weights' classes are unknown", card_path, exc)
        return None
    if not isinstance(card, dict) or not str(card.get("format", "")).startswith(_CARD_FORMAT):
        return None
    classes = card.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return None
    return list(classes)


def _under(key: str, path: str) -> bool:
    return key == path or key.startswith(f"{path}.")


def _names(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    return f"[{shown}]"


def keeps_meaning(*, keep_head: bool, run: list[str] | None, classes: Sequence[str] | None) -> bool:
    """Whether the checkpoint's classifier keeps its meaning for the caller's classes."""
    return keep_head or (run is not None and classes is not None and run == list(classes))


def head_outcome(
    matched: Matched, *, head: str | None, head_keys: list[str], keep_head: bool,
    run: list[str] | None, classes: Sequence[str] | None,
) -> tuple[HeadStatus, str]:
    """The report's head status and reason; raises when ``keep_head`` was asked and cannot be honoured.

    Args:
        matched: the matching's decisions.
        head: the model's head path (None: the model has none).
        head_keys: the model's floating-point state-dict keys under the head.
        keep_head: the caller asked to keep the checkpoint's classifier.
        run: the classes of the regraft run the weights come from, when they do.
        classes: the caller's classes, in order, when known.

    Raises:
        WeightsError: ``keep_head`` was given but the checkpoint's classifier does not fill the head.
    """
    if head is None:
        return HeadStatus.NONE, "the model has no classifier head"
    dropped = [(k, why) for k, why in matched.skipped.items() if why.startswith("old head") and why != HEAD_WITHHELD]
    missing = [k for k in head_keys if k not in matched.assign]
    if keep_head and (dropped or missing):
        why = f"{dropped[0][0]}: {dropped[0][1]}" if dropped else f"nothing in the checkpoint for {missing[0]}"
        raise WeightsError(
            f"--keep-head: the checkpoint's classifier cannot fill the model's head '{head}' ({why}); "
            "drop --keep-head to train a new head"
        )
    if matched.head_loaded:
        part = f" ({len(missing)} of its tensors missing, e.g. {missing[0]})" if missing else ""
        if keep_head:
            return HeadStatus.KEPT, f"the checkpoint's classifier was loaded{part} (--keep-head)"
        return HeadStatus.KEPT, f"the weights are a regraft run trained on the same {len(run or [])} classes in the same order: its classifier was loaded{part}"
    if matched.head_withheld:
        fix = "the model's new head starts from its own initialisation (--keep-head loads it)"
        if run is not None and classes is not None:
            return HeadStatus.REPLACED, f"the weights are a regraft run trained on classes {_names(run)}, not {_names(list(classes))}; {fix}"
        return HeadStatus.REPLACED, f"the checkpoint's classifier fits, but what its classes mean is unknown; {fix}"
    if dropped:
        key, why = dropped[0]
        return HeadStatus.DROPPED, f"{why.removeprefix('old head: ')} ({key}); the model's new head is used"
    globbed = [(k, why) for k, why in matched.skipped.items() if why.startswith("--skip") and _under(matched.names.get(k, k), head)]
    if globbed:
        key, why = globbed[0]
        return HeadStatus.DROPPED, f"left out by {why} ({key}); the model's new head is used"
    return HeadStatus.NONE, "the checkpoint holds no classifier for the model's head; the model's new head is used"
