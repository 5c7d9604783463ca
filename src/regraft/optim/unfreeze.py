"""Staged unfreezing for :mod:`regraft.optim`: when each part of a model starts training.

Public through :mod:`regraft.optim` (``UnfreezeSchedule``, ``UnfreezeStep``, ``split_by_epoch``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from regraft.errors import ConfigError
from regraft.freezing import select


@dataclass(frozen=True)
class UnfreezeStep:
    """From ``epoch`` (counted from 0) on, ``train`` trains too; warms up over ``warmup_epochs``."""

    epoch: int
    train: tuple[str, ...]
    warmup_epochs: float | None = None


_STEP_KEYS = ("epoch", "train", "warmup_epochs")


class UnfreezeSchedule:
    """When each part of the model starts training; each step adds to what trains already.

    Example:
        >>> s = UnfreezeSchedule.parse([{"epoch": 0, "train": "head"}, {"epoch": 2, "train": "layer4"}])
        >>> [(st.epoch, st.train) for st in s.steps]
        [(0, ('head',)), (2, ('layer4',))]
    """

    def __init__(self, steps: Sequence[UnfreezeStep]) -> None:
        self.steps = tuple(sorted(steps, key=lambda s: s.epoch))

    def __repr__(self) -> str:
        return f"UnfreezeSchedule({self.to_list()!r})"

    @classmethod
    def parse(cls, entries: Sequence[Mapping[str, Any]], *, source: str = "unfreeze") -> UnfreezeSchedule:
        """Read ``[{epoch: 0, train: head}, {epoch: 2, train: [layer4]}, ...]`` (a recipe's ``unfreeze``).

        Raises:
            ConfigError: an entry is not a mapping, has unknown keys, a negative or missing
                epoch, or no ``train``.
        """
        steps = []
        for i, entry in enumerate(entries):
            where = f"{source}[{i}]"
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}: expected a mapping like {{epoch: 2, train: layer4}}; got {entry!r}")
            unknown = [k for k in entry if k not in _STEP_KEYS]
            if unknown:
                raise ConfigError(f"{where}: unknown key '{unknown[0]}'; expected {', '.join(_STEP_KEYS)}")
            epoch, train = entry.get("epoch"), entry.get("train")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ConfigError(f"{where}: 'epoch' must be an integer >= 0 (0 = the first epoch); got {epoch!r}")
            tokens = [train] if isinstance(train, str) else train
            if not tokens or not all(isinstance(t, str) and t.strip() for t in tokens):
                raise ConfigError(f"{where}: 'train' must name what trains from epoch {epoch}, e.g. layer4 or all; got {train!r}")
            warm = entry.get("warmup_epochs")
            if warm is not None and (isinstance(warm, bool) or not isinstance(warm, (int, float)) or warm < 0):
                raise ConfigError(f"{where}: 'warmup_epochs' must be a number >= 0; got {warm!r}")
            steps.append(UnfreezeStep(epoch, tuple(t.strip() for t in tokens), None if warm is None else float(warm)))
        return cls(steps)

    @classmethod
    def gradual(cls, stage_names: Sequence[str | Sequence[str]], *, epochs: int) -> UnfreezeSchedule:
        """Head first, then one more stage from the top at evenly spaced epochs, the last step ``all``.

        An item of ``stage_names`` may be a tuple of names that wake together.
        """
        units = [(u,) if isinstance(u, str) else tuple(u) for u in stage_names]
        events = min(len(units), max(epochs - 1, 0))
        steps = [UnfreezeStep(0, ("head",))]
        last = 0
        for j in range(1, events + 1):
            epoch = max(last + 1, math.floor(j * epochs / (events + 1) + 0.5))
            train = ("all",) if j == events else units[-j]
            steps.append(UnfreezeStep(epoch, train))
            last = epoch
        return cls(steps)

    def to_list(self) -> list[dict[str, Any]]:
        out = []
        for s in self.steps:
            item: dict[str, Any] = {"epoch": s.epoch, "train": list(s.train)}
            if s.warmup_epochs is not None:
                item["warmup_epochs"] = s.warmup_epochs
            out.append(item)
        return out

    def wake_epochs(self, model: nn.Module, *, head: str | None = None, initial: Iterable[str] = ()) -> dict[str, int]:
        """The first epoch each parameter trains: 0 for ``initial`` names; absent = never trains.

        Raises:
            FreezeError: a step's ``train`` matches nothing in ``model``.
        """
        wake = dict.fromkeys(initial, 0)
        for i, step in enumerate(self.steps):
            for name in select(model, list(step.train), head=head, what=f"unfreeze[{i}]"):
                wake.setdefault(name, step.epoch)
        return wake

    def warmup_for(self, epoch: int) -> float | None:
        """The ``warmup_epochs`` of the step at ``epoch`` (None = the default)."""
        return next((s.warmup_epochs for s in self.steps if s.epoch == epoch and s.warmup_epochs is not None), None)


@dataclass(frozen=True)
class GroupWake:
    """When optimizer group ``index`` starts training: ``epoch`` (0 = from the start) and the
    length of its LR ramp once woken (``warmup_steps``; 0 = at once)."""

    epoch: int
    warmup_steps: int = 0


def split_by_epoch(groups: Sequence[dict[str, Any]], wake: Mapping[str, int], *, steps_per_epoch: int = 1,
                   schedule: UnfreezeSchedule | None = None) -> tuple[list[dict[str, Any]], list[GroupWake]]:
    """Split ``groups`` so each holds parameters that start training in the same epoch.

    Parameters missing from ``wake`` are dropped. A stage split across several epochs gets names
    like ``layer4@2``. Returns the groups and, beside them (one per group, in order), a
    :class:`GroupWake`: the epoch the group starts and its LR ramp then (the step's
    ``warmup_epochs``, default one epoch). The unfreezing state lives there, not in the groups.
    """
    out: list[dict[str, Any]] = []
    wakes: list[GroupWake] = []
    for group in groups:
        by_epoch: dict[int, list[int]] = {}
        for i, name in enumerate(group["param_names"]):
            if name in wake:
                by_epoch.setdefault(wake[name], []).append(i)
        for epoch, idx in sorted(by_epoch.items()):
            new = dict(group)
            new["params"] = [group["params"][i] for i in idx]
            new["param_names"] = [group["param_names"][i] for i in idx]
            if len(by_epoch) > 1:
                stage, sep, rest = group["name"].partition("/")
                new["name"] = f"{stage}@{epoch}{sep}{rest}"
            warm = schedule.warmup_for(epoch) if schedule is not None and epoch > 0 else None
            steps = round((1.0 if warm is None else warm) * steps_per_epoch) if epoch > 0 else 0
            out.append(new)
            wakes.append(GroupWake(epoch=epoch, warmup_steps=steps))
    return out, wakes
