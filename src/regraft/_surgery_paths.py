"""Dotted paths over ``nn.Module`` trees: parsing, lookup, parents, family aliases.

A path names a submodule the way ``named_modules()`` does (``layer4.1.conv2``,
``classifier.6``); ``classifier[6]`` and negative indices into ``nn.Sequential`` /
``nn.ModuleList`` (``classifier[-1]``) are accepted too, and ``""`` is the model itself. The
first component may be an alias (``head``, VGG's ``fc1``/``fc2``) when the model has no child
of that name: a real child always wins.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from typing import Any

from torch import nn

from regraft.errors import SurgeryError

__all__ = ["split_path", "join_path", "lookup", "get", "resolve_path", "parent_of", "set_child", "aliases"]

_BRACKET = re.compile(r"\[\s*(-?\d+)\s*\]")
_SEQUENCES = (nn.Sequential, nn.ModuleList)
# torchvision families whose classifier is a Sequential of Linear layers named fc1, fc2, ... in papers
_FC_ALIAS_FAMILIES = ("torchvision:VGG", "torchvision:AlexNet")


def split_path(path: str) -> list[str]:
    """``"classifier[6]"`` / ``"classifier.6"`` -> ``["classifier", "6"]``; ``""`` -> ``[]``."""
    if not isinstance(path, str):
        raise SurgeryError(f"a module path must be a string like 'classifier.6'; got {path!r}")
    text = _BRACKET.sub(r".\1", path.strip())
    if not text:
        return []
    parts = text.split(".")
    if any(not p for p in parts):
        raise SurgeryError(
            f"'{path}' is not a valid module path: empty component; write names joined by dots, "
            "e.g. 'layer4.1.conv2' or 'classifier[6]'"
        )
    return parts


def join_path(*parts: str) -> str:
    """Join path components, skipping empty ones (``join_path("", "fc") == "fc"``)."""
    return ".".join(p for p in parts if p)


def _child_key(module: nn.Module, part: str) -> str | None:
    """The key in ``module._modules`` that ``part`` names (a name, or an index into a sequence)."""
    if part in module._modules:
        return part
    if isinstance(module, _SEQUENCES) and re.fullmatch(r"-?\d+", part):
        keys = list(module._modules)
        index = int(part)
        if -len(keys) <= index < len(keys):
            return keys[index]
    return None


def _missing(model: nn.Module, path: str, done: list[str], part: str, module: nn.Module) -> SurgeryError:
    where = f"'{join_path(*done)}'" if done else "the model"
    children = list(module._modules)
    listing = ", ".join(children[:10]) + (", ..." if len(children) > 10 else "") if children else "none"
    close = difflib.get_close_matches(part, children, n=1)
    hint = f"; did you mean '{join_path(*done, close[0])}'?" if close else ""
    return SurgeryError(
        f"no module '{path}' in {type(model).__name__}: '{part}' is not a child of {where} "
        f"(children: {listing}){hint} ('regraft inspect MODEL' lists every path)"
    )


def resolve_path(model: nn.Module, path: str) -> str:
    """The canonical dotted path of ``path`` in ``model`` (aliases and indices resolved).

    Args:
        model: the network.
        path: ``"classifier[6]"``, ``"classifier.-1"``, ``"fc1"``, ``"head"``, ``"layer4.1"``, ...

    Returns:
        The path as ``named_modules()`` spells it (``"classifier.6"``).

    Raises:
        SurgeryError: a component does not exist (the message lists the children there).
    """
    parts = split_path(path)
    if parts and _child_key(model, parts[0]) is None and re.fullmatch(r"head|fc\d+", parts[0]):
        table = aliases(model)
        if parts[0] in table:
            parts = [*split_path(table[parts[0]]), *parts[1:]]
    module, done = model, []
    for part in parts:
        key = _child_key(module, part)
        if key is None or module._modules[key] is None:
            raise _missing(model, path, done, part, module)
        done.append(key)
        module = module._modules[key]
    return join_path(*done)


def get(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``.

    Args:
        model: the network.
        path: a dotted path (``"layer4.1.conv2"``, ``"classifier[6]"``) or an alias (``"fc1"``,
            ``"head"``); ``""`` is the model itself.

    Returns:
        The module found there.

    Raises:
        SurgeryError: the path does not exist; the message lists the children where it stopped.

    Example:
        >>> import torchvision
        >>> get(torchvision.models.vgg11(), "classifier[6]").out_features
        1000
    """
    module = model
    for part in split_path(resolve_path(model, path)):
        module = module._modules[part]
    return module


def parent_of(model: nn.Module, path: str) -> tuple[nn.Module, str, str]:
    """``(parent module, key in parent, canonical path)`` of the module at ``path``."""
    canonical = resolve_path(model, path)
    if not canonical:
        raise SurgeryError(
            "this operation needs a submodule path, not '' (the whole model); "
            "name a module such as 'fc' or 'classifier.6'"
        )
    parent_path, _, key = canonical.rpartition(".")
    return get(model, parent_path), key, canonical


def set_child(parent: nn.Module, key: str, module: nn.Module) -> None:
    """Put ``module`` under ``parent`` as ``key``, keeping its place in the child order."""
    parent._modules[key] = module


def lookup(model: nn.Module, path: str) -> nn.Module | None:
    """The module at a canonical path, or None; no aliases, no errors (for internal probing)."""
    module: nn.Module | None = model
    for part in split_path(path):
        key = _child_key(module, part) if module is not None else None
        module = module._modules[key] if key is not None else None
    return module


def aliases(model: nn.Module, *, ref: Any = None) -> dict[str, str]:
    """Short names a model's paths also answer to.

    ``head`` is the final classifier (:func:`regraft.surgery.find_head`) for every model. VGG and
    AlexNet add ``fc1``, ``fc2``, ... for the Linear layers directly inside ``classifier``, counted
    in order, so ``fc1`` is ``classifier.0`` and ``fc2`` ``classifier.3`` on an unchanged VGG and
    they follow the layers when a dropout before them is deleted.

    Args:
        model: the network.
        ref: the model's ``ModelRef`` (defaults to ``model.regraft_ref``).

    Returns:
        alias -> canonical path. Aliases never shadow real children.
    """
    from regraft._surgery_head import family, find_head

    table: dict[str, str] = {}
    if family(model, ref=ref) in _FC_ALIAS_FAMILIES and isinstance(model._modules.get("classifier"), nn.Sequential):
        linears = [k for k, m in model._modules["classifier"]._modules.items() if isinstance(m, nn.Linear)]
        table.update({f"fc{i}": f"classifier.{k}" for i, k in enumerate(linears, start=1)})
    with contextlib.suppress(SurgeryError):
        table["head"] = find_head(model, ref=ref)
    return {k: v for k, v in table.items() if k not in model._modules}
