"""Dotted paths over ``nn.Module`` trees: parsing, lookup, parents (aliases: ``surgery.names``).

A path names a submodule the way ``named_modules()`` does (``layer4.1.conv2``,
``classifier.6``); ``classifier[6]`` and negative indices into ``nn.Sequential`` /
``nn.ModuleList`` (``classifier[-1]``) are accepted too, and ``""`` is the model itself.
"""

from __future__ import annotations

import difflib
import re

from torch import nn

from regraft.errors import SurgeryError

__all__ = ["split_path", "join_path", "lookup", "canonical", "parent_of", "set_child"]

_BRACKET = re.compile(r"\[\s*(-?\d+)\s*\]")
_SEQUENCES = (nn.Sequential, nn.ModuleList)


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


def canonical(model: nn.Module, path: str) -> str:
    """The dotted path of ``path`` as ``named_modules()`` spells it (indices resolved, no aliases).

    Raises:
        SurgeryError: a component does not exist (the message lists the children there).
    """
    module, done = model, []
    for part in split_path(path):
        key = _child_key(module, part)
        if key is None or module._modules[key] is None:
            raise _missing(model, path, done, part, module)
        done.append(key)
        module = module._modules[key]
    return join_path(*done)




def parent_of(model: nn.Module, path: str) -> tuple[nn.Module, str, str]:
    """``(parent module, key in parent, canonical path)`` of the module at ``path``."""
    where = canonical(model, path)
    if not where:
        raise SurgeryError(
            "this operation needs a submodule path, not '' (the whole model); "
            "name a module such as 'fc' or 'classifier.6'"
        )
    parent_path, _, key = where.rpartition(".")
    parent = lookup(model, parent_path)
    assert parent is not None  # canonical() found every component
    return parent, key, where


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


