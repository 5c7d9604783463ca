"""Names a user may type for a module: dotted paths, indices, and aliases (``head``, VGG's ``fc1``).

The first component of a path may be an alias when the model has no child of that name: a real
child always wins.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from torch import nn

from regraft.errors import SurgeryError
from regraft.families import fc_aliases
from regraft.surgery.heads import find_head
from regraft.surgery.paths import _child_key, canonical, split_path

__all__ = ["aliases", "resolve_path", "get", "parent_of"]


def aliases(model: nn.Module, *, ref: Any = None) -> dict[str, str]:
    """Short names a model's paths also answer to.

    ``head`` is the final classifier (:func:`regraft.surgery.find_head`) for every model. VGG and
    AlexNet (and modules laid out like them; :func:`regraft.families.fc_aliases`) add ``fc1``,
    ``fc2``, ... for the Linear layers directly inside ``classifier``, counted in order, so ``fc1`` is ``classifier.0`` and ``fc2`` ``classifier.3`` on an unchanged VGG and
    they follow the layers when a dropout before them is deleted.

    Args:
        model: the network.
        ref: the model's ``ModelRef`` (defaults to ``model.regraft_ref``).

    Returns:
        alias -> canonical path. Aliases never shadow real children.
    """
    table = fc_aliases(model, ref=ref)
    with contextlib.suppress(SurgeryError):
        table["head"] = find_head(model, ref=ref)
    return {k: v for k, v in table.items() if k not in model._modules}


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
    return canonical(model, ".".join(parts))

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
    """``(parent module, key in parent, canonical path)`` of the module at ``path`` (aliases allowed)."""
    from regraft.surgery import paths

    return paths.parent_of(model, resolve_path(model, path))
