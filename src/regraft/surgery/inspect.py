"""The module table behind ``regraft inspect``: path, type, output shape, parameter counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from regraft.errors import SurgeryError
from regraft.surgery.heads import find_head
from regraft.surgery.paths import split_path
from regraft.surgery.shapes import probe

__all__ = ["ModuleInfo", "describe"]


@dataclass
class ModuleInfo:
    """One row of the module table: where a module is, what it is and what it outputs."""

    path: str
    type: str
    out_shape: tuple[int, ...] | list[tuple[int, ...]] | None
    params: int
    trainable_params: int
    depth: int
    head: bool = False

    @property
    def trainable(self) -> bool | None:
        """True when all its parameters train, False when all are frozen, None if mixed or none."""
        if self.params == 0 or 0 < self.trainable_params < self.params:
            return None
        return self.trainable_params == self.params

    def to_dict(self) -> dict[str, Any]:
        shape = self.out_shape
        out = [list(s) for s in shape] if isinstance(shape, list) else list(shape) if shape else None
        return {
            "path": self.path, "type": self.type, "out_shape": out, "params": self.params,
            "trainable": self.trainable, "trainable_params": self.trainable_params,
            "depth": self.depth, "head": self.head,
        }


def describe(model: nn.Module, *, input_size: Sequence[int], depth: int | None = None) -> list[ModuleInfo]:
    """The module tree as rows: path, type, output shape from a dry pass, parameter counts.

    Args:
        model: the network.
        input_size: ``(C, H, W)`` for the dry pass.
        depth: keep modules at most this many dots deep (0 = only the model; None = all).

    Returns:
        One :class:`ModuleInfo` per module in registration order, the model itself first (path
        ``""``). ``head`` is set on the row of :func:`find_head`'s path (when one is found).

    Raises:
        ShapeError: the model does not run at ``input_size``.
    """
    named = [(p, m) for p, m in model.named_modules() if depth is None or len(split_path(p)) <= depth]
    shapes = probe(model, [p for p, _ in named], input_size=input_size)
    try:
        head = find_head(model, input_size=input_size)
    except SurgeryError:
        head = None
    rows = []
    for path, module in named:
        params = list(module.parameters())
        rows.append(ModuleInfo(
            path=path, type=type(module).__name__, out_shape=shapes.get(path, (None, None))[1],
            params=sum(p.numel() for p in params), trainable_params=sum(p.numel() for p in params if p.requires_grad),
            depth=len(split_path(path)), head=path == head,
        ))
    return rows
