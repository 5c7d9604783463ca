"""What surgery changed: module trees compared by object identity, before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["SurgeryDiff", "Snapshot", "snapshot", "short"]

_SHOW = 20  # lines per section in format_lines


@dataclass
class Snapshot:
    """The tree at one moment: path -> (module, type name, parameter count, summary), and totals."""

    entries: dict[str, tuple[nn.Module, str, int, str]]
    params: int
    trainable: int


def snapshot(model: nn.Module) -> Snapshot:
    entries = {
        path: (m, type(m).__name__, sum(p.numel() for p in m.parameters()), short(m))
        for path, m in model.named_modules()
    }
    params = list(model.parameters())
    return Snapshot(entries, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


def short(module: nn.Module | None) -> str:
    """``Linear(512, 10)``, ``Conv2d(512, 8, k=3)``, ``Sequential[Linear(512, 256), ReLU, Linear(256, 10)]``."""
    if module is None:
        return "nothing"
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}, {module.out_features})"
    if isinstance(module, nn.modules.conv._ConvNd):
        k = module.kernel_size[0] if len(set(module.kernel_size)) == 1 else module.kernel_size
        return f"{type(module).__name__}({module.in_channels}, {module.out_channels}, k={k})"
    if isinstance(module, nn.Dropout):
        return f"Dropout({module.p})"
    if isinstance(module, nn.Sequential) and 0 < len(module) <= 6:
        return f"Sequential[{', '.join(short(m) for m in module)}]"
    return type(module).__name__


def _parent(path: str) -> str | None:
    return path.rpartition(".")[0] if path else None


@dataclass
class SurgeryDiff:
    """Paths added, removed, replaced and moved by a list of surgery ops, and the totals.

    Only the top of a changed subtree is listed (a new head with hidden layers is one
    replacement, not four additions). ``moved`` records modules that kept their identity but
    changed path (a Sequential renumbered after an insertion or deletion).
    """

    ops: list[str] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    trainable_before: int = 0
    trainable_after: int = 0
    out_shape_before: list[int] | None = None
    out_shape_after: list[int] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.replaced or self.moved)

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, **extra: Any) -> SurgeryDiff:
        b, a = before.entries, after.entries
        b_ids = {id(v[0]): p for p, v in b.items()}
        a_ids = {id(v[0]): p for p, v in a.items()}
        new = {p for p, v in a.items() if id(v[0]) not in b_ids}
        gone = {p for p, v in b.items() if id(v[0]) not in a_ids}
        retyped = {p for p in a.keys() & b.keys() if a[p][0] is b[p][0] and a[p][1] != b[p][1]}
        replaced = sorted((new & gone) | retyped, key=list(a).index)
        # only the top of each new or removed subtree is listed; short() shows what is inside
        diff = cls(
            added=[{"path": p, "type": a[p][1], "module": a[p][3], "params": a[p][2]} for p in a
                   if p in new and p not in replaced and _parent(p) not in new],
            removed=[{"path": p, "type": b[p][1], "module": b[p][3], "params": b[p][2]} for p in b
                     if p in gone and p not in replaced and _parent(p) not in gone],
            replaced=[{"path": p, "old_type": b[p][1], "new_type": a[p][1], "old": b[p][3], "new": a[p][3],
                       "old_params": b[p][2], "new_params": a[p][2]} for p in replaced],
            params_before=before.params, params_after=after.params,
            trainable_before=before.trainable, trainable_after=after.trainable, **extra,
        )
        for p, v in a.items():
            old = b_ids.get(id(v[0]))
            if old is None or old == p or not p:
                continue
            was = b_ids.get(id(a[_parent(p)][0]))  # where its parent object was before
            if was == _parent(old) and was != _parent(p):  # moved along with its parent
                continue
            if was is None and _parent(old) in gone:  # its container was rebuilt around it
                continue
            diff.moved.append({"from": old, "to": p, "type": v[1]})
        return diff

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``RUN/surgery.json``."""
        return asdict(self)

    def format_lines(self) -> list[str]:
        """Readable lines: ops, then each change, then parameter totals."""
        lines = [f"surgery: {op}" for op in self.ops]

        def section(items: list[dict[str, Any]], render: Any) -> None:
            lines.extend(render(item) for item in items[:_SHOW])
            if len(items) > _SHOW:
                lines.append(f"  ... and {len(items) - _SHOW} more")

        section(self.replaced, lambda r: f"  ~ {r['path'] or '(model)'}: {r['old']} -> {r['new']} ({r['old_params']:,} -> {r['new_params']:,} params)")
        section(self.added, lambda r: f"  + {r['path']}: {r['module']} ({r['params']:,} params)")
        section(self.removed, lambda r: f"  - {r['path']}: {r['module']} ({r['params']:,} params)")
        section(self.moved, lambda r: f"  > {r['from']} is now {r['to']} ({r['type']})")
        shapes = ""
        if self.out_shape_before is not None and self.out_shape_after is not None:
            shapes = f"; output {tuple(self.out_shape_before)} -> {tuple(self.out_shape_after)}"
        lines.append(
            f"  parameters {self.params_before:,} -> {self.params_after:,} "
            f"(trainable {self.trainable_before:,} -> {self.trainable_after:,}){shapes}"
        )
        return lines

    def __str__(self) -> str:
        return "\n".join(self.format_lines())
