"""The fix loop's file: ``path,given,suggested,action,reason`` rows a user edits between scan and train.

``regraft scan DATA --model M --fixes fixes.csv`` writes one row per finding; the user changes
``action`` where they disagree; ``regraft train DATA --exclude fixes.csv`` then trains on the
cleaned set. Actions:

- ``exclude``: leave the image out of training and validation;
- ``relabel``: file the image under ``suggested`` (a class of the data) instead;
- ``keep``: nothing (the finding was wrong, or the image is fine as it is).

A file with only a ``path`` column excludes every path in it. Paths are matched after resolving
symlinks; relative ones are relative to the data folder, as the scan writes them.

Example:
    >>> fixes = read_fixes("fixes.csv")                 # doctest: +SKIP
    >>> splits, applied = apply_fixes(splits, fixes)    # doctest: +SKIP
    >>> applied.describe()                              # doctest: +SKIP
    'fixes.csv: 12 images excluded, 3 relabelled'
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from regraft.data.splits import DataSplits, Sample
from regraft.errors import DataError

__all__ = ["ACTIONS", "Fix", "Fixes", "AppliedFixes", "write_fixes", "read_fixes", "apply_fixes"]

ACTIONS = ("exclude", "relabel", "keep")
COLUMNS = ("path", "given", "suggested", "action", "reason")


@dataclass(frozen=True)
class Fix:
    """One row: the image, its class, the class the scan suggests, what to do and why."""

    path: str
    given: str = ""
    suggested: str = ""
    action: str = "exclude"
    reason: str = ""


@dataclass
class Fixes:
    """The rows of a fixes file (``source``: the file they came from)."""

    rows: list[Fix]
    source: str = ""


@dataclass
class AppliedFixes:
    """What :func:`apply_fixes` changed: ``excluded`` paths, ``relabelled`` (path, from, to), paths not found."""

    source: str
    excluded: list[str] = field(default_factory=list)
    relabelled: list[tuple[str, str, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    def describe(self) -> str:
        missing = f", {len(self.not_found)} paths not in the data" if self.not_found else ""
        return f"{self.source}: {len(self.excluded)} images excluded, {len(self.relabelled)} relabelled{missing}"

    def to_dict(self) -> dict:
        return asdict(self)


def write_fixes(path: str | os.PathLike, rows: Iterable[Fix], *, root: str | os.PathLike | None = None) -> Path:
    """Write the rows as CSV (paths relative to ``root`` when they lie under it). Returns the path."""
    from regraft.runs import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_relative(row.path, root), row.given, row.suggested, row.action, row.reason])
    return atomic_write_text(Path(path), buffer.getvalue())


def read_fixes(path: str | os.PathLike) -> Fixes:
    """Read and check a fixes file.

    Raises:
        DataError: the file is missing or empty, has no ``path`` column, or a row has an
            unknown action or a ``relabel`` without ``suggested`` (the message names the line).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read the fixes file {source}: {exc.strerror or exc}; pass the CSV 'regraft scan --fixes' wrote") from None
    reader = csv.DictReader(io.StringIO(text), dialect=_dialect(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "path" not in header:
        raise DataError(f"{source}: no 'path' column (found {', '.join(header) or 'nothing'}); the header must read "
                        f"{','.join(COLUMNS)} (only path is required)")
    rows = []
    for line, raw in enumerate(reader, start=2):
        values = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not values.get("path"):
            continue
        action = (values.get("action") or ("exclude" if "action" not in header else "keep")).lower()
        if action not in ACTIONS:
            raise DataError(f"{source} line {line}: unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if action == "relabel" and not values.get("suggested"):
            raise DataError(f"{source} line {line}: action relabel needs the new class in the 'suggested' column")
        rows.append(Fix(values["path"], values.get("given", ""), values.get("suggested", ""), action, values.get("reason", "")))
    return Fixes(rows, str(source))


def apply_fixes(splits: DataSplits, fixes: Fixes) -> tuple[DataSplits, AppliedFixes]:
    """The splits without the excluded images and with the relabelled ones moved (a new object).

    Raises:
        DataError: a ``relabel`` names a class the data does not have, no row names an image of
            the data (a file for another folder), or a class is left without training images.
    """
    applied = AppliedFixes(fixes.source)
    wanted: dict[str, Fix] = {}
    for row in fixes.rows:
        if row.action != "keep":
            wanted[_key(row.path, splits.root)] = row
    index = {name: i for i, name in enumerate(splits.classes)}
    for row in wanted.values():
        if row.action == "relabel" and row.suggested not in index:
            raise DataError(f"{fixes.source}: cannot relabel {row.path} as {row.suggested!r}: no such class "
                            f"(classes: {', '.join(splits.classes)})")
    seen: set[str] = set()
    out = {}
    for split in ("train", "val"):
        kept = []
        for sample in getattr(splits, split):
            key = _key(sample.path, splits.root)
            row = wanted.get(key)
            if row is None:
                kept.append(sample)
                continue
            seen.add(key)
            if row.action == "exclude":
                applied.excluded.append(sample.path)
            else:
                kept.append(Sample(sample.path, index[row.suggested]))
                applied.relabelled.append((sample.path, splits.classes[sample.label], row.suggested))
        out[split] = kept
    applied.not_found = sorted(row.path for key, row in wanted.items() if key not in seen)
    if wanted and not seen:
        raise DataError(f"{fixes.source}: none of its {len(wanted)} paths is an image of {splits.root}; "
                        "was it written for another data folder?")
    cleaned = DataSplits(splits.classes, out["train"], out["val"], splits.layout, splits.root, list(splits.ignored))
    empty = [c for c, n in zip(splits.classes, cleaned.counts("train"), strict=True) if n == 0]
    if empty:
        raise DataError(f"{fixes.source} leaves class {empty[0]!r} without training images; set some of its rows to keep")
    return cleaned, applied


def _key(path: str, root: str) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = Path(root) / p
    return os.path.realpath(p)


def _relative(path: str, root: str | os.PathLike | None) -> str:
    if root is None:
        return path
    try:
        return os.path.relpath(os.path.realpath(path), os.path.realpath(root)) if _under(path, root) else path
    except ValueError:  # another drive (Windows)
        return path


def _under(path: str, root: str | os.PathLike) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
    except csv.Error:
        return csv.excel
