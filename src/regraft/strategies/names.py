"""The strategy names, as a closed choice."""

from __future__ import annotations

import enum

from regraft.errors import ConfigError

__all__ = ["Strategy"]


class Strategy(str, enum.Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    AUTO = "auto"
    SCRATCH = "scratch"
    PROBE = "probe"
    HEAD = "head"
    PARTIAL = "partial"
    FULL = "full"
    LP_FT = "lp-ft"
    GRADUAL = "gradual"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Strategy) -> Strategy:
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"strategy must be one of {', '.join(s.value for s in cls)}; got '{value}'") from None
