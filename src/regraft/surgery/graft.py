"""Cutting a trunk out of a network: FX feature extraction where it traces, else a prefix Sequential.

Both kinds keep the original parameter names (``layer1.0.conv1.weight``), so pretrained
checkpoints still load into the trunk, and share their parameters with the source model. Every
trunk is checked against the source on a dry pass: same shape, same values.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regraft import families
from regraft.errors import SurgeryError
from regraft.families import GRAFTED
from regraft.surgery.diff import short
from regraft.surgery.heads import find_head
from regraft.surgery.names import resolve_path
from regraft.surgery.paths import lookup, split_path
from regraft.surgery.shapes import (
    _eval_no_grad,
    default_input_size,
    dummy_input,
    fmt_shape,
    model_device,
    validate,
)
from regraft.surgery.specs import build_module

__all__ = ["Grafted", "extract", "graft_in_place"]

log = logging.getLogger(__name__)


class Grafted(nn.Module):
    """A trunk cut out of a network with a new head on top: ``head(trunk(x))``.

    ``trunk_stages`` holds the source model's stages (paths inside the trunk), so that freezing
    and the strategies still see ``layer1``, ``layer2``... of what the trunk kept.
    """

    regraft_family = GRAFTED  # how regraft.families recognises it

    def __init__(self, trunk: nn.Module, head: nn.Module, *, trunk_stages: list[tuple[str, list[str]]] | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.trunk_stages = list(trunk_stages or [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _single_output(gm: Any) -> Any:
    """Make an FX extractor return its one tensor instead of ``{"features": tensor}``."""
    graphs = [g for g in (getattr(gm, "train_graph", None), getattr(gm, "eval_graph", None)) if g is not None]
    for graph in graphs or [gm.graph]:
        out = next(n for n in graph.nodes if n.op == "output")
        value = out.args[0]
        if isinstance(value, dict):
            out.args = (next(iter(value.values())),)
    gm.recompile()
    return gm


def _fx_trunk(model: nn.Module, path: str) -> nn.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(families.declared(model), "zoo", None) == "timm":
                from timm.layers import create_feature_extractor
            else:
                from torchvision.models.feature_extraction import create_feature_extractor
            return _single_output(create_feature_extractor(model, return_nodes={path: "features"}))
    except Exception as exc:  # not traceable: fall back to a prefix Sequential
        log.debug("FX feature extraction of %s at '%s' failed (%s)", type(model).__name__, path, exc)
        return None


def _call_order(model: nn.Module, size: Sequence[int] | None) -> dict[int, int]:
    """id(module) -> when it was first entered on a dry pass ({} when no pass can run)."""
    order: dict[int, int] = {}
    if size is None:
        return order

    def enter(module: nn.Module, _args: tuple) -> None:  # a pre-hook must return None or it replaces the input
        order.setdefault(id(module), len(order))

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    try:
        validate(model, input_size=size)
    except SurgeryError:
        order.clear()
    finally:
        for h in handles:
            h.remove()
    return order


def _prefix(module: nn.Module, parts: list[str], order: dict[int, int]) -> nn.Sequential:
    """The children of ``module`` run before ``parts[0]``, in call order, then it (cut again inside)."""
    children = [(k, m) for k, m in module._modules.items() if m is not None]
    if order:  # forward order; children the pass never entered are left out
        children = sorted((c for c in children if id(c[1]) in order), key=lambda c: order[id(c[1])])
    keys = [k for k, _ in children]
    index = keys.index(parts[0]) if parts[0] in keys else len(keys)
    items = children[:index]
    last = module._modules[parts[0]]
    items.append((parts[0], _prefix(last, parts[1:], order) if len(parts) > 1 else last))
    return nn.Sequential(OrderedDict(items))


def _check_trunk(model: nn.Module, trunk: nn.Module, path: str, size: Sequence[int]) -> None:
    """The trunk must give exactly what the module at ``path`` outputs inside the model."""
    captured: list[torch.Tensor] = []
    handle = lookup(model, path).register_forward_hook(  # type: ignore[union-attr]
        lambda _m, _a, out: captured.append(out) if not captured and isinstance(out, torch.Tensor) else None
    )
    x = dummy_input(model, size)
    where = f"cannot cut {type(model).__name__} at '{path}': its modules run in call order up to there"
    fix = "cut at a stage boundary such as 'layer3' or 'features.16'"
    try:
        with _eval_no_grad(model), _eval_no_grad(trunk):
            model(x)
            got = trunk(x)
    except Exception as exc:  # the prefix does not even run
        raise SurgeryError(f"{where} fail ({' '.join(str(exc).split())[:200]}); {fix}") from exc
    finally:
        handle.remove()
    want = captured[0] if captured else None
    if want is None or not isinstance(got, torch.Tensor):
        raise SurgeryError(f"{where} give no tensor to compare with '{path}'; {fix}")
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        same = " (same shape, other values: the model's forward does more than call them in order)" if got.shape == want.shape else ""
        raise SurgeryError(
            f"{where} give {fmt_shape(tuple(got.shape))} where the model's '{path}' outputs "
            f"{fmt_shape(tuple(want.shape))}{same}; {fix}"
        )


def extract(model: nn.Module, *, upto: str, input_size: Sequence[int] | None = None) -> nn.Module:
    """A trunk that runs ``model`` up to the module at ``upto`` and returns that module's output.

    torchvision's FX feature extraction (timm's for timm models, which knows its untraceable
    layers) builds the trunk; models FX cannot trace get the prefix of their children as an
    ``nn.Sequential``. The model itself is not changed; the trunk shares its parameters and keeps
    their names.

    Args:
        model: the network to cut.
        upto: path of the last module to run (``layer3``, ``features.16``, ``stages.2``).
        input_size: ``(C, H, W)`` for the check that the trunk reproduces the model's features
            there; defaults to a zoo model's input size (no check for your own module without it).

    Returns:
        An ``nn.Module`` mapping images to the features at ``upto``.

    Raises:
        SurgeryError: ``upto`` does not exist, or the model cannot be cut there.

    Example:
        >>> import torchvision
        >>> trunk = extract(torchvision.models.resnet18(), upto="layer3", input_size=(3, 64, 64))
        >>> trunk(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 256, 4, 4])
    """
    path = resolve_path(model, upto)
    if not path:
        raise SurgeryError("extract needs upto= a submodule path such as 'layer3'; '' is the whole model")
    size = input_size or default_input_size(model)
    trunk = _fx_trunk(model, path)
    if trunk is None:
        trunk = _prefix(model, split_path(path), _call_order(model, size))
    if size is not None:
        _check_trunk(model, trunk, path, size)
    else:
        log.info("no input size known for %s: the trunk at '%s' is not checked", type(model).__name__, path)
    return trunk


def _default_head(feature_shape: tuple[int, ...], num_classes: int | None, upto: str) -> list[dict[str, Any]]:
    if num_classes is None:
        raise SurgeryError(f"extract upto '{upto}' needs num_classes (or a head spec) for the new head")
    if len(feature_shape) == 4:
        return [{"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "Flatten"},
                {"type": "Linear", "out_features": num_classes}]
    if len(feature_shape) == 2:
        return [{"type": "Linear", "out_features": num_classes}]
    raise SurgeryError(
        f"the features at '{upto}' have shape {fmt_shape(feature_shape)}; give a head spec that maps them to 2-D logits"
    )


def graft_in_place(
    model: nn.Module, *, upto: str, input_size: Sequence[int], head: Any = None, num_classes: int | None = None
) -> str:
    """Turn ``model``, in place, into ``Grafted(trunk up to upto, head)``; returns a description.

    ``head`` is a module spec (or module); by default global average pooling, flatten and a
    Linear for ``num_classes`` (default: the old head's output count).
    """

    try:
        old_head: str | None = find_head(model)
    except SurgeryError:
        old_head = None
    if num_classes is None and head is None and old_head is not None:
        old = lookup(model, old_head)
        num_classes = getattr(old, "out_features", None) or getattr(old, "out_channels", None)
    kept_stages = families.stages(model, head=old_head)  # before the cut: the trunk keeps their names
    trunk = extract(model, upto=upto, input_size=input_size)
    features = validate(trunk, input_size=input_size)
    spec = head if head is not None else _default_head(features, num_classes, upto)
    new_head, _ = build_module(spec, in_shape=features, label="the new head")
    device, dtype = model_device(model)
    new_head.to(device=device, dtype=dtype)
    keep = {k: v for k, v in model.__dict__.items() if k == "regraft_ref"}
    fresh = Grafted(trunk, new_head, trunk_stages=kept_stages)
    model.__dict__.clear()
    model.__dict__.update(fresh.__dict__)
    model.__dict__.update(keep)
    model.__class__ = Grafted
    return f"model is now Grafted(trunk up to '{upto}' giving {fmt_shape(features)}, head {short(new_head)})"
