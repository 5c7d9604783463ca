"""The load report: what a weights load matched, how, what it left out, and trunk coverage."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from regraft.errors import CoverageError

__all__ = ["LoadReport", "HeadStatus", "check_coverage"]


class HeadStatus(str, enum.Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """What became of the checkpoint's classifier.

    ``kept``: loaded into the model's head (``keep_head``, or a regraft run trained on the same
    classes in the same order). ``replaced``: it fits the model's head but what its classes mean
    is unknown, so it was withheld and the model's new head is used. ``dropped``: another class
    count or layout, or left out by ``--skip``; the model's new head is used. ``none``: the checkpoint has no classifier for
    the model's head, or the model has no head.
    """

    KEPT = "kept"
    REPLACED = "replaced"
    DROPPED = "dropped"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


@dataclass
class LoadReport:
    """What :func:`regraft.weights.load_weights` did, key by key.

    Mappings go from checkpoint key to model key (or to a reason); lists hold model keys except
    ``unexpected``, which holds checkpoint keys. A model key appears in exactly one of
    ``loaded``, ``renamed`` (values) and ``matched_by_position`` (values) when it got a tensor;
    ``adapted`` additionally lists those whose tensor was reshaped to fit.

    Attributes:
        source: the weights as given (``DEFAULT``, a path, a URL, ``<state dict>``).
        resolved: where they came from (file, enum member, hub repo).
        container: the checkpoint entry the tensors were found under (``state_dict``), if any.
        loaded: model keys loaded by exact name, after removing wrapper prefixes.
        renamed: checkpoint key -> model key, matched by a rename rule.
        matched_by_position: checkpoint key -> model key, matched by order and shape.
        adapted: model key -> how its tensor was adapted (first conv channels).
        skipped: checkpoint key -> why it was left out (``--skip``, old head).
        mismatched: checkpoint key -> the model key whose shape it does not fit.
        missing: model keys that got nothing from the checkpoint (the new head among them).
        unexpected: checkpoint keys that matched nothing.
        coverage: fraction of the trunk's parameter elements (all but the head) loaded.
        head: the head path used for coverage, or None when the model has none.
        trunk_params / trunk_params_loaded: the element counts behind ``coverage``.
        prefixes: wrapper and prefix changes applied to checkpoint names.
        notes: anything else worth knowing (unused rename rules, a refused prefix change, name
            matches refused because their neighbours clash).
        head_status: what became of the checkpoint's classifier (:class:`HeadStatus`).
        head_reason: why, in one sentence.
    """

    source: str
    resolved: str | None = None
    container: str | None = None
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    matched_by_position: dict[str, str] = field(default_factory=dict)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    coverage: float = 0.0
    head: str | None = None
    trunk_params: int = 0
    trunk_params_loaded: int = 0
    checkpoint_tensors: int = 0
    prefixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head_status: HeadStatus = HeadStatus.NONE
    head_reason: str = ""

    @property
    def loaded_keys(self) -> list[str]:
        """Every model key that received a tensor, however it was matched."""
        return [*self.loaded, *self.renamed.values(), *self.matched_by_position.values()]

    def counts(self) -> dict[str, int]:
        """How many keys each step accounts for."""
        return {
            "loaded": len(self.loaded), "renamed": len(self.renamed),
            "matched_by_position": len(self.matched_by_position), "adapted": len(self.adapted),
            "skipped": len(self.skipped), "mismatched": len(self.mismatched),
            "missing": len(self.missing), "unexpected": len(self.unexpected),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``load_report.json``): every field plus ``counts``."""
        data = asdict(self)
        data["head_status"] = str(self.head_status)
        data["counts"] = self.counts()
        return data

    def summary(self) -> str:
        """One line: coverage and the counts that matter."""
        c = self.counts()
        parts = [f"{c[k]} {k.replace('_', ' ')}" for k in c if c[k]]
        return f"{self.source}: trunk coverage {self.coverage:.1%} ({', '.join(parts) or 'nothing matched'})"

    def format_lines(self, *, examples: int = 3) -> list[str]:
        """A small table for the terminal: one row per step with a count and a few example keys."""
        rows = [
            ("loaded by name", self.loaded),
            ("renamed", [f"{k} -> {v}" for k, v in self.renamed.items()]),
            ("matched by position", [f"{k} -> {v}" for k, v in self.matched_by_position.items()]),
            ("adapted", [f"{k} {v}" for k, v in self.adapted.items()]),
            ("skipped", [f"{k} ({v})" for k, v in self.skipped.items()]),
            ("shape mismatched", [f"{k} -> {v}" for k, v in self.mismatched.items()]),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ]
        lines = [f"weights: {self.source}" + (f" ({self.resolved})" if self.resolved and not self.resolved.endswith(self.source) else "")]
        if self.container or self.prefixes:
            found = [f"tensors under '{self.container}'"] if self.container else []
            lines.append("  " + "; ".join(found + self.prefixes))
        for name, keys in rows:
            shown = ", ".join(keys[:examples]) + (f", ... (+{len(keys) - examples})" if len(keys) > examples else "")
            lines.append(f"  {name:<20} {len(keys):>6}  {shown}".rstrip())
        if self.head:
            lines.append(f"  {'head':<20} {str(self.head_status):>6}  {self.head_reason}".rstrip())
        lines.append(
            f"  {'trunk coverage':<20} {self.coverage:>6.1%}  {self.trunk_params_loaded:,} of {self.trunk_params:,} "
            f"parameters outside the head ({self.head or 'no head'})"
        )
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def check_coverage(report: LoadReport, *, min_coverage: float = 0.9) -> None:
    """Refuse a load that filled too little of the trunk.

    Args:
        report: what :func:`regraft.weights.load_weights` returned.
        min_coverage: the smallest acceptable ``report.coverage`` (0 turns the guard off).

    Raises:
        CoverageError: coverage is below ``min_coverage``; the error carries ``.report``.

    Example:
        >>> check_coverage(LoadReport("w.pth", coverage=1.0), min_coverage=0.9)
    """
    if report.coverage >= min_coverage:
        return
    c = report.counts()
    example = ""
    if report.unexpected and report.missing:
        example = f" (checkpoint has e.g. '{report.unexpected[0]}', model wants e.g. '{report.missing[0]}')"
    elif report.mismatched:
        key, why = next(iter(report.mismatched.items()))
        example = f" (e.g. {key} -> {why})"
    error = CoverageError(
        f"weights {report.source} filled only {report.coverage:.1%} of the model's trunk, below "
        f"--min-coverage {min_coverage:g}: {c['loaded'] + c['renamed'] + c['matched_by_position']} of "
        f"{report.checkpoint_tensors} checkpoint tensors loaded, {c['mismatched']} shape-mismatched, "
        f"{c['missing']} model keys missing, {c['unexpected']} checkpoint keys unexpected{example}; "
        "check that --model is the checkpoint's architecture, map names with --rename OLD=NEW, "
        "or pass --min-coverage 0 to train anyway"
    )
    error.report = report  # type: ignore[attr-defined]
    raise error
