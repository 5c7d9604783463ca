"""Writing run files so that a kill never leaves half of one, and reading them back as untrusted data.

Every file regraft writes into a run goes through :func:`atomic_write_bytes` (a temporary file in
the same folder, fsync, rename). That one place also turns the operating system's refusals
(disk full, permission denied, read-only file system, a path through a file) into a one-line
:class:`~regraft.errors.WriteError` naming the path, and records the file in the run's manifest
so that ``--overwrite`` later deletes exactly what the run wrote.

Readers (:func:`read_json_file`, :func:`read_text_file`, :func:`load_checkpoint`) treat a run
folder as data from a stranger: a missing, damaged, non-UTF-8 or oversized file becomes a
:class:`~regraft.errors.RunError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from regraft.errors import RunError, WriteError

log = logging.getLogger("regraft.runs")

# Names regraft keeps for itself inside a run folder (never listed in the manifest).
RUN_MARKER = ".regraft-run"  # written when regraft creates a run folder
MANIFEST = ".regraft-run.files"  # one path per line: every file the run wrote through atomic_write_bytes
LOCK_FILE = ".regraft-run.lock"  # the writer lock (filelock); stays in place, empty
OWNER_FILE = ".regraft-run.owner"  # who holds the lock: pid, host, command, start time
CONTROL_FILES = frozenset({RUN_MARKER, MANIFEST, LOCK_FILE, OWNER_FILE})
TMP_SUFFIX = ".tmp"  # atomic writes go through ".NAME.RANDOM.tmp" beside the target
MAX_RUN_FILE_BYTES = 64 * 2**20  # JSON/YAML/CSV files of a run are small; anything larger is not ours

_FIXES = {
    errno.ENOSPC: "no space left on the device: free some space or choose another --out",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another --out",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
    errno.EROFS: "read-only file system: choose a folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: choose a file name",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EEXIST: "a part of the path is a file, not a folder: choose another path",  # mkdir over a file
}


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """A one-line :class:`WriteError` for an ``OSError`` raised while writing ``path``."""
    fix = _FIXES.get(exc.errno or 0, f"{exc.strerror or exc}: check the path and the disk")
    error = WriteError(f"cannot write {path}: {fix}")
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(path)
    return error


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A run killed at any moment leaves the old file or the new one, never half of one; what a
    kill leaves behind is a ``.NAME.RANDOM.tmp`` file, removed the next time the run starts
    (:meth:`regraft.runs.RunDir.remove_stale_temp`).

    Returns:
        ``path``.

    Raises:
        WriteError: the disk is full, the folder is read-only or not writable, or a part of
            the path is a file (one line naming ``path``). It is also an ``OSError``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; run files are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    record_written(path)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the manifest

_RECORDED: set[tuple[str, str]] = set()  # (run root, relative path) already in a manifest, this process


def run_root_of(path: Path, *, levels: int = 3) -> Path | None:
    """The nearest run folder (holding :data:`RUN_MARKER`) among the ``levels`` folders above ``path``."""
    folder = path.parent
    for _ in range(levels):
        if _is_regular(folder / RUN_MARKER):
            return folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def record_written(path: Path) -> None:
    """Add ``path`` to the manifest of the run folder it lies in, if any (so overwrite can remove it)."""
    root = run_root_of(path)
    if root is None or path.name in CONTROL_FILES:
        return
    rel = path.relative_to(root).as_posix()
    if rel in CONTROL_FILES or (str(root), rel) in _RECORDED:
        return
    try:
        fd = os.open(root / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (rel + "\n").encode("utf-8"))  # one short O_APPEND write: atomic
        finally:
            os.close(fd)
    except OSError as exc:  # the file itself is written; only a later --overwrite would keep it
        log.debug("could not record %s in %s: %s", rel, root / MANIFEST, exc)
        return
    _RECORDED.add((str(root), rel))


def read_manifest(root: Path) -> list[str]:
    """The relative paths listed in ``root``'s manifest that are safe to act on (no ``..``, not absolute)."""
    path = root / MANIFEST
    if not _is_regular(path):
        return []
    try:
        text = _read_limited(path).decode("utf-8", errors="replace")
    except OSError:
        return []
    out: list[str] = []
    for line in text.splitlines():
        rel = line.strip()
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or rel in CONTROL_FILES:
            continue
        if rel not in out:
            out.append(rel)
    return out


# ----------------------------------------------------------------------------- readers


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_limited(path: Path, limit: int = MAX_RUN_FILE_BYTES) -> bytes:
    """The bytes of a regular file, refusing FIFOs, devices and files over ``limit`` before reading."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunError(f"{path} is not a regular file: replace it with the file regraft wrote, or start a new run")
        if info.st_size > limit:
            raise RunError(f"{path} is {info.st_size:,} bytes, far more than a run file holds: it is not one regraft wrote")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise RunError(f"{path} is larger than a run file can be: it is not one regraft wrote")
    return data


def read_text_file(path: str | os.PathLike, *, what: str = "run file") -> str:
    """The UTF-8 text of a run file.

    Raises:
        RunError: missing, not a regular file, too large, or not UTF-8 (names the file).
    """
    path = Path(path)
    try:
        data = _read_limited(path)
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the {what} is not complete") from None
    except IsADirectoryError:
        raise RunError(f"{path} is a folder, not a file: the {what} is damaged") from None
    except OSError as exc:
        raise RunError(f"cannot read {path} ({exc.strerror or exc}): check its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            f"the {what} is damaged; restore the file or start a new run"
        ) from None


def read_json_file(path: str | os.PathLike, *, what: str = "run file", expect: type | tuple[type, ...] = dict) -> Any:
    """A run's JSON file, parsed, and checked to be ``expect`` (a JSON object by default).

    Raises:
        RunError: missing, not UTF-8, invalid JSON, or not the expected kind of value (names the file).
    """
    path = Path(path)
    text = read_text_file(path, what=what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): the {what} is damaged; restore it or start a new run") from None
    if not isinstance(value, expect):
        kinds = " or ".join(_json_kind(t) for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise RunError(f"{path} holds {_json_kind(type(value))} where {kinds} was expected: the {what} is damaged")
    return value


def _json_kind(tp: type) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        tp, "null" if tp is type(None) else tp.__name__
    )


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` atomically. Keep ``state`` to tensors and plain Python values so
    that it loads back with ``torch.load(weights_only=True)``."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` (no code runs).

    Raises:
        RunError: no checkpoint, or a damaged one (truncated, not torch's format, code-bearing
            pickle, not a dict); the message names the file.
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.exists():
        raise RunError(f"no checkpoint at {path}: the run never finished an epoch; start it again without --resume")
    if not _is_regular(path):
        raise RunError(f"{path} is not a regular file: it is not a checkpoint regraft wrote")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = "holds objects other than tensors (a pickle that could run code)" if "weights only" in str(exc).lower() else "is not a checkpoint"
        raise RunError(f"checkpoint {path} {what}; it was not written by regraft: delete it and start again") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise RunError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: truncated or damaged); delete it and start again"
        ) from None
    if not isinstance(state, dict):
        raise RunError(f"checkpoint {path} holds a {type(state).__name__}, not regraft's dict of states; delete it and start again")
    return state
