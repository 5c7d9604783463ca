"""Range checks for the command options that are not Config keys, in one table.

Training options are Config keys and :meth:`regraft.config.Config.validate` checks them (one
schema for the CLI, recipes and ``rg.fit``). The other commands' numeric options (``predict
--batch-size``, ``eval --device``, ``scan --val-fraction``, ``export --atol``, ...) are checked
here by their argparse ``dest``, before any command runs, so every command refuses the same
impossible number the same way: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from regraft.errors import ConfigError

__all__ = ["validate_args", "require_device", "DEVICE_PATTERN"]

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low}"


def _finite(check: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and check(v)


# argparse dest -> (check, what is expected). Only checked when the option is set (not None).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": _int_at_least(1),
    "topk": _int_at_least(1),
    "workers": _int_at_least(0),
    "steps": _int_at_least(3),
    "epochs": _int_at_least(1),
    "img_size": _int_at_least(8),
    "depth": _int_at_least(0),
    "num_classes": _int_at_least(1),
    "opset": _int_at_least(7),
    "seed": ((lambda v: 0 <= v < 2**32), "between 0 and 4294967295"),
    "val_fraction": (_finite(lambda v: 0 < v < 1), "between 0 and 1"),
    "imbalance": (_finite(lambda v: v >= 1), "a finite number of at least 1"),
    "atol": (_finite(lambda v: v >= 0), "a finite number of at least 0"),
    "start_lr": (_finite(lambda v: v > 0), "a finite positive number"),
    "end_lr": (_finite(lambda v: v > 0), "a finite positive number"),
    "max_image_mb": (_finite(lambda v: v > 0), "a positive number of megabytes"),
}


def validate_args(args: argparse.Namespace) -> None:
    """Check every option of :data:`_CHECKS` that ``args`` has; ``--device`` syntax and availability.

    Raises:
        ConfigError: one line naming the option, the value and what is expected.
    """
    for dest, (check, expected) in _CHECKS.items():
        value = getattr(args, dest, None)
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)) and not check(value):
            raise ConfigError(f"--{dest.replace('_', '-')} must be {expected}; got {value:g}" if isinstance(value, float)
                              else f"--{dest.replace('_', '-')} must be {expected}; got {value}")
    device = getattr(args, "device", None)
    if isinstance(device, str):
        require_device(device)


def require_device(device: str, *, flag: str = "--device") -> None:
    """Refuse a device name that is not ``auto|cpu|mps|cuda|cuda:N``, or that this machine lacks.

    Raises:
        ConfigError: the name is unknown, or CUDA / MPS is not available here.
    """
    if not DEVICE_PATTERN.match(device):
        raise ConfigError(f"{flag} must be auto, cpu, cuda, cuda:N or mps; got '{device}'")
    if device in ("auto", "cpu"):
        return
    import torch  # only for an explicit accelerator: --help and cpu runs stay torch-free here

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{flag} mps: no Apple GPU (MPS) is available on this machine; use --device cpu or auto")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if count == 0:
        raise ConfigError(f"{flag} {device}: no CUDA GPU is available on this machine; use --device cpu or auto")
    if index >= count:
        raise ConfigError(f"{flag} {device}: this machine has {count} CUDA GPU(s), numbered from 0; use cuda:0 ... cuda:{count - 1}")
