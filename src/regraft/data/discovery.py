"""Find the images of a data set: folder layouts, CSV/TSV lists, class names and the split.

Layouts, tried in this order:

``csv``
    ``train_csv`` (and optionally ``val_csv``) list ``path,label`` rows; paths are relative to
    ``root``. Without ``val_csv`` the train rows are split like ``flat-split``.
``split:val`` / ``split:valid`` / ``split:test``
    ``root/train/<class>/`` and one of ``root/val/``, ``root/valid/``, ``root/test/`` (first found).
``flat-split``
    ``root/<class>/`` (or ``root/train/<class>/`` with no validation folder) split per class,
    ``val_fraction`` of each class to validation, deterministically from ``seed``.

With ``multilabel=True`` each image has any number of labels (a tuple of label indices); the
CSV and folder conventions are in ``regraft.data._multilabel`` and docs/data.md.

Class names are the sorted class folder names (or, for CSVs, the sorted train labels), unless a
classes file (one name per line) is given or ``root/classes.txt`` exists; its order then defines
the label indices. Hidden files and folders, ``__MACOSX`` and non-image extensions are ignored.

Example:
    >>> splits = discover("data/pets")      # doctest: +SKIP
    >>> splits.layout, len(splits.classes)
    ('split:val', 37)
"""

from __future__ import annotations

import os
from pathlib import Path

from regraft.data._layouts import check_data_folder, find_splits
from regraft.data.files import IMAGE_EXTENSIONS, VAL_DIR_NAMES
from regraft.data.splits import DataSplits, Sample, split_stratified

__all__ = ["Sample", "DataSplits", "discover", "check_data_folder", "split_stratified", "label_folders", "IMAGE_EXTENSIONS", "VAL_DIR_NAMES"]


def discover(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_csv: str | os.PathLike | None = None,
    val_csv: str | os.PathLike | None = None,
    classes_file: str | os.PathLike | None = None,
    multilabel: bool = False,
    label_sep: str = ";",
) -> DataSplits:
    """Find classes and train/validation samples under ``root`` (layouts in the module doc).

    Args:
        root: the data folder (CSV paths are relative to it).
        val_fraction: share of each class held out when the data has no validation split.
        seed: makes that split reproducible; the same seed gives the same split.
        train_csv, val_csv: ``path,label`` files (comma or tab separated, header optional; a
            label is a class name or an index into the class list).
        classes_file: class names, one per line (default ``root/classes.txt`` when present).
        multilabel: any number of labels per image (``regraft.data._multilabel``: CSV rows of
            ``path,labels``; label folders whose copies of one image are merged by content).
        label_sep: what separates an image's labels in a multi-label CSV cell.

    Returns:
        A :class:`DataSplits`; samples are sorted by path within each class.

    Raises:
        DataError: missing folder or file, no classes, a class without images, a validation
            class not in train, or a CSV label outside the class list (names file and row).
    """
    return find_splits(
        Path(root), val_fraction=val_fraction, seed=seed, train_csv=train_csv,
        val_csv=val_csv, classes_file=classes_file, problems=None, multilabel=multilabel, label_sep=label_sep,
    )


def label_folders(folder: str | os.PathLike, classes: list[str]) -> list[Sample]:
    """Multi-label images under ``folder/<label>/``, one sample per distinct image (copies in several
    label folders merged by content, as :func:`discover` does); label folders may be missing or empty.

    Raises:
        DataError: a label folder whose name is not in ``classes``.
    """
    from regraft.data._multilabel import label_folder_samples
    from regraft.data._rows import _Problems

    samples, _ = label_folder_samples(Path(folder), list(classes), _Problems(None), required=False)
    return samples
