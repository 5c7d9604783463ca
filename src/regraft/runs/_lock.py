"""One writer per run folder: a ``filelock`` lock held for the whole run, with its holder on record.

The lock is ``filelock.FileLock`` on ``RUN/.regraft-run.lock`` (``flock`` on Unix: the kernel
drops it when the holder dies, however it dies). Beside it, ``RUN/.regraft-run.owner`` says who
holds it (pid, host, command, start time) so that a second writer's one-line error can name the
holder. The kernel drops the lock when its holder dies; the owner record it leaves is a stale
lock, found and replaced with a logged note when the next writer takes the lock.

:func:`lock_scope` (a decorator and a context manager) releases every lock taken inside it when
it ends, however it ends; ``regraft.training.run.train`` runs inside one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shlex
import socket
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from regraft.errors import RunError, RunInUseError
from regraft.runs._io import LOCK_FILE, OWNER_FILE, _read_limited, atomic_write_text, write_error

log = logging.getLogger("regraft.runs")

__all__ = ["LockHolder", "RunLock", "lock_scope"]


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a run folder's writer lock."""

    pid: int
    host: str
    command: str
    started: str

    @classmethod
    def current(cls, command: str | None = None) -> LockHolder:
        text = command or " ".join(shlex.quote(a) for a in ["regraft" if _is_cli() else Path(sys.argv[0]).name, *sys.argv[1:]])
        return cls(os.getpid(), socket.gethostname(), text[:300], _dt.datetime.now().isoformat(timespec="seconds"))

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, '{self.command}', started {self.started.replace('T', ' ')}"

    def is_gone(self) -> bool:
        """True when this holder's process surely no longer runs (same host, no such pid)."""
        if self.host != socket.gethostname():
            return False  # another machine: cannot tell
        if self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        except OSError:
            return False
        return False


def _is_cli() -> bool:
    return Path(sys.argv[0]).name in ("regraft", "__main__.py")


def read_holder(folder: Path) -> LockHolder | None:
    """The recorded holder of ``folder``'s lock, or None (no record, or an unreadable one)."""
    try:
        data = json.loads(_read_limited(folder / OWNER_FILE, 64 * 1024).decode("utf-8"))
        return LockHolder(int(data["pid"]), str(data["host"]), str(data["command"]), str(data["started"]))
    except (OSError, RunError, ValueError, KeyError, TypeError):
        return None


_SCOPES = threading.local()


class RunLock:
    """The writer lock of one run folder.

    Example:
        >>> lock = RunLock("runs/exp1")          # doctest: +SKIP
        >>> lock.acquire()                       # raises RunInUseError naming the holder
        >>> lock.release()
    """

    def __init__(self, folder: str | os.PathLike, *, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.command = command
        self._lock: Any = None
        self.holder: LockHolder | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> None:
        """Take the lock without waiting; a record left by a holder that died is noted as stale.

        Raises:
            RunInUseError: another live process holds it (the message names that process).
            WriteError: the lock file cannot be created (read-only folder, disk full).
        """
        if self.held:
            return
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.folder / LOCK_FILE), blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise RunInUseError(_in_use(self.folder, read_holder(self.folder))) from None
        except OSError as exc:
            raise write_error(self.folder / LOCK_FILE, exc) from None
        previous = read_holder(self.folder)
        if previous is not None and previous.pid != os.getpid():
            # flock is dropped by the kernel when its holder dies, however it dies: a record left
            # behind is a stale lock, and the lock is ours now
            log.warning("%s: the lock left by %s was stale (that process has ended); taking it over", self.folder, previous.describe())
        self._lock = lock
        self.holder = LockHolder.current(self.command)
        try:
            atomic_write_text(self.folder / OWNER_FILE, json.dumps(asdict(self.holder)) + "\n")
        except BaseException:
            self.release()
            raise
        stack = getattr(_SCOPES, "stack", None)
        if stack:
            stack[-1].append(self)

    def release(self) -> None:
        """Drop the lock and its owner record (does nothing when not held)."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            holder = read_holder(self.folder)
            if holder is not None and holder.pid == os.getpid():
                (self.folder / OWNER_FILE).unlink()
        with contextlib.suppress(Exception):
            self._lock.release(force=True)
        self._lock = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _in_use(folder: Path, holder: LockHolder | None) -> str:
    # a record of a process that has ended belongs to an earlier holder: the live one has not
    # written its own yet
    known = holder is not None and not holder.is_gone()
    who = holder.describe() if known else "another regraft process (it has not recorded itself yet)"
    return f"{folder} is in use by {who}: wait for it to finish or stop it, or choose another --out"


class lock_scope(contextlib.ContextDecorator):  # noqa: N801 - used as a decorator, named like one
    """Release every run lock taken inside this scope when it ends (returns or raises).

    Example:
        >>> @lock_scope()
        ... def train(cfg): ...                  # doctest: +SKIP
    """

    def __enter__(self) -> lock_scope:
        if not hasattr(_SCOPES, "stack"):
            _SCOPES.stack = []
        _SCOPES.stack.append([])
        return self

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(_SCOPES.stack.pop()):
            lock.release()
