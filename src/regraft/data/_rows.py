"""Reading what the user hands regraft about labels, shared by the single- and multi-label layouts
(``_layouts``, ``_multilabel``): class folders, a classes file, CSV/TSV rows, and the collector of
problems that makes ``discover`` strict and ``scan`` lenient.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from regraft.data.files import read_text
from regraft.errors import DataError

log = logging.getLogger("regraft.data.discovery")

_PATH_COLUMNS = ("path", "file", "filename", "filepath", "file_path", "image", "image_path", "img", "name")


_LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classes", "target", "category", "tags", "y")


class _Problems:
    """Raise (strict) or record (lenient) errors; log (strict) or record (lenient) warnings."""

    def __init__(self, sink: list[str] | None) -> None:
        self.sink = sink

    def error(self, message: str) -> None:
        if self.sink is None:
            raise DataError(message)
        self.sink.append(message)

    def warn(self, message: str) -> None:
        if self.sink is None:
            log.warning(message)
        else:
            self.sink.append(message)


def _class_dirs(folder: Path) -> dict[str, Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder} ({exc.strerror}); check the path and its permissions") from None
    return {
        e.name: Path(e.path)
        for e in entries
        if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"
    }


def _read_classes_file(root: Path, classes_file) -> list[str] | None:
    if classes_file is None:
        default = root / "classes.txt"
        if not default.is_file():
            return None
        log.info("class names and order from %s", default)
        path = default
    else:
        path = _resolve(root, classes_file, what="classes file")
    names = [ln.strip() for ln in read_text(path, what="classes file").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataError(f"{path} lists no classes: write one class name per line")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path} lists {', '.join(dupes)} more than once: keep each class name once")
    return names


def _resolve(root: Path, value, *, what: str) -> Path:
    path = Path(value)
    if not path.is_absolute() and not path.exists():
        path = root / path
    if not path.is_file():
        raise DataError(f"{what} not found: {value} (looked in . and {root})")
    return path


def _read_rows(path: Path, *, label_sep: str | None = None) -> list[tuple[str, str, int]]:
    """``(path, label, line number)`` rows of a CSV/TSV file; the header, if any, is skipped.

    With ``label_sep`` (multi-label) an empty label cell is allowed (an image with no positive
    label), and the columns are never split at the label separator.
    """
    text = read_text(path, what="CSV file")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else (";" if ";" in first and "," not in first else ",")
    if label_sep is not None and delimiter == label_sep:
        delimiter = ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    rows: list[tuple[str, str, int]] = []
    cols: tuple[int, int] | None = None
    for cells in _csv_rows(reader, path):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if cols is None:
            cols, is_header = _columns(cells)
            if is_header:
                continue
        if len(cells) <= max(cols):
            what = "labels" if label_sep is not None else "label"
            raise DataError(f"{path}:{reader.line_num}: expected 'path{delimiter}{what}', got {delimiter.join(cells)!r}")
        if not cells[cols[0]] or (not cells[cols[1]] and label_sep is None):
            missing = "path" if not cells[cols[0]] else "label"
            raise DataError(
                f"{path}:{reader.line_num}: empty {missing} in {delimiter.join(cells)!r}; every row needs a path and a class label"
            )
        rows.append((cells[cols[0]], cells[cols[1]], reader.line_num))
    return rows


def _csv_rows(reader, path: Path):
    try:
        yield from reader
    except csv.Error as exc:  # a field over the csv module's size limit, an unclosed quote at the end
        raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({exc}); expected lines of 'path,label'") from None


def _columns(cells: list[str]) -> tuple[tuple[int, int], bool]:
    names = [c.lower() for c in cells]
    path_col = next((i for i, n in enumerate(names) if n in _PATH_COLUMNS), None)
    label_col = next((i for i, n in enumerate(names) if n in _LABEL_COLUMNS), None)
    if path_col is None and label_col is None:
        return (0, 1), False
    path_col = path_col if path_col is not None else (1 if label_col == 0 else 0)
    label_col = label_col if label_col is not None else (1 if path_col == 0 else 0)
    return (path_col, label_col), True


def _classes_from_labels(labels: list[str]) -> list[str]:
    unique = set(labels)
    if all(_as_int(v) is not None for v in unique):
        return [str(v) for v in sorted({_as_int(v) for v in unique})]
    return sorted(unique)


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
