"""What a folder holds and what regraft may delete from it: the marker, the manifest, stale temp files.

regraft only deletes what it made: a folder is a run folder when it holds the marker
(``.regraft-run``, written at creation, with the run's id and kind), and clearing it removes the
files its manifest lists (everything the run wrote through the atomic writer), the few files a
run writes otherwise (``skipped_files.txt``, ``logs/``), stale ``.tmp`` files and sub-runs it made
(``compare``'s per-strategy runs), never following a symbolic link. Anything else stays.
"""

from __future__ import annotations

import datetime as _dt
import enum
import logging
import os
import re
import shutil
import stat
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from regraft.errors import RunError
from regraft.runs._io import (
    _RECORDED,
    CONTROL_FILES,
    MANIFEST,
    RUN_MARKER,
    _is_regular,
    atomic_write_text,
    read_json_file,
    read_manifest,
    record_written,
)

log = logging.getLogger("regraft.runs")

# What a run writes without the atomic writer, so the manifest cannot list it: always the run's.
UNRECORDED = ("skipped_files.txt", "logs")
_STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # ".NAME.RANDOM.tmp" from tempfile.mkstemp


class RunKind(str, enum.Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """What made a run folder; ``--overwrite`` replaces only a folder of the same kind."""

    TRAIN = "train"
    LR_FIND = "lr-find"
    COMPARE = "compare"

    @classmethod
    def parse(cls, value: str | RunKind) -> RunKind:
        try:
            return cls(value)
        except ValueError:
            raise RunError(f"run kind must be one of {', '.join(k.value for k in cls)}; got '{value}'") from None


@dataclass(frozen=True)
class RunMarker:
    """The content of ``.regraft-run``: which run this folder holds."""

    id: str
    kind: str
    created: str
    regraft: str


def write_marker(folder: Path, kind: RunKind) -> RunMarker:
    from regraft._version import __version__

    marker = RunMarker(uuid.uuid4().hex, kind.value, _dt.datetime.now().isoformat(timespec="seconds"), __version__)
    import json

    atomic_write_text(folder / RUN_MARKER, json.dumps(asdict(marker), indent=2) + "\n")
    return marker


def read_marker(folder: str | os.PathLike) -> RunMarker | None:
    """``folder``'s marker, or None when it has none.

    Raises:
        RunError: the marker is there but damaged (not a regular file, not the JSON regraft writes).
    """
    path = Path(folder) / RUN_MARKER
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunError(f"cannot read {path} ({exc.strerror}): check the folder's permissions") from None
    if not stat.S_ISREG(mode):
        raise RunError(f"{path} is not a regular file: the run marker is damaged; regraft will not change this folder")
    data = read_json_file(path, what="run marker")
    try:
        marker = RunMarker(**{k: str(data[k]) for k in ("id", "kind", "created", "regraft")})
    except KeyError as exc:
        raise RunError(f"{path} has no '{exc.args[0]}': the run marker is damaged; regraft will not change this folder") from None
    if marker.kind not in {k.value for k in RunKind}:
        raise RunError(f"{path} names an unknown run kind '{marker.kind}': the run marker is damaged")
    return marker


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder regraft created as a run (it holds :data:`RUN_MARKER`)."""
    return _is_regular(Path(path) / RUN_MARKER)


def user_entries(folder: Path) -> list[str]:
    """Names in ``folder`` other than regraft's own control files (folders end with '/')."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in entries if e.name not in CONTROL_FILES]


def describe_names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_outside_data(out: Path, data: str | os.PathLike | None) -> None:
    """Refuse a run folder that is the data folder or lies inside it.

    Raises:
        RunError: ``out`` is ``data`` or inside it.
    """
    if not data:
        return
    out_real, data_real = Path(os.path.realpath(out)), Path(os.path.realpath(data))
    if out_real == data_real or data_real in out_real.parents:
        raise RunError(
            f"--out {out} is inside the data folder {data}: regraft never writes into a data folder "
            "(a run there would be read as a class); choose --out outside it"
        )


def stale_temp_files(folder: Path, *, depth: int = 3) -> list[Path]:
    """``.NAME.RANDOM.tmp`` files a killed atomic write left in ``folder`` (sub-runs excluded)."""
    found: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            sub = Path(entry.path)
            if depth > 1 and not is_run_folder(sub):
                found += stale_temp_files(sub, depth=depth - 1)
        elif entry.is_file(follow_symlinks=False) and _STALE_TMP.match(entry.name):
            found.append(Path(entry.path))
    return sorted(found)


def remove_stale_temp(folder: Path) -> list[Path]:
    """Delete the stale temporary files of ``folder`` (call only while holding its lock)."""
    removed = []
    for path in stale_temp_files(folder):
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed.append(path)
        log.info("removed %s (%s bytes) left by an interrupted write", path, f"{size:,}")
    return removed


def clear_run(folder: Path) -> list[str]:
    """Delete what the run in ``folder`` wrote (call only while holding its lock).

    Returns:
        The names left in place because regraft did not write them.

    Raises:
        RunInUseError: a sub-run of this folder is being written by another process.
    """
    from regraft.runs._lock import RunLock

    touched: set[Path] = set()
    for rel in sorted(set(read_manifest(folder)) | set(UNRECORDED)):
        touched |= _remove_entry(folder, rel, RunLock)
    for path in remove_stale_temp(folder):
        touched.add(path.parent)
    for parent in sorted(touched, key=lambda p: len(p.parts), reverse=True):
        _remove_empty_dirs(parent, stop=folder)
    (folder / MANIFEST).unlink(missing_ok=True)
    for key in [k for k in _RECORDED if k[0] == str(folder)]:
        _RECORDED.discard(key)
    return user_entries(folder)


def _remove_entry(folder: Path, rel: str, lock_cls) -> set[Path]:
    """Remove ``folder/rel`` without following a symbolic link anywhere on the way."""
    current = folder
    for part in Path(rel).parts[:-1]:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return set()  # a link or a file where a folder was: never delete through it
        except OSError:
            return set()
    target = folder / rel
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return set()
    if not stat.S_ISDIR(mode):
        target.unlink()
    elif is_run_folder(target):  # a run this one made (compare's per-strategy runs)
        with lock_cls(target):
            left = clear_run(target)
            if not left:
                (target / RUN_MARKER).unlink(missing_ok=True)
        _remove_control_files(target)
        _remove_empty_dirs(target, stop=folder)
    elif rel in UNRECORDED:
        shutil.rmtree(target)  # never follows the links inside it
    return {target.parent}


def _remove_control_files(folder: Path) -> None:
    if user_entries(folder) or (folder / RUN_MARKER).exists():
        return
    for name in CONTROL_FILES:
        (folder / name).unlink(missing_ok=True)


def _remove_empty_dirs(path: Path, *, stop: Path) -> None:
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def record_sub_run(folder: Path) -> None:
    """List a new run folder in the manifest of the run folder it lies in (compare's sub-runs)."""
    if is_run_folder(folder.parent):
        record_written(folder)
