"""The closed choice of what the labels are (``--task``)."""

from __future__ import annotations

from enum import Enum

from regraft.config import TASKS
from regraft.errors import ConfigError

__all__ = ["Task"]


class Task(str, Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """``multiclass``: one class per image (softmax). ``multilabel``: any number (a sigmoid per label)."""

    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Task | None) -> Task:
        """``"multilabel"`` -> ``Task.MULTILABEL``; None (an older run's card) is ``multiclass``.

        Raises:
            ConfigError: listing the valid values.
        """
        if value is None:
            return cls.MULTICLASS
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {value!r}") from None

    @property
    def multilabel(self) -> bool:
        return self is Task.MULTILABEL

    @property
    def primary(self) -> str:
        """The ``metrics.csv`` column that decides which weights are kept (then the lower ``val_loss``)."""
        return "val_map" if self.multilabel else "val_acc"

    @property
    def figure(self) -> str:
        """The primary figure's name for people: ``accuracy`` or ``mAP``."""
        return "mAP" if self.multilabel else "accuracy"
