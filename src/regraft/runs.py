"""The run folder: its layout, atomic writes, checkpoints, and loading a finished run back.

Every file regraft writes into a run goes through :func:`atomic_write_bytes` (temporary file in
the same folder, fsync, rename), so a run killed at any moment leaves either the old file or the
new one, never half of one.

Example:
    >>> run = RunDir("runs/exp1")            # doctest: +SKIP
    >>> run.write_json("summary.json", {"best_val_acc": 0.9})  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regraft.errors import RunError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "RUN_MARKER",
    "is_run_folder",
]

CHECKPOINT = "checkpoints/last.pt"
# Written when regraft creates a run folder; only folders holding it are regraft's to change or clear.
RUN_MARKER = ".regraft-run"


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder regraft created as a run (it holds :data:`RUN_MARKER`)."""
    return (Path(path) / RUN_MARKER).is_file()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; run files are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` atomically. Keep ``state`` to tensors and plain Python values so
    that it loads back with ``torch.load(weights_only=True)``."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}: the run never finished an epoch; start it again without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file is the only way here; say so
        raise RunError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}); delete it and start again") from exc


class RunDir:
    """A run folder and the names of the files in it (the contract in docs/architecture.md)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def prepare(cls, path: str | Path, *, overwrite: bool = False, resume: bool = False) -> RunDir:
        """Create (or reuse, with ``resume``/``overwrite``) a run folder and check it is writable.

        Raises:
            RunError: the folder holds a run and neither ``overwrite`` nor ``resume`` was given,
                or it cannot be written.
        """
        run = cls(path)
        existing = run.path.exists() and any(run.path.iterdir())
        if existing and not (overwrite or resume):
            raise RunError(
                f"run folder {run.path} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or --out NEW_FOLDER"
            )
        if resume and not (run.path / CHECKPOINT).is_file():
            raise RunError(f"cannot resume {run.path}: no {CHECKPOINT} in it")
        if existing and overwrite and not resume:
            _clear_run(run.path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            probe = run.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"cannot write to run folder {run.path}: {exc.strerror}; choose another --out") from exc
        return run

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

    # --- readers
    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.is_file():
            raise RunError(f"{self.path} is not a finished run: {name} is missing")
        return json.loads(p.read_text())

    def read_metrics(self, name: str = "metrics.csv") -> list[dict[str, Any]]:
        p = self.path / name
        if not p.is_file():
            return []
        with p.open(newline="") as fh:
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT


def _clear_run(path: Path) -> None:
    import shutil

    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _parse(v: str) -> Any:
    if v == "":
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
