"""The layouts behind :func:`regraft.data.discover`; strict (raise) or lenient (collect problems).

``regraft scan`` runs the same code leniently: every problem that would stop ``discover`` is
recorded as one line instead, so that a single scan lists all of them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from regraft.data._multilabel import find_multilabel_splits
from regraft.data._rows import (
    _as_int,
    _class_dirs,
    _classes_from_labels,
    _Problems,
    _read_classes_file,
    _read_rows,
    _resolve,
)
from regraft.data.files import IMAGE_EXTENSIONS, VAL_DIR_NAMES, walk_images
from regraft.data.splits import DataSplits, Sample, split_stratified
from regraft.errors import DataError

log = logging.getLogger("regraft.data.discovery")


def check_data_folder(root: str | os.PathLike) -> Path:
    """``root`` as an absolute path, if it is a folder (checked before a run folder is made for it).

    Raises:
        DataError: no folder there.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        what = f"{root} is a file, not a data folder" if root.exists() else f"data folder not found: {root}"
        raise DataError(f"{what}; pass a folder with train/ and val/ (class subfolders in each) or a folder of class subfolders")
    return root


def find_splits(
    root: Path, *, val_fraction: float, seed: int, train_csv, val_csv, classes_file, problems: list[str] | None,
    multilabel: bool = False, label_sep: str = ";",
) -> DataSplits:
    root = check_data_folder(root)
    report = _Problems(problems)
    class_list = _read_classes_file(root, classes_file)
    if multilabel:
        return find_multilabel_splits(root, val_fraction=val_fraction, seed=seed, train_csv=train_csv, val_csv=val_csv,
                                      class_list=class_list, label_sep=label_sep, report=report)
    if train_csv is not None or val_csv is not None:
        if train_csv is None:
            raise DataError("a validation CSV was given without a train CSV: pass --train-csv too")
        return _from_csv(root, train_csv, val_csv, class_list, val_fraction, seed, report)
    dirs = _class_dirs(root)
    lower = {name.lower(): path for name, path in dirs.items()}
    if "train" in lower:
        val_name = next((n for n in VAL_DIR_NAMES if n in lower), None)
        if val_name is not None:
            return _from_split_dirs(root, lower["train"], lower[val_name], f"split:{val_name}", class_list, report)
        log.info("%s has train/ but no val/, valid/ or test/: splitting train/ by val_fraction", root)
        return _from_flat(root, lower["train"], class_list, val_fraction, seed, report)
    return _from_flat(root, root, class_list, val_fraction, seed, report)


def _collect(folder: Path, classes: list[str], report: _Problems, *, required: bool) -> tuple[list[Sample], list[str]]:
    """Samples of each class folder under ``folder``; a class without images is an error if required."""
    dirs = _class_dirs(folder)
    unknown = sorted(set(dirs) - set(classes))
    if unknown:
        report.error(
            f"{folder} has class folders not in the class list: {', '.join(unknown)}; "
            "add them to the classes file (and train) or remove them"
        )
    samples: list[Sample] = []
    ignored: list[str] = []
    missing: list[str] = []
    for label, name in enumerate(classes):
        images, others = walk_images(dirs[name]) if name in dirs else ([], [])
        ignored.extend(others)
        samples.extend(Sample(p, label) for p in images)
        if not images:
            missing.append(name)
    loose, _ = _loose_images(folder)
    if loose:
        report.warn(f"{len(loose)} images directly in {folder} belong to no class (e.g. {loose[0]}): move them into a class folder")
    for name in missing:
        where = folder / name
        message = (
            f"class '{name}' has no images in {where}: add images or remove the folder"
            if where.is_dir()
            else f"class '{name}' has no folder in {folder}: add {where}/ with images, or remove it from the class list"
        )
        (report.error if required else report.warn)(message)
    return samples, ignored


def _loose_images(folder: Path) -> tuple[list[str], list[str]]:
    files = [e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    images = sorted(f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return images, files


def _from_flat(root: Path, folder: Path, class_list, val_fraction, seed, report: _Problems) -> DataSplits:
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(
            f"no class folders in {folder}: put each class's images in its own subfolder "
            f"(e.g. {folder / 'cat' / '001.jpg'}), or use train/ and val/ folders"
        )
    classes = class_list or sorted(dirs)
    samples, ignored = _collect(folder, classes, report, required=True)
    _require_images(samples, folder)
    train, val = split_stratified(samples, classes=classes, val_fraction=val_fraction, seed=seed)
    return DataSplits(classes, train, val, "flat-split", str(root), ignored)


def _from_split_dirs(root: Path, train_dir: Path, val_dir: Path, layout: str, class_list, report) -> DataSplits:
    train_dirs = _class_dirs(train_dir)
    if not train_dirs:
        raise DataError(f"no class folders in {train_dir}: put each class's images in {train_dir}/<class>/")
    classes = class_list or sorted(train_dirs)
    train, ignored = _collect(train_dir, classes, report, required=True)
    _require_images(train, train_dir)
    val, val_ignored = _collect(val_dir, classes, report, required=False)
    if not val:
        report.error(f"no images in {val_dir}: put validation images in {val_dir}/<class>/, or remove the folder to split train/")
    return DataSplits(classes, train, val, layout, str(root), ignored + val_ignored)


def _require_images(samples: list[Sample], folder: Path) -> None:
    if not samples:
        raise DataError(f"no images found under {folder}: expected .jpg/.png/... files in class subfolders")


def _from_csv(root: Path, train_csv, val_csv, class_list, val_fraction, seed, report: _Problems) -> DataSplits:
    train_path = _resolve(root, train_csv, what="train CSV")
    train_rows = _read_rows(train_path)
    if not train_rows:
        raise DataError(f"{train_path} has no rows: expected lines of 'path,label'")
    classes = class_list or _classes_from_labels([label for _, label, _ in train_rows])
    source = "the classes file" if class_list else f"the labels of {train_path.name}"
    train = _label_rows(root, train_path, train_rows, classes, source, report, by_index=class_list is not None)
    empty = [c for i, c in enumerate(classes) if not any(s.label == i for s in train)]
    if empty:
        report.error(f"classes with no training rows in {train_path}: {', '.join(empty)}; add rows or remove them from the class list")
    if val_csv is None:
        train, val = split_stratified(train, classes=classes, val_fraction=val_fraction, seed=seed)
    else:
        val_path = _resolve(root, val_csv, what="validation CSV")
        val = _label_rows(root, val_path, _read_rows(val_path), classes, source, report, by_index=class_list is not None)
        if not val:
            report.error(f"{val_path} has no usable rows: expected lines of 'path,label'")
    return DataSplits(classes, train, val, "csv", str(root), [])


def _label_rows(root: Path, csv_path: Path, rows, classes: list[str], source: str, report: _Problems, *, by_index: bool) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    samples: list[Sample] = []
    for rel, label, line in rows:
        number = _as_int(label)
        if label in index:
            idx = index[label]
        elif number is not None and str(number) in index:
            idx = index[str(number)]
        elif by_index and number is not None and 0 <= number < len(classes):
            idx = number
        else:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            report.error(
                f"{csv_path}:{line}: label '{label}' is not one of the {len(classes)} classes "
                f"({shown}) from {source}; fix the row or add the class"
            )
            continue
        path = rel if os.path.isabs(rel) else os.path.join(str(root), rel)
        samples.append(Sample(path, idx))
    return samples
