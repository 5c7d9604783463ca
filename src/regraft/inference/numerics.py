"""The numerics of inference: one precision and memory format for validation, eval, predict, export.

:data:`INFERENCE_NUMERICS` is fp32 with channels_last for models with 2-D convolutions. Why:

- **fp32.** A bf16 forward (what ``--precision auto`` trains in on AMX CPUs and bf16 GPUs)
  differs from the float32 ONNX/TorchScript exports by up to 7e-3 in the logits even on
  untrained networks, which flips near ties; in fp32 eager PyTorch and onnxruntime differ by at
  most 1e-6, so ``predict RUN`` and ``predict model.onnx`` agree within 1e-4 in every probability. On CUDA, TF32 (which cuDNN
  uses for fp32 convolutions by default) is switched off for the call and restored after.
- **channels_last** (only for models with a ``Conv2d``, on CPU and CUDA, as training's auto
  setting): oneDNN computes a convolution in channels_last when the input *or* the weight is
  channels_last, so with the input channels_last the result no longer depends on the layout the
  weights happen to be in (training moves them to channels_last; a freshly loaded run has them
  contiguous). Measured (``bench/inference_numerics.py``, fp32, 224 px, batch 16, 2 CPUs):
  ResNet-18 / EfficientNet-B0 / ConvNeXt-atto / ViT-tiny logits within 3e-8 of the contiguous
  layout, bitwise identical between the two weight layouts except EfficientNet-B0 (6.5e-11), and
  1.6x / 1.5x / 1.8x / 1.2x faster. onnxruntime stays within 1e-6 of it.

A model prepared by Accelerate under mixed precision runs its own autocast inside ``forward``,
and a ``torch.compile``d one runs inductor's fused kernels; :class:`Numerics` calls the plain
eager module (compile's ``_orig_mod``, with Accelerate's saved ``_original_forward`` for the
call; a DDP wrapper is kept, its forward keeps buffers in step), so that validation during
training computes what ``regraft eval`` does.

Example:
    >>> import torch
    >>> logits = INFERENCE_NUMERICS(torch.nn.Linear(4, 2), torch.zeros(3, 4))
    >>> logits.dtype, tuple(logits.shape)
    (torch.float32, (3, 2))
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from regraft.errors import ConfigError

__all__ = ["Precision", "Numerics", "INFERENCE_NUMERICS", "eager", "unwrap", "model_device"]


class Precision(str, Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """The arithmetic of an inference forward pass."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        """``"bf16"`` -> ``Precision.BF16``; ConfigError listing the choices otherwise."""
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"--precision must be one of {', '.join(p.value for p in cls)}; got '{value}'") from None


_HAS_CONV2D: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _has_conv2d(model: nn.Module) -> bool:
    if model not in _HAS_CONV2D:
        _HAS_CONV2D[model] = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return _HAS_CONV2D[model]


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; the CPU for a module without tensors."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under ``torch.compile``'s and DDP's wrappers."""
    module = _uncompiled(model)
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel) else module


def _uncompiled(model: nn.Module) -> nn.Module:
    # torch.compile's wrapper, recognised by name: importing torch._dynamo to test it is slow
    if type(model).__name__ == "OptimizedModule" and isinstance(model.__dict__.get("_modules", {}).get("_orig_mod"), nn.Module):
        return model._orig_mod
    return model


@contextlib.contextmanager
def eager(model: nn.Module) -> Iterator[nn.Module]:
    """The module to call for plain eager numerics: ``torch.compile``'s wrapper left out, DDP kept
    (its forward keeps the ranks' buffers in step), and Accelerate's autocast-wrapped ``forward``
    swapped for the original it saved, for the duration of the block."""
    module = _uncompiled(model)
    inner = unwrap(module)
    original = inner.__dict__.get("_original_forward")
    wrapped = inner.__dict__.get("forward")
    if original is None or wrapped is None:
        yield module
        return
    inner.forward = original
    try:
        yield module
    finally:
        inner.forward = wrapped


@dataclass(frozen=True)
class Numerics:
    """How an inference forward pass computes: ``precision`` and ``channels_last``.

    Call it as ``numerics(model, x)`` for float32 logits: ``x`` goes to the model's device (and
    to channels_last for a model with 2-D convolutions on CPU/CUDA when ``channels_last``); the
    forward runs in eval-free no-grad mode under autocast only when ``precision`` is not fp32.
    Put the model in eval mode yourself; :meth:`prepare` also sets its memory format.

    Raises (on call):
        ConfigError: fp16 off CUDA, or bf16 on a device without bf16 support.
    """

    precision: str = Precision.FP32.value
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision.parse(self.precision).value)

    def uses_channels_last(self, model: nn.Module, device: torch.device | None = None) -> bool:
        """Whether ``model`` runs channels_last here (asked for, has a Conv2d, on CPU or CUDA)."""
        device = device or model_device(model)
        return self.channels_last and device.type in ("cpu", "cuda") and _has_conv2d(unwrap(model))

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model``'s weights in this memory format (in place; returns it)."""
        if self.uses_channels_last(model):
            model.to(memory_format=torch.channels_last)
        return model

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device`` (None: full fp32).

        Raises:
            ConfigError: fp16 off CUDA; bf16 on a GPU or device without it.
        """
        if self.precision == Precision.FP32.value:
            return None
        if self.precision == Precision.FP16.value:
            if device.type != "cuda":
                raise ConfigError(f"--precision fp16 needs a CUDA GPU (the model is on {device.type}); use bf16 or fp32")
            return torch.float16
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"--precision bf16 runs on CPU or CUDA, not {device.type}; use fp32")
        return torch.bfloat16

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        device = model_device(unwrap(model))
        x = x.to(device, non_blocking=True)
        if x.ndim == 4 and self.uses_channels_last(model, device):
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype(device)
        with eager(model) as module, _no_tf32(device, enabled=dtype is None), \
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = module(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}; inference expects one tensor of logits")
        return out.float()


@contextlib.contextmanager
def _no_tf32(device: torch.device, *, enabled: bool) -> Iterator[None]:
    """fp32 on CUDA means fp32: TF32 convolutions and matmuls off for the block, restored after."""
    if not enabled or device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


# what training validation, the summary's figures, eval, predict and exports use by default
INFERENCE_NUMERICS = Numerics(precision="fp32", channels_last=True)
