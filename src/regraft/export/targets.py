"""Where an export may be written: never over another run's files, never into a run folder itself.

A folder belongs to a run when it holds the run marker (:data:`regraft.runs.RUN_MARKER`), a run's
``model.json`` (a model card without ``exports``) or a run's ``config.yaml`` (beside
``environment.json``, checkpoints, metrics, a summary or weights). An export may go
anywhere except into such a folder or below it -- with one exception, the exported run's own
``export/`` folder (and folders under it), where exports go by default. Writes that fail (a
read-only folder, a full disk, a file where a folder should be) become one :class:`ExportError`
line naming the path.

Example:
    >>> check_target(Path("runs/b/export/model.onnx"), run_path=Path("runs/b"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from regraft.errors import ExportError
from regraft.runs import atomic_write_bytes, is_run_folder

__all__ = ["check_target", "owning_run", "write_bytes", "HF_MARKER_KEY"]

HF_MARKER_KEY = "regraft"  # config.json of an hf export carries it; such a folder may be replaced
_RUN_FILES = ("environment.json", "checkpoints", "metrics.csv", "summary.json", "model.safetensors")


def _is_run_card(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > 4 << 20:
            return False
        card = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and str(card.get("format", "")).startswith("regraft-run") and "exports" not in card


def _is_run(folder: Path) -> bool:
    # a run's config.yaml never comes alone (a recipe named config.yaml does): training writes
    # environment.json with it, then metrics, checkpoints and the summary
    run_config = (folder / "config.yaml").is_file() and any((folder / name).exists() for name in _RUN_FILES)
    return is_run_folder(folder) or run_config or _is_run_card(folder / "model.json")


def owning_run(folder: Path) -> Path | None:
    """The run folder that ``folder`` is (or lies inside), or None."""
    folder = Path(os.path.abspath(folder))
    for candidate in (folder, *folder.parents):
        if _is_run(candidate):
            return candidate
    return None


def check_target(folder: Path, *, run_path: Path) -> None:
    """Refuse to export into ``folder`` when it is (or lies in) a run folder other than the
    exported run's own ``export/`` folder.

    Raises:
        ExportError: names the run the folder belongs to and where to write instead.
    """
    folder = Path(os.path.realpath(folder))
    own_export = Path(os.path.realpath(run_path)) / "export"
    if folder == own_export or own_export in folder.parents:
        return
    owner = owning_run(folder)
    if owner is None:
        return
    same = Path(os.path.realpath(owner)) == Path(os.path.realpath(run_path))
    whose = "the exported run's own folder" if same else "another run"
    raise ExportError(
        f"refusing to export into {folder}: it belongs to {whose} ({owner}), whose files an export must not replace; "
        f"pass --out to a folder of its own, or leave --out out to write into {own_export}"
    )


def write_bytes(path: Path, data: bytes) -> Path:
    """:func:`regraft.runs.atomic_write_bytes`, with OS errors as one ExportError line naming ``path``."""
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ExportError(f"cannot write {path}: {reason}; choose a writable --out") from None
