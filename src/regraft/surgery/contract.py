"""The model contract: the network takes the data's images and outputs exactly ``num_classes`` logits.

Checked after every change to the network (the head graft, the weights, surgery) and when a
run is loaded back, so that a recipe leaving 10 logits for 3 classes fails at once with the
layer to fix, instead of training to accuracy 0 and crashing ``eval`` and ``predict`` later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regraft.errors import SurgeryError
from regraft.surgery.diff import short
from regraft.surgery.shapes import fmt_shape, validate

__all__ = ["check_output_width"]


def _width_setter(calls: list[tuple[str, nn.Module, Any]], width: int) -> tuple[str, nn.Module] | None:
    """The last module with its own parameters whose output has ``width`` channels/features."""
    for path, module, out in reversed(calls):
        has_own = next(module.parameters(recurse=False), None) is not None
        if has_own and isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] == width:
            return path, module
    return None


def check_output_width(model: nn.Module, *, num_classes: int, input_size: Sequence[int]) -> tuple[int, ...]:
    """Check the model contract on a dry pass: images of ``input_size`` in, ``num_classes`` logits out.

    Args:
        model: the network (unchanged; the pass runs in eval mode without gradients).
        num_classes: how many classes the data has.
        input_size: ``(C, H, W)`` of one image, from the data config.

    Returns:
        The output shape, batch of 2 included: ``(2, num_classes)``.

    Raises:
        ShapeError: the images do not fit the network (the first module that refused them is named).
        SurgeryError: the output is not ``(batch, num_classes)``; the message names the layer
            that sets the width and how to fix it.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
        >>> check_output_width(net, num_classes=3, input_size=(3, 2, 2))
        Traceback (most recent call last):
        ...
        regraft.errors.SurgeryError: the model outputs 10 logits but the data has 3 classes: ...
    """
    calls: list[tuple[str, nn.Module, Any]] = []
    handles = [
        module.register_forward_hook(lambda m, _a, out, p=path: calls.append((p, m, out)))
        for path, module in model.named_modules()
    ]
    try:
        shape = validate(model, input_size=input_size)
    finally:
        for handle in handles:
            handle.remove()
    if len(shape) == 2 and shape[1] == num_classes:
        return shape
    if len(shape) != 2:
        last = calls[-2][0] if len(calls) > 1 else type(model).__name__  # the model itself runs last
        raise SurgeryError(
            f"the model outputs shape {fmt_shape(shape)} for a batch of 2, not (batch, {num_classes}) logits "
            f"(last module run: '{last}'); end it with a flatten and a layer of {num_classes} outputs"
        )
    found = _width_setter([c for c in calls if c[0]], shape[1])
    where = f"'{found[0]}' ({short(found[1])}) sets the width" if found else "no layer with parameters sets the width"
    raise SurgeryError(
        f"the model outputs {shape[1]} logits but the data has {num_classes} classes: {where}; give it "
        f"{num_classes} outputs (e.g. out_features: {num_classes} in the surgery op that builds it, or the same "
        "num_classes in a replace_head op)"
    )
