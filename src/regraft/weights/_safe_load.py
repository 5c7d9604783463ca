"""Read a checkpoint file into a flat ``{name: Tensor}`` state dict without running its code.

Safetensors files are read with the safetensors library. Everything else goes through
``torch.load(weights_only=True)``, which refuses any pickle that would build arbitrary objects,
with an allow-list of harmless types (:data:`SAFE_GLOBALS`: ``argparse.Namespace``, which timm's
``train.py`` stores as ``args`` in every checkpoint, as timm's own loader allows); only
``trust_checkpoint=True`` unpickles anything else. Training checkpoints are unwrapped: the
tensors are looked for under ``state_dict``, ``model``, ``model_state_dict``, ``state_dict_ema``
and ``model_ema`` (and similar), and a whole pickled ``nn.Module`` gives its ``state_dict()``.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regraft.errors import UnsafeCheckpointError, WeightsError

__all__ = ["read_file", "unwrap_state_dict", "CONTAINER_KEYS", "SAFE_GLOBALS"]

log = logging.getLogger(__name__)

# Where training checkpoints keep the weights, most common first (the order the issue lists them
# in, so a file holding both a model and its EMA gives the model).
CONTAINER_KEYS = (
    "state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema",
    "ema", "ema_state_dict", "net", "network", "module", "params", "weights",
)
# Top-level entries that hold tensors but never the model's weights.
_NOT_WEIGHTS = ("optimizer", "optim", "optimizer_states", "scheduler", "lr_scheduler", "scaler", "lr_schedulers")
_SAFETENSORS_SUFFIXES = (".safetensors",)
# Types weights-only loading may build besides tensors and containers: plain attribute bags that
# run no code when unpickled (timm's train.py saves its argparse.Namespace as 'args').
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def read_file(path: Path, *, trust_checkpoint: bool = False) -> Any:
    """The object stored in ``path``: a dict of tensors for safetensors, the unpickled object otherwise.

    Raises:
        UnsafeCheckpointError: the pickle needs more than weights-only loading and
            ``trust_checkpoint`` is False.
        WeightsError: the file cannot be read as a checkpoint.
    """
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; check the path given to --weights")
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES or _looks_like_safetensors(path):
        return _read_safetensors(path)
    try:
        return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise WeightsError(f"{path}: not a readable checkpoint ({_first_line(exc)}); expected a .pth/.pt/.bin/.ckpt/.safetensors file") from exc
        if not trust_checkpoint and not _looks_like_pickle(path):
            raise WeightsError(f"{path}: not a readable checkpoint (neither torch's format, a pickle nor safetensors); expected a .pth/.pt/.bin/.ckpt/.safetensors file") from None
        if not trust_checkpoint:
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle {_unsafe_object(exc)}, which can run code when loaded; "
                "pass --trust-checkpoint (trust_checkpoint=True) only if you trust where the file came from"
            ) from None
    except Exception as exc:  # noqa: BLE001 - any failure of torch.load means "not a checkpoint"
        raise WeightsError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {_first_line(exc)}); expected a .pth/.pt/.bin/.ckpt/.safetensors file") from exc
    log.warning("unpickling %s with weights_only=False because trust_checkpoint is set", path)
    try:
        return _torch_load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{path}: could not be unpickled even with --trust-checkpoint ({type(exc).__name__}: {_first_line(exc)})") from exc


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    # torch's zip format can be memory-mapped: a large file is not held twice while it loads
    mmap = zipfile.is_zipfile(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # protocol and FutureWarnings say nothing the user can act on
        if not weights_only:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _looks_like_pickle(path: Path) -> bool:
    """torch's zip format, or a binary pickle (protocol 2+ starts with the PROTO opcode)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size < 100_000_000 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise WeightsError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc


def _unsafe_object(exc: BaseException) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"'{match.group(1)}'" if match else "objects other than tensors"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def unwrap_state_dict(obj: Any, *, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the flat ``{name: Tensor}`` dict inside a loaded checkpoint.

    Args:
        obj: what :func:`read_file` returned, a state dict, or an ``nn.Module``.
        where: how to name the checkpoint in error messages.

    Returns:
        The tensors (non-tensor entries dropped) and the dotted path of the container they were
        found under (``"state_dict"``, ``"model.state_dict"``), or None when ``obj`` was flat.

    Raises:
        WeightsError: no tensors were found.
    """
    found = _find(obj, depth=0)
    if found is None:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        seen = f" (top-level keys: {', '.join(map(str, keys))})" if keys else f" (a {type(obj).__name__})"
        raise WeightsError(f"{where}: found no weight tensors{seen}; expected a state dict, optionally under one of {', '.join(CONTAINER_KEYS[:5])}")
    tensors, path = found
    return tensors, path or None


def _find(obj: Any, *, depth: int) -> tuple[dict[str, torch.Tensor], str] | None:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), ""
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) * 2 >= len(obj):
        return tensors, ""
    for key in CONTAINER_KEYS:
        if key in obj:
            inner = _find(obj[key], depth=depth + 1)
            if inner is not None:
                return inner[0], _join(key, inner[1])
    # No known container: the nested entry holding the most tensors (never optimizer state).
    best: tuple[int, str, dict[str, torch.Tensor], str] | None = None
    for key, value in obj.items():
        if not isinstance(key, str) or key in _NOT_WEIGHTS:
            continue
        inner = _find(value, depth=depth + 1)
        if inner is not None and (best is None or len(inner[0]) > best[0]):
            best = (len(inner[0]), key, inner[0], inner[1])
    if best is not None:
        return best[2], _join(best[1], best[3])
    return None


def _join(key: str, rest: str) -> str:
    return f"{key}.{rest}" if rest else key
