"""Finding image files under paths the user gives; torch-free, so ONNX prediction can use it too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from regraft.errors import DataError

__all__ = ["list_images", "expand_paths"]


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    from regraft.data import IMAGE_EXTENSIONS

    folder = Path(folder)
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
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
