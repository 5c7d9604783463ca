"""Dry forward passes: shapes at a path, validation with a named culprit, the module table.

Every pass runs a batch of 2 random images in eval mode under ``torch.no_grad()`` and puts each
module's own training flag back afterwards (so a frozen BatchNorm left in eval mode by the
freezing policy stays in eval mode).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from regraft.errors import ShapeError, SurgeryError
from regraft.surgery.paths import lookup

__all__ = ["validate", "probe", "default_input_size", "model_device", "fmt_shape"]

log = logging.getLogger(__name__)

BATCH = 2


def fmt_shape(shape: Any) -> str:
    """``(2, 10)``; a list of shapes joined by commas; ``?`` when unknown."""
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(fmt_shape(s) for s in shape)
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _shape_of(value: Any) -> tuple[int, ...] | list[tuple[int, ...]] | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        shapes = [tuple(v.shape) for v in value if isinstance(v, torch.Tensor)]
        return shapes or None
    if isinstance(value, dict):
        shapes = [tuple(v.shape) for v in value.values() if isinstance(v, torch.Tensor)]
        return shapes or None
    return None


def model_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter or buffer (CPU float32 if none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def default_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """The input size a known zoo model expects (None for a user's own module), with the channels
    its first convolution takes (a model built with ``in_chans``)."""
    size = _zoo_input_size(model)
    if size is None:
        return None
    from regraft import zoo

    path = zoo.first_conv(model)
    conv = model.get_submodule(path) if path else None
    return (int(conv.in_channels), *size[1:]) if conv is not None else size  # type: ignore[return-value]


def _zoo_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])  # type: ignore[return-value]
    ref = getattr(model, "regraft_ref", None)
    if getattr(ref, "zoo", None) in ("torchvision", "timm"):
        from regraft import zoo

        with contextlib.suppress(Exception):
            return zoo.data_config(ref).input_size
    if type(model).__module__.startswith("torchvision.models"):
        return (3, 224, 224)
    return None


def _check_input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) < 1 or any(v < 1 for v in size):
        raise SurgeryError(f"input_size must be positive sizes such as (3, 224, 224); got {input_size!r}")
    return size


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def dummy_input(model: nn.Module, input_size: Sequence[int], *, seed: int = 0) -> torch.Tensor:
    """A reproducible random batch of 2 on the model's device and dtype."""
    device, dtype = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((BATCH, *_check_input_size(input_size)), generator=gen).to(device=device, dtype=dtype)


def probe(model: nn.Module, paths: Sequence[str], *, input_size: Sequence[int]) -> dict[str, tuple[Any, Any]]:
    """Input and output shapes of the modules at ``paths`` on a dry forward pass.

    Returns:
        path -> (input shape, output shape) for each module that ran; paths never reached are
        left out.

    Raises:
        ShapeError: the model does not run at ``input_size`` (as :func:`validate`).
    """
    seen: dict[str, tuple[Any, Any]] = {}
    handles = []
    for path in paths:
        module = lookup(model, path)
        if module is None:
            raise SurgeryError(f"no module '{path}' in {type(model).__name__}")

        def hook(_m: nn.Module, args: tuple, out: Any, path: str = path) -> None:
            if path not in seen:
                seen[path] = (_shape_of(args[0]) if args else None, _shape_of(out))

        handles.append(module.register_forward_hook(hook))
    try:
        validate(model, input_size=input_size)
    finally:
        for h in handles:
            h.remove()
    return seen


def _expects(module: nn.Module) -> str | None:
    """What input a layer accepts, in words; None when there is no simple rule."""
    if isinstance(module, nn.modules.conv._ConvNd):
        dims = len(module.kernel_size) + 2
        return f"expects {dims}-D input with {module.in_channels} channels"
    if isinstance(module, nn.Linear):
        return f"expects input whose last dimension is {module.in_features}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        dims = {"BatchNorm1d": "2-D or 3-D", "BatchNorm2d": "4-D", "BatchNorm3d": "5-D"}.get(type(module).__name__, "")
        return f"expects {dims} input with {module.num_features} channels".replace("  ", " ")
    if isinstance(module, nn.LayerNorm):
        return f"expects input ending in {tuple(module.normalized_shape)}"
    if isinstance(module, nn.GroupNorm):
        return f"expects input with {module.num_channels} channels"
    return None


@dataclass
class _Trace:
    stack: list[tuple[str, nn.Module, Any]] = field(default_factory=list)
    last_done: tuple[str, Any] | None = None


def _shape_error(model: nn.Module, trace: _Trace, exc: Exception, x: torch.Tensor) -> ShapeError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if len(reason) > 300:
        reason = reason[:297] + "..."
    if not trace.stack or not trace.stack[-1][0]:
        after = f" after module '{trace.last_done[0]}' returned {fmt_shape(trace.last_done[1])}" if trace.last_done else ""
        return ShapeError(
            f"the forward of {type(model).__name__} failed on input of shape {fmt_shape(tuple(x.shape))}{after}: "
            f"{reason}; check the input size and the modules changed last"
        )
    path, module, in_shape = trace.stack[-1]
    expects = _expects(module)
    what = f"but {expects}" if expects else f"and failed: {reason}"
    if in_shape == tuple(x.shape):  # it got the images themselves: the input size is what is wrong
        fix = f"run the model at another input size than {fmt_shape(tuple(x.shape[1:]))} (input_size / --img-size)"
    else:
        fix = "change or remove that module (surgery ops replace/delete) or the one before it"
    return ShapeError(f"module '{path}' ({type(module).__name__}) got input of shape {fmt_shape(in_shape)} {what}; {fix}")


def validate(model: nn.Module, *, input_size: Sequence[int]) -> tuple[int, ...]:
    """Run a dry forward pass and return the output shape; name the culprit when it fails.

    The pass uses a batch of 2 random images in eval mode under ``torch.no_grad()``; every
    module's training flag is restored afterwards, whatever happens.

    Args:
        model: the network.
        input_size: ``(C, H, W)`` of one image.

    Returns:
        The output shape, batch included (``(2, 10)``).

    Raises:
        ShapeError: the first module whose input did not fit, the shape it got and what it
            expects, e.g. "module 'classifier.7' (Conv2d) got input of shape (2, 10) but expects
            4-D input with 512 channels".

    Example:
        >>> validate(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), input_size=(3, 2, 2))
        (2, 3)
    """
    x = dummy_input(model, input_size)
    trace = _Trace()
    handles = []
    for path, module in model.named_modules():

        def pre(m: nn.Module, args: tuple, path: str = path) -> None:
            trace.stack.append((path, m, _shape_of(args[0]) if args else None))

        def post(m: nn.Module, args: tuple, out: Any) -> None:
            if trace.stack and trace.stack[-1][1] is m:
                done = trace.stack.pop()
                trace.last_done = (done[0], _shape_of(out))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with _eval_no_grad(model):
            out = model(x)
    except Exception as exc:  # any failure of the forward is reported against the module it happened in
        raise _shape_error(model, trace, exc, x) from exc
    finally:
        for h in handles:
            h.remove()
    shape = _shape_of(out)
    if isinstance(shape, list):
        shape = shape[0]
    if shape is None:
        raise ShapeError(f"{type(model).__name__} returned {type(out).__name__}, not a tensor; a classifier must return logits")
    return shape


