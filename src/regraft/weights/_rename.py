"""``--rename OLD=NEW`` rules: literal module paths, ``{}`` placeholders for numbers, or regexes.

- ``_fc=classifier``: a literal dotted path, replaced wherever it stands as whole components
  (``_fc.weight`` -> ``classifier.weight``, but ``my_fc.weight`` is untouched). An empty NEW
  removes the components: ``backbone=`` turns ``backbone.conv1.weight`` into ``conv1.weight``.
- ``_blocks.{}._bn1=blocks.{}.bn1``: each ``{}`` matches a number and is put back in order.
- ``^encoder\\.(.*)=\\1``: anything with a regex metacharacter (``^$*+?()[]|\\``) is a regular
  expression, applied with ``re.sub`` once; NEW may use ``\\1`` backreferences.

Rules apply in order, each to the result of the one before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from regraft.errors import WeightsError

__all__ = ["RenameRule", "parse_rules", "apply_rules"]

_REGEX_CHARS = set("^$*+?()[]|\\")


@dataclass(frozen=True)
class RenameRule:
    """One OLD=NEW rule, compiled."""

    old: str
    new: str
    pattern: re.Pattern[str]
    kind: str  # "literal" | "placeholder" | "regex"

    def __str__(self) -> str:
        return f"{self.old}={self.new}"

    def apply(self, key: str) -> str | None:
        """The renamed key, or None when the rule does not match ``key``."""
        if not self.pattern.search(key):
            return None
        if self.kind == "regex":
            return self.pattern.sub(self.new, key, count=1)
        renamed = self.pattern.sub(self._fill, key, count=1)
        return re.sub(r"\.{2,}", ".", renamed).strip(".")

    def _fill(self, match: re.Match[str]) -> str:
        numbers = iter(match.groups())
        return re.sub(r"\{\}", lambda _: next(numbers), self.new.strip("."))


def _compile(old: str, new: str) -> RenameRule:
    text = f"{old}={new}"
    if not old.strip("."):
        raise WeightsError(f"--rename '{text}': OLD is empty; expected OLD=NEW such as _fc=classifier")
    if "{}" in old:
        body = r"(\d+)".join(re.escape(part) for part in old.strip(".").split("{}"))
        kind = "placeholder"
        if new.count("{}") > old.count("{}"):
            raise WeightsError(f"--rename '{text}': NEW has more {{}} placeholders than OLD; use at most {old.count('{}')}")
    elif _REGEX_CHARS & set(old):
        try:
            return RenameRule(old, new, re.compile(old), "regex")
        except re.error as exc:
            raise WeightsError(f"--rename '{text}': invalid regular expression ({exc}); escape literal characters with \\") from exc
    else:
        body, kind = re.escape(old.strip(".")), "literal"
    # whole dotted components only: preceded by the start or a dot, followed by a dot or the end
    return RenameRule(old, new, re.compile(rf"(?<![^.]){body}(?![^.])"), kind)


def parse_rules(rename: Mapping[str, str] | Iterable[str] | None) -> list[RenameRule]:
    """Compile rename rules from a mapping ``{OLD: NEW}`` or strings ``"OLD=NEW"``.

    Raises:
        WeightsError: a rule is malformed (no ``=``, empty OLD, bad regex).
    """
    if not rename:
        return []
    if isinstance(rename, Mapping):
        pairs = [(str(k), str(v)) for k, v in rename.items()]
    else:
        pairs = []
        for item in rename:
            if isinstance(item, str):
                if "=" not in item:
                    raise WeightsError(f"--rename '{item}': expected OLD=NEW, e.g. --rename _fc=classifier")
                old, new = item.split("=", 1)
            else:
                old, new = item
            pairs.append((str(old), str(new)))
    return [_compile(old.strip(), new.strip()) for old, new in pairs]


def apply_rules(rules: list[RenameRule], key: str, used: set[str] | None = None) -> str:
    """``key`` after every rule in order (unchanged when none match); adds matching rules to ``used``."""
    for rule in rules:
        renamed = rule.apply(key)
        if renamed is not None:
            key = renamed
            if used is not None:
                used.add(str(rule))
    return key
