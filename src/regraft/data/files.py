"""Which files are images: extensions, the folder walk, paths the user names. Torch-free, so
``predict model.onnx`` and ``regraft scan`` use the same rules as training."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from regraft.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "VAL_DIR_NAMES", "walk_images", "list_images", "expand_paths"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
VAL_DIR_NAMES = ("val", "valid", "test")
_SKIP_DIRS = frozenset({"__MACOSX"})


def walk_images(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Image files under ``folder`` (recursively, sorted) and the non-image files skipped.

    Hidden files and folders (names starting with '.') and ``__MACOSX`` are left out of both.
    """
    images: list[str] = []
    others: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            (images if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else others).append(path)
    return sorted(images), sorted(others)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted; hidden files and folders left out)."""
    return [Path(p) for p in walk_images(folder)[0]]


def expand_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Images and folders of images -> image files; a missing path or no image at all is a DataError."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"no such image or folder: {p}")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return files
