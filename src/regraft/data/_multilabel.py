"""Multi-label discovery: CSVs with several labels per row, and label folders that share images.

``csv``
    ``path,labels`` rows; an image's labels are separated by ``label_sep`` (default ``;``:
    ``images/0001.jpg,cat;dog``). An empty labels cell means an image with no positive label (a
    negative for every label). The same path on several rows is one image with all their labels,
    so a long list (``a.jpg,cat`` / ``a.jpg,dog``) works as well. Columns are never split at the
    label separator.
``split:val`` / ``flat-split`` (label folders)
    ``DATA/<label>/…`` (or ``DATA/train/<label>/…`` and ``DATA/val/<label>/…``): an image that is
    in several label folders (a copy or a link) is one image with all those labels. Copies are
    recognised by their content (the BLAKE2b hash of the file's bytes, as ``regraft scan`` finds
    duplicates), not their names, so two different photos that happen to share a name stay two
    images. Its path is the first copy's (in sorted order). Folders cannot say "no label": use
    a CSV for images without one.

Without a validation split, ``val_fraction`` of the images go to validation, stratified by each
image's rarest label (images without a label form their own group) with the same per-group
seeded shuffle as single-label data.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from regraft.data import _rows as L
from regraft.data._system import cpu_count
from regraft.data.files import VAL_DIR_NAMES, read_file_bytes, walk_images
from regraft.data.splits import DataSplits, Sample, split_stratified
from regraft.errors import DataError

__all__ = ["find_multilabel_splits", "label_folder_samples", "split_multilabel", "NO_LABEL"]

NO_LABEL = "(no label)"  # the split's group of images without a positive label


def find_multilabel_splits(
    root: Path, *, val_fraction: float, seed: int, train_csv, val_csv, class_list: list[str] | None, label_sep: str,
    report,
) -> DataSplits:
    """The multi-label counterpart of ``_layouts.find_splits`` (the layouts in the module doc)."""
    if train_csv is not None or val_csv is not None:
        if train_csv is None:
            raise DataError("a validation CSV was given without a train CSV: pass --train-csv too")
        return _from_csv(root, train_csv, val_csv, class_list, label_sep, val_fraction, seed, report)
    dirs = L._class_dirs(root)
    lower = {name.lower(): path for name, path in dirs.items()}
    if "train" in lower and (val_name := next((n for n in VAL_DIR_NAMES if n in lower), None)) is not None:
        train_dir, val_dir = lower["train"], lower[val_name]
        classes = class_list or sorted(L._class_dirs(train_dir))
        if not classes:
            raise DataError(f"no label folders in {train_dir}: put each label's images in {train_dir}/<label>/")
        train, ignored = label_folder_samples(train_dir, classes, report, required=True)
        val, val_ignored = label_folder_samples(val_dir, classes, report, required=False)
        if not val:
            report.error(f"no images in {val_dir}: put validation images in {val_dir}/<label>/, or remove the folder to split train/")
        return DataSplits(classes, train, val, f"split:{val_name}", str(root), ignored + val_ignored, multilabel=True)
    folder = lower.get("train", root)
    classes = class_list or sorted(L._class_dirs(folder))
    if not classes:
        raise DataError(
            f"no label folders in {folder}: put each label's images in its own subfolder (an image with two labels "
            f"in both), or list them in a CSV (--train-csv, 'path,labels' rows)"
        )
    samples, ignored = label_folder_samples(folder, classes, report, required=True)
    train, val = split_multilabel(samples, classes=classes, val_fraction=val_fraction, seed=seed)
    return DataSplits(classes, train, val, "flat-split", str(root), ignored, multilabel=True)


def label_folder_samples(folder: Path, classes: list[str], report, *, required: bool) -> tuple[list[Sample], list[str]]:
    """One sample per distinct image under ``folder``'s label folders, labelled by every folder holding a copy."""
    dirs = L._class_dirs(folder)
    unknown = sorted(set(dirs) - set(classes))
    if unknown:
        report.error(f"{folder} has label folders not in the label list: {', '.join(unknown)}; "
                     "add them to the classes file (and train) or remove them")
    found: list[tuple[str, int]] = []
    ignored: list[str] = []
    for label, name in enumerate(classes):
        images, others = walk_images(dirs[name]) if name in dirs else ([], [])
        ignored.extend(others)
        found.extend((p, label) for p in images)
        if not images:
            message = f"label '{name}' has no images in {folder / name}: add images or remove the folder"
            (report.error if required else report.warn)(message)
    return _merge_copies(found), ignored


def _merge_copies(found: list[tuple[str, int]]) -> list[Sample]:
    """Paths with the same bytes become one sample carrying each path's label."""
    paths = sorted({p for p, _ in found})
    with ThreadPoolExecutor(max(1, min(8, cpu_count()))) as pool:
        keys = dict(zip(paths, pool.map(_content_key, paths), strict=True))
    first: dict[str, str] = {}
    labels: dict[str, set[int]] = {}
    for path in paths:
        first.setdefault(keys[path], path)
    for path, label in found:
        labels.setdefault(first[keys[path]], set()).add(label)
    return sorted(Sample(p, tuple(sorted(ls))) for p, ls in labels.items())


def _content_key(path: str) -> str:
    """The file's BLAKE2b digest; an unreadable file is its own image (training skips it later)."""
    try:
        return hashlib.blake2b(read_file_bytes(path), digest_size=16).hexdigest()
    except (OSError, DataError):
        return "unreadable:" + path


def _from_csv(root: Path, train_csv, val_csv, class_list, label_sep, val_fraction, seed, report) -> DataSplits:
    train_path = L._resolve(root, train_csv, what="train CSV")
    train_rows = L._read_rows(train_path, label_sep=label_sep)
    if not train_rows:
        raise DataError(f"{train_path} has no rows: expected lines of 'path,labels' (labels separated by {label_sep!r})")
    names = [n for _, cell, _ in train_rows for n in _split(cell, label_sep)]
    if not names and class_list is None:
        raise DataError(f"{train_path} names no label in any row: write each image's labels separated by {label_sep!r} "
                        "(e.g. 'a.jpg,cat;dog'), or pass --label-sep")
    classes = class_list or L._classes_from_labels(names)
    source = "the classes file" if class_list else f"the labels of {train_path.name}"
    by_index = class_list is not None
    train = _label_rows(root, train_path, train_rows, classes, label_sep, source, report, by_index=by_index)
    empty = [c for i, c in enumerate(classes) if not any(i in s.label for s in train)]
    if empty:
        report.error(f"labels with no positive training row in {train_path}: {', '.join(empty)}; "
                     "add rows or remove them from the class list")
    if val_csv is None:
        train, val = split_multilabel(train, classes=classes, val_fraction=val_fraction, seed=seed)
    else:
        val_path = L._resolve(root, val_csv, what="validation CSV")
        val = _label_rows(root, val_path, L._read_rows(val_path, label_sep=label_sep), classes, label_sep, source, report,
                          by_index=by_index)
        if not val:
            report.error(f"{val_path} has no usable rows: expected lines of 'path,labels'")
    return DataSplits(classes, train, val, "csv", str(root), [], multilabel=True)


def _split(cell: str, sep: str) -> list[str]:
    return [part.strip() for part in cell.split(sep) if part.strip()]


def _label_rows(root: Path, csv_path: Path, rows, classes: list[str], sep: str, source: str, report, *, by_index: bool) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    labels: dict[str, set[int]] = {}
    for rel, cell, line in rows:
        path = rel if os.path.isabs(rel) else os.path.join(str(root), rel)
        mine = labels.setdefault(path, set())
        for name in _split(cell, sep):
            number = L._as_int(name)
            if name in index:
                mine.add(index[name])
            elif number is not None and str(number) in index:
                mine.add(index[str(number)])
            elif by_index and number is not None and 0 <= number < len(classes):
                mine.add(number)
            else:
                shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
                report.error(f"{csv_path}:{line}: label '{name}' is not one of the {len(classes)} labels ({shown}) from "
                             f"{source}; fix the row, add the label, or check --label-sep (now {sep!r})")
    return sorted(Sample(p, tuple(sorted(ls))) for p, ls in labels.items())


def split_multilabel(samples: list[Sample], *, classes: list[str], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A split stratified by each image's rarest label (see the module doc); each part sorted by path."""
    counts = [0] * len(classes)
    for s in samples:
        for c in s.label:
            counts[c] += 1
    groups = [*classes, NO_LABEL]
    strata = [Sample(s.path, min(s.label, key=lambda c: (counts[c], c)) if s.label else len(classes)) for s in samples]
    by_path = {s.path: s for s in samples}
    train, val = split_stratified(strata, classes=groups, val_fraction=val_fraction, seed=seed)
    return sorted(by_path[s.path] for s in train), sorted(by_path[s.path] for s in val)
