"""Model surgery: see a network by dotted path, change it by path, and know at once if it broke.

Paths are the names ``named_modules()`` gives (``layer4.1.conv2``, ``classifier.6``);
``classifier[6]`` works too, and aliases: ``head`` (the final classifier), VGG's ``fc1``/``fc2``.
Every operation works in place; with an input size known (given, or a zoo model's own) each
change is followed by a dry forward pass and undone if the model no longer runs, with a
:class:`~regraft.errors.ShapeError` that names the first module whose input did not fit.
:func:`check_output_width` is the model contract (``num_classes`` logits out), checked after
every change to the network and when a run is loaded.

The recipe's ``surgery:`` list runs through :func:`apply` (see ``docs/surgery.md``).

Example:
    >>> import torchvision
    >>> from regraft import surgery
    >>> model = torchvision.models.vgg16()
    >>> surgery.find_head(model)
    'classifier.6'
    >>> diff = surgery.apply(model, [
    ...     {"op": "replace_head", "num_classes": 10},
    ...     {"op": "delete", "path": "classifier.2"},
    ... ], input_size=(3, 32, 32))
    >>> surgery.validate(model, input_size=(3, 32, 32))
    (2, 10)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from regraft.errors import SurgeryError
from regraft.surgery.contract import check_output_width
from regraft.surgery.diff import SurgeryDiff, snapshot
from regraft.surgery.graft import Grafted, extract
from regraft.surgery.heads import HeadInit, find_head, replace_head
from regraft.surgery.inspect import ModuleInfo, describe
from regraft.surgery.names import aliases, get, resolve_path
from regraft.surgery.ops import delete, do_op, insert_after, insert_before, replace
from regraft.surgery.shapes import _check_input_size, validate
from regraft.surgery.specs import suggest

__all__ = [
    "get", "resolve_path", "aliases", "replace", "insert_before", "insert_after", "delete", "extract",
    "find_head", "replace_head", "apply", "validate", "check_output_width", "describe", "SurgeryDiff", "ModuleInfo",
    "HeadInit", "Grafted", "OPS",
]

log = logging.getLogger(__name__)

# op -> (required keys, optional keys, an example for error messages)
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "replace_head": (("num_classes",), ("hidden", "dropout", "init", "head"),
                     "{op: replace_head, num_classes: 10, hidden: [256], dropout: 0.3}"),
    "replace": (("path", "module"), (), "{op: replace, path: fc, module: {type: Linear, out_features: 256}}"),
    "insert_before": (("path", "module"), ("name",), "{op: insert_before, path: classifier.6, module: {type: Dropout, p: 0.3}}"),
    "insert_after": (("path", "module"), ("name",), "{op: insert_after, path: classifier.6, module: {type: ReLU}}"),
    "delete": (("path",), (), "{op: delete, path: classifier.2}"),
    "extract": (("upto",), ("head", "num_classes"), "{op: extract, upto: layer3, num_classes: 10}"),
}


# words people reach for -> the op that does it
_SYNONYMS = {"remove": "delete", "del": "delete", "drop": "delete", "add": "insert_after", "append": "insert_after",
             "insert": "insert_after", "head": "replace_head", "new_head": "replace_head", "truncate": "extract"}


def _parse_op(index: int, raw: Any) -> tuple[str, dict[str, Any]]:
    """Check one recipe op against :data:`OPS`; one-line errors name the op's index and the fix."""
    names = ", ".join(OPS)
    if not isinstance(raw, dict):
        raise SurgeryError(f"surgery op {index}: expected a mapping like {{op: delete, path: classifier.2}}; got {raw!r}")
    args = {str(k): v for k, v in raw.items()}
    kind = args.pop("op", None)
    if kind is None:
        raise SurgeryError(f"surgery op {index} has no 'op': add one of {names}")
    if kind not in OPS:
        hint = f"did you mean '{_SYNONYMS[kind]}'? " if kind in _SYNONYMS else suggest(str(kind), tuple(OPS))
        raise SurgeryError(f"surgery op {index}: unknown op '{kind}'; {hint}use one of {names}")
    required, optional, example = OPS[kind]
    for key in args:
        if key not in required + optional:
            raise SurgeryError(
                f"surgery op {index} ({kind}): unknown key '{key}'; {suggest(key, required + optional)}its keys: {', '.join(required + optional)}"
            )
    for key in required:
        if args.get(key) is None:
            raise SurgeryError(f"surgery op {index} ({kind}): missing '{key}'; e.g. {example}")
    return kind, args


def _label(kind: str, args: dict[str, Any]) -> str:
    target = args.get("path") or args.get("upto") or args.get("head")
    return f"{kind} {target}" if target else kind


def apply(model: nn.Module, ops: Sequence[dict[str, Any]], *, input_size: Sequence[int]) -> SurgeryDiff:
    """Run a recipe's ``surgery:`` list on ``model``, in place, checking after every op.

    Ops (see ``docs/surgery.md``)::

        {op: replace_head, num_classes: 10, hidden: [256], dropout: 0.3, init: xavier_uniform}
        {op: replace, path: fc, module: {type: Linear, out_features: 256}}
        {op: insert_before | insert_after, path: classifier.6, module: {type: ReLU}}
        {op: delete, path: classifier.2}
        {op: extract, upto: layer3, num_classes: 10}    # model becomes Grafted(trunk, head)

    Module specs infer ``in_features`` / ``in_channels`` / ``num_features`` from the shape at
    that point. If any op fails, every op of the list is undone before the error is raised.

    Args:
        model: the network, changed in place.
        ops: the ordered ops.
        input_size: ``(C, H, W)`` for shape inference and the dry passes.

    Returns:
        A :class:`SurgeryDiff` (paths added, removed, replaced, moved; parameter counts).

    Raises:
        SurgeryError: a malformed op (its index, the key and the fix are named).
        ShapeError: an op left a model that does not run (the op and the module are named).
    """
    size = _check_input_size(input_size)
    if isinstance(ops, (str, bytes, dict)) or not isinstance(ops, Sequence):
        raise SurgeryError(f"surgery must be a list of ops like [{{op: delete, path: classifier.2}}]; got {ops!r}")
    parsed = [_parse_op(i, raw) for i, raw in enumerate(ops)]
    before = snapshot(model)
    try:
        shape_before = validate(model, input_size=size)
    except SurgeryError as exc:
        raise type(exc)(f"before surgery: {exc}") from exc
    undos: list[Any] = []
    lines: list[str] = []
    try:
        for i, (kind, args) in enumerate(parsed):
            try:
                line, undo = do_op(model, kind, args, size)
                undos.append(undo)
                validate(model, input_size=size)
            except SurgeryError as exc:
                raise type(exc)(f"surgery op {i} ({_label(kind, args)}): {exc}") from exc
            lines.append(line)
            log.info("surgery op %d: %s", i, line)
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise
    shape_after = validate(model, input_size=size)
    if len(shape_after) != 2:
        log.warning("after surgery the model outputs shape %s, not (batch, classes)", shape_after)
    return SurgeryDiff.between(
        before, snapshot(model), ops=lines, out_shape_before=list(shape_before), out_shape_after=list(shape_after)
    )
