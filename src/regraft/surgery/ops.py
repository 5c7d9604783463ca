"""Operations by dotted path: replace, insert before/after, delete; each undoable and checked.

Every op changes the model in place and, when an input size is known, runs a dry pass
afterwards; if the pass fails the op is undone before the :class:`ShapeError` is raised, so a
model is never left half-changed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from regraft.errors import SurgeryError
from regraft.surgery.diff import short
from regraft.surgery.graft import graft_in_place
from regraft.surgery.heads import find_head, replace_head
from regraft.surgery.names import get, parent_of, resolve_path
from regraft.surgery.paths import join_path, set_child
from regraft.surgery.shapes import default_input_size, model_device, probe, validate
from regraft.surgery.specs import build_module

__all__ = ["replace", "insert_before", "insert_after", "delete", "Undo", "checked", "do_op"]

log = logging.getLogger(__name__)

ModuleLike = Any  # an nn.Module or a module spec (dict, list, layer name)


class Undo:
    """Remembers the state of some modules so that an op can be taken back."""

    def __init__(self, *modules: nn.Module) -> None:
        self._saved = [(m, m.__class__, dict(m.__dict__), OrderedDict(m._modules)) for m in modules]

    def __call__(self) -> None:
        for module, cls, state, children in reversed(self._saved):
            module.__dict__.clear()
            module.__dict__.update(state)
            module._modules.clear()
            module._modules.update(children)
            module.__class__ = cls


def _materialise(
    model: nn.Module, module: ModuleLike, *, at: str, side: str, new_path: str, size: Sequence[int] | None
) -> nn.Module:
    """An nn.Module as is; a spec built with the shape arriving at ``at`` (its input or output)."""
    if isinstance(module, nn.Module):
        return module
    in_shape = None
    if size is not None:
        shapes = probe(model, [at], input_size=size).get(at)
        in_shape = shapes[0 if side == "input" else 1] if shapes else None
        in_shape = in_shape if isinstance(in_shape, tuple) else None
    built, _ = build_module(module, in_shape=in_shape, label=f"module '{new_path}'")
    device, dtype = model_device(model)
    return built.to(device=device, dtype=dtype)


def _is_numbered(seq: nn.Sequential) -> bool:
    return list(seq._modules) == [str(i) for i in range(len(seq._modules))]


def _place(parent: nn.Module, key: str, parent_path: str, *, after: bool, name: str | None) -> tuple[str, bool]:
    """Where an inserted module goes: (its path, whether the target gets wrapped)."""
    if not isinstance(parent, nn.Sequential):
        return join_path(parent_path, key, "1" if after else "0"), True
    keys = list(parent._modules)
    index = keys.index(key) + (1 if after else 0)
    if _is_numbered(parent) and name is None:
        return join_path(parent_path, str(index)), False
    return join_path(parent_path, name or f"inserted_{index}"), False


def _insert(model: nn.Module, path: str, module: ModuleLike, *, after: bool, name: str | None, size: Sequence[int] | None) -> tuple[str, Undo]:
    parent, key, path = parent_of(model, path)
    parent_path = path.rpartition(".")[0]
    new_path, wrap = _place(parent, key, parent_path, after=after, name=name)
    if name is not None and name in parent._modules and not wrap:
        raise SurgeryError(f"'{join_path(parent_path, name)}' already exists; pick another name=")
    new = _materialise(model, module, at=path, side="output" if after else "input", new_path=new_path, size=size)
    undo = Undo(parent)
    target = parent._modules[key]
    if wrap:
        set_child(parent, key, nn.Sequential(target, new) if after else nn.Sequential(new, target))
        log.info("'%s' is not inside an nn.Sequential: wrapped it, now '%s' with the new module at '%s'",
                 path, join_path(path, "0" if after else "1"), new_path)
    else:
        items = list(parent._modules.items())
        index = [k for k, _ in items].index(key) + (1 if after else 0)
        new_key = new_path.rpartition(".")[2]
        items.insert(index, (new_key, new))
        if _is_numbered(parent) and name is None:
            items = [(str(i), m) for i, (_, m) in enumerate(items)]
        parent._modules.clear()
        parent._modules.update(items)
    return new_path, undo


def _replace(model: nn.Module, path: str, module: ModuleLike, *, size: Sequence[int] | None) -> tuple[nn.Module, Undo]:
    parent, key, path = parent_of(model, path)
    new = _materialise(model, module, at=path, side="input", new_path=path, size=size)
    undo = Undo(parent)
    old = parent._modules[key]
    set_child(parent, key, new)
    return old, undo


def _delete(model: nn.Module, path: str) -> tuple[nn.Module, Undo]:
    parent, key, path = parent_of(model, path)
    undo = Undo(parent)
    old = parent._modules[key]
    if isinstance(parent, nn.Sequential):
        numbered = _is_numbered(parent)
        items = [(k, m) for k, m in parent._modules.items() if k != key]
        if numbered:
            items = [(str(i), m) for i, (_, m) in enumerate(items)]
        parent._modules.clear()
        parent._modules.update(items)
    else:
        set_child(parent, key, nn.Identity())
        log.info("'%s' is not inside an nn.Sequential: replaced it by nn.Identity", path)
    return old, undo


def checked(model: nn.Module, undo: Undo, *, input_size: Sequence[int] | None, check: bool) -> None:
    """Validate after an op when an input size is known; undo the op if the model broke."""
    size = input_size or default_input_size(model)
    if not check or size is None:
        return
    try:
        validate(model, input_size=size)
    except SurgeryError:
        undo()
        raise


def replace(model: nn.Module, path: str, module: ModuleLike, *, input_size: Sequence[int] | None = None, check: bool = True) -> nn.Module:
    """Put ``module`` at ``path``, in place.

    Args:
        model: the network, changed in place.
        path: where (``fc``, ``classifier[6]``, ``fc1``).
        module: an ``nn.Module``, or a spec (``{"type": "Linear", "out_features": 256}``) whose
            input width is read from the tensor arriving at ``path``.
        input_size: ``(C, H, W)`` for spec inference and the check (default: a zoo model's).
        check: run a dry pass afterwards; on failure the change is undone.

    Returns:
        The module that was there.

    Raises:
        SurgeryError: no such path, or a bad spec. ShapeError: the model no longer runs.

    Example:
        >>> import torchvision
        >>> old = replace(torchvision.models.resnet18(), "fc", {"type": "Linear", "out_features": 10})
    """
    old, undo = _replace(model, path, module, size=input_size or default_input_size(model))
    checked(model, undo, input_size=input_size, check=check)
    return old


def insert_before(model: nn.Module, path: str, module: ModuleLike, *, name: str | None = None,
                  input_size: Sequence[int] | None = None, check: bool = True) -> str:
    """Insert ``module`` just before the module at ``path``, in place.

    Inside an ``nn.Sequential`` the module is inserted (numbered Sequentials are renumbered, so
    later paths shift by one); anywhere else the target is wrapped as ``Sequential(new, target)``
    at its own path (the target becomes ``path.1``) and this is logged.

    Args:
        model: the network, changed in place.
        path: the module the new one runs before.
        module: an ``nn.Module`` or a spec (input width inferred from the tensor arriving there).
        name: the child name in a Sequential with named children (default ``inserted_<i>``).
        input_size: ``(C, H, W)`` for spec inference and the check (default: a zoo model's).
        check: run a dry pass afterwards; on failure the change is undone.

    Returns:
        The inserted module's path.

    Raises:
        SurgeryError: no such path, or a bad spec. ShapeError: the model no longer runs.
    """
    new_path, undo = _insert(model, path, module, after=False, name=name, size=input_size or default_input_size(model))
    checked(model, undo, input_size=input_size, check=check)
    return new_path


def insert_after(model: nn.Module, path: str, module: ModuleLike, *, name: str | None = None,
                 input_size: Sequence[int] | None = None, check: bool = True) -> str:
    """Insert ``module`` just after the module at ``path``, in place.

    Inside an ``nn.Sequential`` the module is inserted; anywhere else the target is wrapped as
    ``Sequential(target, new)`` at its own path (the target becomes ``path.0``). Arguments,
    returns and errors as :func:`insert_before`; the spec's input is the target's output.

    Example:
        >>> import torchvision
        >>> insert_after(torchvision.models.vgg11(), "classifier.6", {"type": "ReLU"})
        'classifier.7'
    """
    new_path, undo = _insert(model, path, module, after=True, name=name, size=input_size or default_input_size(model))
    checked(model, undo, input_size=input_size, check=check)
    return new_path


def delete(model: nn.Module, path: str, *, input_size: Sequence[int] | None = None, check: bool = True) -> nn.Module:
    """Remove the module at ``path``, in place.

    From an ``nn.Sequential`` the module is removed (numbered Sequentials are renumbered, so
    later paths shift down by one: deleting VGG's ``classifier.2`` makes ``fc2``
    ``classifier.2``); anywhere else it is replaced by ``nn.Identity`` and this is logged.

    Args:
        model: the network, changed in place.
        path: the module to remove.
        input_size: ``(C, H, W)`` for the check (default: a zoo model's).
        check: run a dry pass afterwards; on failure the change is undone.

    Returns:
        The removed module.

    Raises:
        SurgeryError: no such path. ShapeError: the model no longer runs without it.
    """
    old, undo = _delete(model, path)
    checked(model, undo, input_size=input_size, check=check)
    return old


def do_op(model: nn.Module, kind: str, args: dict[str, Any], size: Sequence[int]) -> tuple[str, Callable[[], None]]:
    """Run one parsed recipe op (no check); returns (what it did, how to undo it)."""

    if kind == "replace_head":
        path = resolve_path(model, args["head"]) if args.get("head") else find_head(model)
        parent, key, path = parent_of(model, path)
        old = parent._modules[key]
        undo = Undo(parent, model) if parent is not model else Undo(model)
        replace_head(model, args["num_classes"], hidden=tuple(args.get("hidden") or ()), dropout=float(args.get("dropout") or 0.0),
                     init=args.get("init", "default"), head=path, input_size=size)
        return f"replace_head {path}: {short(old)} -> {short(get(model, path))}", undo
    if kind == "replace":
        old, undo = _replace(model, args["path"], args["module"], size=size)
        return f"replace {args['path']}: {short(old)} -> {short(get(model, args['path']))}", undo
    if kind in ("insert_before", "insert_after"):
        new_path, undo = _insert(model, args["path"], args["module"], after=kind == "insert_after", name=args.get("name"), size=size)
        return f"{kind} {args['path']}: {short(get(model, new_path))} at {new_path}", undo
    if kind == "delete":
        old, undo = _delete(model, args["path"])
        return f"delete {args['path']}: {short(old)}", undo
    undo = Undo(model)
    what = graft_in_place(model, upto=args["upto"], input_size=size, head=args.get("head"), num_classes=args.get("num_classes"))
    return f"extract upto {args['upto']}: {what}", undo
