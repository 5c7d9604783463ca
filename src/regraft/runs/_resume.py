"""Resume validates before it writes: every file a resume needs is read and checked first.

:func:`prepare_resume` reads ``config.yaml`` (as untrusted data: no permission keys), ``model.json``
and ``checkpoints/last.pt`` (``weights_only``) and checks them against each other before the
run is touched. A failed check is a one-line :class:`~regraft.errors.RunError` naming the damaged
file, and the run stays byte-for-byte as it was. A run killed before its first checkpoint
resumes by starting again from the beginning (:attr:`ResumeState.checkpoint` is None).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regraft.config import Config
from regraft.errors import ConfigError, RunError
from regraft.runs._folder import RunKind, read_marker, remove_stale_temp
from regraft.runs._io import load_checkpoint, read_json_file, read_text_file

log = logging.getLogger("regraft.runs")

CHECKPOINT = "checkpoints/last.pt"
# Settings that may differ between the checkpoint and the resumed run: where and how it runs,
# more epochs, and the permissions that only the command line gives.
VOLATILE_KEYS = frozenset({"out", "device", "workers", "cache_ram", "cache_dir", "epochs", "trust_checkpoint", "overwrite"})


@dataclass
class ResumeState:
    """What :func:`prepare_resume` read and checked.

    ``checkpoint`` is None when the run never saved one (killed during its first epoch or its
    first checkpoint write): the run then starts again from the beginning.
    """

    path: Path
    config: Config
    card: dict[str, Any] | None
    checkpoint: dict[str, Any] | None
    note: str = ""

    @property
    def epoch(self) -> int:
        return int(self.checkpoint["fit"]["epoch"]) if self.checkpoint is not None else 0

    def check_classes(self, classes: list[str]) -> None:
        """Refuse to resume on data whose classes differ from the ones the run trained on."""
        if self.card is not None and list(self.card.get("classes", classes)) != list(classes):
            raise RunError(
                f"cannot resume {self.path}: the data now has classes {list(classes)}, the run trained on "
                f"{self.card['classes']}; restore the data folder or start a new run"
            )

    @contextlib.contextmanager
    def restoring(self, run: Any = None, *, classes: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Around loading :attr:`checkpoint` into the model: a mismatch becomes one RunError line,
        and once it loaded, stale temporary files of ``run`` (a ``RunDir``, when it holds the lock) are removed."""
        if classes is not None:
            self.check_classes(classes)
        if self.checkpoint is None:
            raise RunError(f"{self.path} has no checkpoint to restore")
        try:
            yield self.checkpoint
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise RunError(
                f"{self.path / CHECKPOINT} does not fit the model built from its config.yaml ({first}); "
                "the run folder was changed or comes from another regraft version: start a new run"
            ) from None
        if run is not None and run.locked:
            remove_stale_temp(run.path)


def read_config(path: str | os.PathLike, *, what: str = "run", notes: list[str] | None = None) -> Config:
    """A run's ``config.yaml`` as untrusted data: permission keys (trust_checkpoint, overwrite)
    are dropped (one line each appended to ``notes``), every value is validated by the one schema.

    Raises:
        RunError: the file is missing, not UTF-8, not YAML or not a mapping (names the file).
        ConfigError: a key is unknown or a value out of range (names the file and the key).
    """
    import yaml

    path = Path(path)
    text = read_text_file(path, what=what)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunError(f"{path} is not valid YAML ({' '.join(str(exc).split())[:200]}): the {what} is damaged") from None
    if not isinstance(values, dict):
        raise RunError(f"{path} holds no mapping of settings: the {what} is damaged")
    from regraft.config import drop_untrusted

    return Config.from_dict(drop_untrusted(values, source=str(path), notes=notes), source=str(path))


def prepare_resume(path: str | os.PathLike, *, config: Config | None = None) -> ResumeState:
    """Read and check everything a resume of ``path`` needs, writing nothing.

    Args:
        path: the run folder.
        config: the settings the resumed run will use (default: the run's ``config.yaml``); they
            must agree with the checkpoint's except for :data:`VOLATILE_KEYS`.

    Returns:
        A :class:`ResumeState`; its ``checkpoint`` is None when the run must start again.

    Raises:
        RunError: not a training run folder, or a file is missing, damaged or inconsistent
            with the others (the message names the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"cannot resume {path}: {'it is a file, not a run folder' if path.exists() else 'no such folder'}")
    marker = read_marker(path)
    if marker is not None and marker.kind != RunKind.TRAIN.value:
        raise RunError(f"cannot resume {path}: it holds a regraft {marker.kind} run, not a training run")
    if not (path / "config.yaml").exists():
        raise RunError(f"cannot resume {path}: it has no config.yaml (is it a run folder?)")
    file_config = read_config(path / "config.yaml")
    config = config or file_config
    card = read_json_file(path / "model.json", what="run") if (path / "model.json").exists() else None
    if card is not None:
        _check_card(path / "model.json", card)
    if not (path / CHECKPOINT).exists():
        if (path / "summary.json").exists():
            raise RunError(f"cannot resume {path}: it is finished but its {CHECKPOINT} is gone, so there is nothing to continue from")
        note = f"{path} has no checkpoint yet (stopped before its first epoch was saved): starting it again from the beginning"
        return ResumeState(path, config, card, None, note)
    checkpoint = load_checkpoint(path / CHECKPOINT)
    _check_checkpoint(path / CHECKPOINT, checkpoint, config)
    for name, values in (("config.yaml", file_config), ("the config given", config)):
        _check_same_config(path, checkpoint, values, name)
    if card is not None:
        _check_head(path, card, checkpoint)
    return ResumeState(path, config, card, checkpoint)


def _check_card(path: Path, card: Mapping[str, Any]) -> None:
    classes = card.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or len(classes) < 2:
        raise RunError(f"{path} has no valid 'classes' list: the run is damaged")
    if card.get("num_classes", len(classes)) != len(classes):
        raise RunError(f"{path} says num_classes {card.get('num_classes')} but lists {len(classes)} classes: the run is damaged")


def _check_checkpoint(path: Path, checkpoint: dict[str, Any], config: Config) -> None:
    for key, kind in (("model", Mapping), ("optimizer", Mapping), ("fit", Mapping)):
        if not isinstance(checkpoint.get(key), kind):
            raise RunError(f"checkpoint {path} has no '{key}' state: it was not written by regraft's training loop")
    epoch = checkpoint["fit"].get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise RunError(f"checkpoint {path} records epoch {epoch!r}: it is damaged")
    if epoch > config.epochs:
        raise RunError(f"checkpoint {path} is after epoch {epoch} but the run has {config.epochs} epochs: the config does not belong to it")


def _check_same_config(path: Path, checkpoint: dict[str, Any], config: Config, name: str) -> None:
    saved = checkpoint.get("config")
    if not isinstance(saved, Mapping):
        return  # checkpoints of older versions carry no config
    try:
        saved_cfg = Config.from_dict(dict(saved), source=f"{path / CHECKPOINT}")
    except ConfigError as exc:
        raise RunError(f"the config inside {path / CHECKPOINT} is invalid ({exc}); the checkpoint is damaged") from None
    ours, theirs = config.to_dict(), saved_cfg.to_dict()
    differ = sorted(k for k in ours if k not in VOLATILE_KEYS and ours[k] != theirs.get(k))
    if differ:
        raise RunError(
            f"cannot resume {path}: {name} differs from the config saved in {CHECKPOINT} in {', '.join(differ)}; "
            "a resumed run keeps its settings: restore them, or start a new run with --config"
        )


def _check_head(path: Path, card: Mapping[str, Any], checkpoint: dict[str, Any]) -> None:
    head = (card.get("architecture") or {}).get("head")
    weight = checkpoint["model"].get(f"{head}.weight") if isinstance(head, str) else None
    rows = getattr(weight, "shape", (None,))[0] if weight is not None else None
    if rows is not None and rows != card["num_classes"]:
        raise RunError(
            f"{path / 'model.json'} lists {card['num_classes']} classes but the checkpoint's head has {rows} outputs: "
            "the run folder was changed; restore it or start a new run"
        )
