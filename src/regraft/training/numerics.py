"""What a run computes in: the device, the precision of its training steps, the memory format.

Training steps may run in bf16 autocast where that is fast (a CUDA GPU that supports it; a CPU
with bf16 matrix units unless the model has depthwise convolutions). Evaluation does not: every
figure a run reports is computed in the numerics of inference (``regraft.inference``), so that
``regraft eval`` and the exports reproduce it.

regraft applies its own autocast around the steps (it makes no ``Accelerator``: see
``training/processes.py``); a launcher's ``accelerate launch --mixed_precision`` is adopted rather
than contradicted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regraft.errors import ConfigError, TrainingError

__all__ = [
    "StepNumerics", "resolve_precision", "resolve_channels_last", "cpu_has_fast_bf16", "has_depthwise_conv",
    "step_numerics", "grad_scaler",
]

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepNumerics:
    """How training steps compute: ``precision`` (fp32 | bf16 | fp16), ``channels_last``, and why."""

    precision: str
    channels_last: bool
    device: torch.device
    note: str = ""  # why auto chose fp32 where bf16 was possible

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a training step's forward pass runs in."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        """``numerics: bf16 autocast, channels_last`` — what the steps run in, and how to change it."""
        parts = [f"{self.precision} autocast" if self.precision != "fp32" else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        how = " (--precision fp32 for full precision)" if self.precision != "fp32" else ""
        if self.note:
            how = f" ({self.note})"
        return f"numerics: {', '.join(parts)}{how}; evaluation in fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last}


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix units (Intel AMX with AVX512-BF16: Sapphire Rapids and later).

    There, bf16 autocast trains ResNet-18/50, RegNet and ViT 1.5-2.8x faster than fp32 (both
    channels_last; bench/RESULTS.md); CPUs without AMX emulate bf16 and gain little or lose.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # older torch, or a build without these probes
        return False


def has_depthwise_conv(model: nn.Module) -> bool:
    """Whether ``model`` has depthwise convolutions (MobileNet, EfficientNet, ConvNeXt, ...)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def _on_cuda(device: str) -> bool:
    return torch.cuda.is_available() and device not in ("cpu", "mps")


def _on_mps(device: str) -> bool:
    available = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    return not _on_cuda(device) and device in ("auto", "mps") and available


def resolve_precision(precision: str, *, device: str = "auto", model: nn.Module | None = None) -> str:
    """The precision of the training steps: ``bf16``, ``fp16`` or ``fp32``.

    ``auto`` is bf16 on a CUDA GPU that supports it; on a CPU, bf16 when it has bf16 matrix units
    (:func:`cpu_has_fast_bf16`) and ``model`` has no depthwise convolutions: oneDNN's bf16
    depthwise kernels train MobileNetV3, EfficientNet and EfficientNet-Lite0 0.77-0.95x as fast as
    fp32 (ConvNeXt 0.98x), so those stay fp32. Full precision elsewhere (other CPUs, MPS).

    Raises:
        TrainingError: fp16 asked for without a CUDA GPU.
    """
    on_cuda = _on_cuda(device)
    if precision == "auto":
        if on_cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        fast = not _on_mps(device) and cpu_has_fast_bf16()
        return "bf16" if fast and not (model is not None and has_depthwise_conv(model)) else "fp32"
    if precision in ("fp32", "no"):
        return "fp32"
    if precision == "fp16" and not on_cuda:
        raise TrainingError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    return precision


def resolve_channels_last(channels_last: bool | None, model: nn.Module, device: torch.device) -> bool:
    """``None`` (auto) is on for models with 2-D convolutions on CPU and CUDA, off on MPS.

    channels_last is oneDNN's and cuDNN's native layout: measured on CPU, fp32 training 1.1-1.2x
    and bf16 up to 1.5x faster (bench/RESULTS.md); on MPS it has been a source of wrong results.
    """
    if channels_last is not None:
        return bool(channels_last)
    return device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _precision_note(requested: str, resolved: str, device: torch.device, model: nn.Module) -> str:
    if requested != "auto" or resolved != "fp32" or device.type != "cpu":
        return ""
    if cpu_has_fast_bf16() and has_depthwise_conv(model):
        return "this CPU has bf16 units, but its bf16 depthwise convolutions are slower than fp32; --precision bf16 to use them anyway"
    return ""


def _launcher_precision() -> str:
    """The mixed precision ``accelerate launch --mixed_precision`` chose for this process (its
    ``ACCELERATE_MIXED_PRECISION`` variable), else fp32."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    return {"no": "fp32", "": "fp32"}.get(value, value)


def step_numerics(
    device: torch.device, *, precision: str, channels_last: bool | None, model: nn.Module, device_flag: str = "auto",
) -> StepNumerics:
    """The numerics of this run's training steps on ``device``.

    Raises:
        ConfigError: the launcher runs the process in one mixed precision (``accelerate launch
            --mixed_precision``) and ``precision`` asks for another.
    """
    theirs = _launcher_precision()
    if theirs != "fp32" and precision != "auto" and resolve_precision(precision, device=device_flag) != theirs:
        raise ConfigError(
            f"accelerate launch runs this process in {theirs} (--mixed_precision) but --precision {precision} was "
            "asked for; drop --precision or relaunch with the same choice"
        )
    resolved = theirs if theirs != "fp32" else resolve_precision(precision, device=device_flag, model=model)
    last = resolve_channels_last(channels_last, model, device)
    note = _precision_note(precision, resolved, device, model)
    return StepNumerics(precision=resolved, channels_last=last, device=device, note=note)


def grad_scaler(numerics: StepNumerics) -> Any | None:
    """A GradScaler for fp16 steps regraft autocasts itself (None otherwise: bf16 and fp32 need none)."""
    if numerics.precision != "fp16":
        return None
    return torch.amp.GradScaler(numerics.device.type)


