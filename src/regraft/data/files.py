"""Which files are images and how their bytes are read: extensions, the folder walk, paths the
user names, and the rule every reader passes (a regular file after resolving symlinks, at most
:func:`max_image_bytes`, checked before reading). Torch-free, so ``predict model.onnx`` and
``regraft scan`` use the same rules as training.

The size cap is 256 MB per image file; ``REGRAFT_MAX_IMAGE_MB`` (or ``--max-image-mb`` on the
command line) changes it. A FIFO, device or socket is never opened for a blocking read: it is
reported as "not a regular file", so a named pipe cannot hang a scan and a link to ``/dev/zero``
cannot fill memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from regraft.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS", "VAL_DIR_NAMES", "MAX_IMAGE_MB_ENV", "DEFAULT_MAX_IMAGE_MB", "FileRefused",
    "walk_images", "list_images", "expand_paths", "max_image_bytes", "read_file_bytes", "read_text",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm",
     ".npy"}
)
VAL_DIR_NAMES = ("val", "valid", "test")
_SKIP_DIRS = frozenset({"__MACOSX"})
MAX_IMAGE_MB_ENV = "REGRAFT_MAX_IMAGE_MB"
DEFAULT_MAX_IMAGE_MB = 256
MAX_TEXT_BYTES = 1024 * 2**20  # CSVs and class lists: far beyond any real one, far below memory
_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
)


class FileRefused(DataError):
    """A file regraft will not read: ``kind`` is ``missing``, ``unreadable``, ``not-regular`` or ``too-large``."""

    def __init__(self, path: str | os.PathLike, kind: str, reason: str, message: str | None = None) -> None:
        self.path, self.kind, self.reason = str(path), kind, reason
        super().__init__(message or f"cannot read {path}: {reason}")


def max_image_bytes() -> int:
    """The largest image file read, in bytes: ``$REGRAFT_MAX_IMAGE_MB`` megabytes (default 256).

    Raises:
        ConfigError: the variable is set to something other than a positive number.
    """
    text = os.environ.get(MAX_IMAGE_MB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_MB * 2**20
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{MAX_IMAGE_MB_ENV} must be a positive number of megabytes (e.g. 512); got '{text}'")
    return int(value * 2**20)


def read_file_bytes(path: str | os.PathLike, *, limit: int | None = None) -> bytes:
    """The bytes of a regular file (symlinks resolved), refusing anything else before reading.

    The file is opened without blocking and checked on the open descriptor (no race with a
    swapped file): FIFOs, devices, sockets and folders are refused, and so is a file larger
    than ``limit`` (default :func:`max_image_bytes`), by its size before reading and by what
    is read (a file that grows, or lies about its size as ``/proc`` files do).

    Raises:
        FileRefused: ``kind`` missing, unreadable, not-regular or too-large.
    """
    limit = max_image_bytes() if limit is None else limit
    with _open_regular(path, limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise _too_large(path, limit)
    return data


def _open_regular(path: str | os.PathLike, limit: int):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileRefused(path, "missing", "file not found") from None
    except IsADirectoryError:
        raise FileRefused(path, "not-regular", "not a regular file (a folder)") from None
    except OSError as exc:
        raise FileRefused(path, "unreadable", f"cannot read the file ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
            raise FileRefused(path, "not-regular", f"not a regular file ({what})")
        if info.st_size > limit:
            raise _too_large(path, limit, info.st_size)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _too_large(path: str | os.PathLike, limit: int, size: int | None = None) -> FileRefused:
    actual = f"{_size(size)}, " if size is not None else ""
    return FileRefused(
        path, "too-large",
        f"file too large ({actual}over the {_size(limit)} limit; raise it with --max-image-mb or {MAX_IMAGE_MB_ENV})",
    )


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:,.4g} MB"
    return f"{n / 2**10:,.4g} KB" if n >= 2**10 else f"{n} bytes"


def open_image_file(path: str | os.PathLike):
    """A binary file object of an image file that passed the rule of :func:`read_file_bytes`.

    Raises:
        FileRefused: as :func:`read_file_bytes`.
    """
    return _open_regular(path, max_image_bytes())


def read_text(path: str | os.PathLike, *, what: str) -> str:
    """A text file the user gave (CSV, class list) as UTF-8 (a BOM is dropped).

    Raises:
        DataError: missing, not a regular file, too large, or not UTF-8 (names the file and ``what``).
    """
    try:
        data = read_file_bytes(path, limit=MAX_TEXT_BYTES)
    except FileRefused as exc:
        raise DataError(f"cannot read the {what} {path}: {exc.reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"the {what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): save it as UTF-8"
        ) from None


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
        elif os.path.lexists(p) and p.exists():  # any file, even a FIFO: reading it says what is wrong
            files.append(p)
        else:
            raise DataError(f"no such image or folder: {p}")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return files
