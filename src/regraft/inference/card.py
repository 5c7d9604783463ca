"""A run's model card (``model.json``) and other JSON files, read as untrusted data; no torch.

The ONNX runtime (torch-free) checks the ``model.json`` beside an ``.onnx`` file with the same
rules as :func:`regraft.inference.load_run`.

Example:
    >>> check_card({"classes": []}, where="model.json")
    Traceback (most recent call last):
    ...
    regraft.errors.RunError: model.json is damaged: 'architecture' needs 'zoo' and 'name' strings; restore it from a backup or train the run again
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from regraft.data.pixels import MAX_CHANNELS, PixelFormat
from regraft.errors import RunError
from regraft.runs import RunDir
from regraft.tasks.decide import thresholds_problem

__all__ = ["read_run_json", "read_card", "check_card", "card_problem", "pixel_format"]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "random")


def read_run_json(run: RunDir, name: str) -> Any:
    """A JSON file of a run, parsed; one-line RunErrors for a missing, unreadable or invalid file."""
    path = run.path / name
    if not path.is_file():
        raise RunError(f"{run.path} is not a finished run: {name} is missing")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RunError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    except UnicodeDecodeError:
        raise RunError(f"{path} is damaged: not UTF-8 text; restore it from a backup or train the run again") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RunError(f"{path} is damaged: invalid JSON ({exc}); restore it from a backup or train the run again") from None


def read_card(run: RunDir) -> dict[str, Any]:
    """``model.json`` of a run, checked by :func:`check_card`."""
    card = read_run_json(run, "model.json")
    check_card(card, where=run.path / "model.json")
    return card


def check_card(card: Any, *, where: str | Path) -> None:
    """Check that a model card has what loading needs, with sane types and ranges.

    Raises:
        RunError: names ``where`` and the first field that is missing or wrong.
    """
    problem = card_problem(card)
    if problem:
        raise RunError(f"{where} is damaged: {problem}; restore it from a backup or train the run again")


def card_problem(card: Any) -> str | None:
    """What is wrong with a model card (the first problem found), or None."""
    if not isinstance(card, dict):
        return f"expected a JSON object, got {type(card).__name__}"
    arch = card.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("zoo"), str) or not isinstance(arch.get("name"), str):
        return "'architecture' needs 'zoo' and 'name' strings"
    if not isinstance(arch.get("head_hidden") or [], list) or not all(_is_int(v) and v > 0 for v in arch.get("head_hidden") or []):
        return "'architecture.head_hidden' must be a list of positive widths"
    if not isinstance(arch.get("surgery") or [], list) or not isinstance(arch.get("frozen_bn") or [], list):
        return "'architecture.surgery' and 'architecture.frozen_bn' must be lists"
    classes = card.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a non-empty list of class names"
    if not _is_int(card.get("num_classes")) or card["num_classes"] != len(classes):
        return f"'num_classes' is {card.get('num_classes')!r} but 'classes' names {len(classes)}"
    pre = card.get("preprocessing")
    if not isinstance(pre, dict):
        return "'preprocessing' is missing"
    size = pre.get("input_size")
    if not isinstance(size, list) or len(size) != 3 or not all(_is_int(v) and v > 0 for v in size):
        return f"'preprocessing.input_size' must be [C, H, W] with positive integers, got {size!r}"
    channels = size[0]
    problem = _pixels_problem(pre, channels)
    if problem:
        return problem
    for key in ("mean", "std"):
        values = pre.get(key)
        if not isinstance(values, list) or len(values) != channels or not all(_is_number(v) for v in values):
            return f"'preprocessing.{key}' must be {channels} numbers (one per input channel), got {values!r}"
    if min(pre["std"]) <= 0:
        return f"'preprocessing.std' must be positive, got {pre['std']}"
    if pre.get("interpolation") not in _INTERPOLATIONS:
        return f"'preprocessing.interpolation' must be one of {', '.join(_INTERPOLATIONS)}, got {pre.get('interpolation')!r}"
    if not _is_number(pre.get("crop_pct")) or not 0 < pre["crop_pct"] <= 1:
        return f"'preprocessing.crop_pct' must be in (0, 1], got {pre.get('crop_pct')!r}"
    return thresholds_problem(card)  # the task, and a multi-label card's thresholds


def _pixels_problem(pre: dict[str, Any], channels: int) -> str | None:
    """How images are read (``channels``, ``bit_depth``, ``mode``): absent in cards before
    in_chans (then 3 channels at 8 bits), consistent with ``input_size`` when present."""
    if channels > MAX_CHANNELS:
        return f"'preprocessing.input_size' names {channels} channels, more than {MAX_CHANNELS}"
    if "channels" in pre and pre["channels"] != channels:
        return f"'preprocessing.channels' is {pre['channels']!r} but 'input_size' starts with {channels}"
    depth = pre.get("bit_depth", 8)
    if depth not in (8, 16) or isinstance(depth, bool):
        return f"'preprocessing.bit_depth' must be 8 or 16, got {depth!r}"
    mode = PixelFormat(channels, depth).mode
    if "mode" in pre and pre["mode"] != mode:
        return f"'preprocessing.mode' is {pre['mode']!r} but {channels} channel(s) at {depth} bits read as {mode!r}"
    return None


def pixel_format(card: dict[str, Any]) -> PixelFormat:
    """How a checked card's images are read: its channels and bits (cards before in_chans: 8-bit RGB)."""
    pre = card["preprocessing"]
    return PixelFormat(int(pre["input_size"][0]), int(pre.get("bit_depth", 8)))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
