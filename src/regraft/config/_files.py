"""Reading settings from files and from ``--set``: as untrusted data, with one-line errors.

A recipe or a run's ``config.yaml`` may come from a stranger. Only a regular UTF-8 file of
reasonable size is read, and the permission keys (:data:`UNTRUSTED_KEYS`) are dropped with a note.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from regraft.errors import ConfigError

__all__ = ["UNTRUSTED_KEYS", "MAX_RECIPE_BYTES", "read_recipe", "drop_untrusted", "parse_override"]

log = logging.getLogger("regraft.config")

# Permissions, not settings: honoured from the command line or a Python argument, never from a file.
UNTRUSTED_KEYS = ("trust_checkpoint", "overwrite")
MAX_RECIPE_BYTES = 16 * 2**20


def read_recipe(path: str | Path, *, notes: list[str] | None = None) -> dict[str, Any]:
    """The settings of a YAML file, as untrusted data: :data:`UNTRUSTED_KEYS` are dropped.

    Raises:
        ConfigError: the file is missing, not a regular file, too large, not UTF-8, not YAML or
            not a mapping (one line naming the file).
    """
    return drop_untrusted(_read_yaml(path), source=str(path), notes=notes)


def drop_untrusted(values: dict[str, Any], *, source: str, notes: list[str] | None = None) -> dict[str, Any]:
    """``values`` without the permission keys a file may not grant (``trust_checkpoint``, ``overwrite``).

    A key set to anything but false is reported (``notes``, and logged at info level): trust
    comes only from ``--trust-checkpoint`` / ``trust_checkpoint=True`` and overwriting only from
    ``--overwrite`` / ``overwrite=True``.
    """
    kept = {}
    for key, value in values.items():
        norm = str(key).replace("-", "_")
        if norm not in UNTRUSTED_KEYS:
            kept[key] = value
        elif value not in (False, None, "false", "no", 0):
            flag = "--" + norm.replace("_", "-")
            line = f"{source} sets {norm}: {value}, ignored: a file cannot grant that; pass {flag} on the command line if you mean it"
            log.info(line)
            if notes is not None:
                notes.append(line)
    return kept


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML-parsed value, for ``--set key=value`` flags.

    Raises:
        ConfigError: no ``=``, or the value is not valid YAML.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE; got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as exc:
        problem = getattr(exc, "problem", None) or "nested too deeply"
        raise ConfigError(f"--set {key.strip()}: the value {raw!r} is not valid YAML ({problem}); put it in quotes") from None


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    text = _read_text(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())[:300]})") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level; got {type(data).__name__}")
    return data


def _read_text(path: Path) -> str:
    """A recipe's UTF-8 text; only a regular file (after symlinks) of at most MAX_RECIPE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder: pass the recipe's .yaml file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror}): check its permissions") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        what = "a folder: pass the recipe's .yaml file" if stat.S_ISDIR(info.st_mode) else "not a regular file: pass a .yaml file"
        raise ConfigError(f"config file {path} is {what}")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_RECIPE_BYTES // 2**20} MB: it is not a recipe")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): save it as UTF-8"
        ) from None

