"""The run-folder contract: what a run folder holds, who may write it, what regraft may delete,
and what is read from it as untrusted data. The one owner of these rules.

- **Marker.** A run folder is made by :meth:`RunDir.create`, which writes ``.regraft-run`` (id,
  kind, time, version). Only marked folders are regraft's to clear; a non-empty folder without the
  marker is refused in one line naming what it holds. No run folder is made inside a data folder.
- **What may be deleted.** ``--overwrite`` clears a marked folder of the same kind, and only the
  files its run wrote (the manifest kept by :func:`atomic_write_bytes`, see ``_folder``).
- **One writer.** A run folder is written under a ``filelock`` lock held for the whole run
  (:class:`RunLock`); a second writer gets one line naming the holder; a stale lock is broken
  with a note.
- **Atomic writes.** Every file goes through :func:`atomic_write_bytes`: a kill leaves the old file
  or the new one, and its stale ``.tmp`` is removed on the next start; an ``OSError`` (disk full,
  read-only) becomes one line naming the path.
- **Untrusted reads.** :func:`read_config`, :func:`read_json_file`, :func:`load_checkpoint` and
  :func:`prepare_resume` read run files as data from a stranger: damaged files become one-line
  :class:`~regraft.errors.RunError`\\ s naming the file; ``config.yaml`` never carries
  ``trust_checkpoint``; checkpoints load with ``weights_only=True``.

Example:
    >>> with RunDir.create("runs/exp1", kind="train") as run:       # doctest: +SKIP
    ...     run.write_json("summary.json", {"best_val_acc": 0.9})
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regraft.errors import RunError
from regraft.runs._folder import (
    RunKind,
    RunMarker,
    check_outside_data,
    clear_run,
    describe_names,
    is_run_folder,
    read_marker,
    record_sub_run,
    remove_stale_temp,
    stale_temp_files,
    user_entries,
    write_marker,
)
from regraft.runs._io import (
    LOCK_FILE,
    MANIFEST,
    OWNER_FILE,
    RUN_MARKER,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    read_json_file,
    read_manifest,
    read_text_file,
    save_checkpoint,
    write_error,
)
from regraft.runs._lock import LockHolder, RunLock, lock_scope, read_holder
from regraft.runs._resume import CHECKPOINT, ResumeState, prepare_resume, read_config

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "RunDir",
    "RunKind",
    "RunMarker",
    "RunLock",
    "LockHolder",
    "ResumeState",
    "lock_scope",
    "prepare_resume",
    "read_config",
    "read_json_file",
    "read_text_file",
    "read_marker",
    "read_holder",
    "read_manifest",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_error",
    "save_checkpoint",
    "load_checkpoint",
    "is_run_folder",
    "stale_temp_files",
    "RUN_MARKER",
    "MANIFEST",
    "LOCK_FILE",
    "OWNER_FILE",
    "CHECKPOINT",
]

log = logging.getLogger("regraft.runs")


class RunDir:
    """A run folder and the names of the files in it (the contract in docs/architecture.md).

    ``RunDir(path)`` is a plain handle (readers, and writers for library use); :meth:`create`
    and :meth:`open` are how commands start writing a run: they check the folder and hold its
    writer lock until :meth:`close` (or the end of a :func:`lock_scope`, or a ``with`` block).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock: RunLock | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- starting to write a run

    @classmethod
    def create(
        cls, path: str | os.PathLike, *, kind: str | RunKind = RunKind.TRAIN, overwrite: bool = False,
        data: str | os.PathLike | None = None, command: str | None = None,
    ) -> RunDir:
        """Make (or, with ``overwrite``, clear and reuse) a run folder and hold its writer lock.

        A new, empty or marked folder of the same ``kind`` is accepted. ``overwrite`` deletes
        only what the previous run of that folder wrote; an lr-find folder is always replaced
        by the next lr-find.

        Args:
            path: the run folder (``--out``).
            kind: ``train``, ``lr-find`` or ``compare``.
            overwrite: replace the run already in ``path``.
            data: the data folder; ``path`` may not be it or lie inside it.
            command: how to name this writer to a second one (default: the command line).

        Returns:
            The locked :class:`RunDir`; its marker is written.

        Raises:
            RunError: ``path`` is a file, lies in the data folder, holds files but no marker,
                holds a run of another kind, or a run and ``overwrite`` is False.
            RunInUseError: another process is writing ``path``.
            WriteError: the folder cannot be written.
        """
        kind = RunKind.parse(kind)
        run = cls(path)
        check_outside_data(run.path, data)
        run._check_foreign()  # before anything is written: a folder that is not a run is never touched
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(run.path, exc) from None
        run.lock(command=command)  # a second writer is told who holds the run before anything else
        try:
            run._check_target(kind, overwrite=overwrite)  # now that no one else writes
            if user_entries(run.path) and read_marker(run.path) is not None:
                kept = clear_run(run.path)
                if kept:
                    log.warning("%s: kept %s (not written by regraft)", run.path, describe_names(kept))
            remove_stale_temp(run.path)
            write_marker(run.path, kind)
            record_sub_run(run.path)
        except BaseException:
            run.close()
            raise
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, *, kind: str | RunKind | None = None, lock: bool = False, command: str | None = None) -> RunDir:
        """An existing run folder, optionally locked for writing (``resume``); writes nothing else.

        Raises:
            RunError: not a folder, or a run of another ``kind`` (a folder without marker passes:
                runs of earlier versions have none).
            RunInUseError: ``lock`` and another process is writing it.
        """
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"run folder not found: {run.path}" if not run.path.exists() else f"{run.path} is a file, not a run folder")
        marker = read_marker(run.path)
        if kind is not None and marker is not None and marker.kind != RunKind.parse(kind).value:
            raise RunError(f"{run.path} holds a regraft {marker.kind} run, not a {RunKind.parse(kind).value} run")
        if lock:
            run.lock(command=command)
        return run

    @classmethod
    def prepare(cls, path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> RunDir:
        """Earlier API: :meth:`open` (locked) with ``resume``, else :meth:`create` of a training run."""
        if resume:
            run = cls.open(path, kind=RunKind.TRAIN, lock=True)
            if not run.checkpoint.is_file():
                run.close()
                raise RunError(f"cannot resume {run.path}: no {CHECKPOINT} in it")
            return run
        return cls.create(path, kind=RunKind.TRAIN, overwrite=overwrite)

    def _check_foreign(self) -> RunMarker | None:
        """Refuse a file, or a non-empty folder without a (sound) marker; return the marker."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file, not a folder: choose a folder path for the run")
        marker = read_marker(path) if path.is_dir() else None
        names = user_entries(path)
        if marker is None and names:
            raise RunError(
                f"{path} is not empty and is not a regraft run folder (it holds {describe_names(names)}); "
                "regraft writes only into new, empty or its own run folders: choose another --out"
            )
        return marker

    def _check_target(self, kind: RunKind, *, overwrite: bool) -> None:
        marker = self._check_foreign()
        path, names = self.path, user_entries(self.path)
        if marker is None:
            return
        if marker.kind != kind.value:
            raise RunError(f"{path} holds a regraft {marker.kind} run; {_article(kind.value)} run never replaces it: choose another --out")
        if names and not overwrite and kind is not RunKind.LR_FIND:
            raise RunError(
                f"run folder {path} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or --out NEW_FOLDER"
            )

    # --- the writer lock

    def lock(self, *, command: str | None = None) -> RunLock:
        """Take this folder's writer lock (held until :meth:`close`).

        Raises:
            RunInUseError: another process holds it (named in the message).
        """
        if self._lock is None or not self._lock.held:
            self._lock = RunLock(self.path, command=command)
            self._lock.acquire()
        return self._lock

    @property
    def locked(self) -> bool:
        return self._lock is not None and self._lock.held

    def close(self) -> None:
        """Release the writer lock (nothing else changes)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def marker(self) -> RunMarker | None:
        return read_marker(self.path)

    def remove_stale_temp(self) -> list[Path]:
        """Delete ``.tmp`` files left by killed writes; only while this handle holds the lock."""
        return remove_stale_temp(self.path) if self.locked else []

    # --- writers
    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_text(self.path / name, json.dumps(data, indent=2, default=_jsonable) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def write_metrics(self, rows: list[dict[str, Any]], name: str = "metrics.csv") -> Path:
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        return atomic_write_text(self.path / name, buf.getvalue())

    def save_weights(self, model: nn.Module, name: str = "model.safetensors", *, metadata: dict | None = None) -> Path:
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # safetensors refuses tensors that share storage; clone the rare shared ones
        state = {k: v.clone() for k, v in state.items()}
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        return atomic_write_bytes(self.path / name, save(state, metadata=meta))

    # --- readers (untrusted: a damaged file is one RunError line naming it)
    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.exists():
            raise RunError(f"{self.path} is not a finished run: {name} is missing")
        return read_json_file(p, expect=(dict, list))

    def read_config(self) -> Any:
        """``config.yaml`` as a validated :class:`~regraft.config.Config` without permission keys."""
        return read_config(self.path / "config.yaml")

    def read_metrics(self, name: str = "metrics.csv") -> list[dict[str, Any]]:
        p = self.path / name
        if not p.is_file():
            return []
        text = read_text_file(p)
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text, newline=""))]

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _parse(v: str | None) -> Any:
    if v is None or v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiol" else f"a {word}"
