"""Module specs: the small dicts a recipe writes for a layer, built with their input sizes inferred.

``{type: Linear, out_features: 256}`` becomes ``nn.Linear(<width at that point>, 256)``. A spec is
a dict with ``type`` (any ``torch.nn`` layer name) and that layer's arguments; ``{type:
Sequential, layers: [...]}`` or a plain list chains specs; a bare string (``ReLU``) is a layer
without arguments. ``in_features``, ``in_channels``, ``num_features``, ``num_channels``,
``normalized_shape`` and ``embed_dim`` are filled from the shape of the tensor arriving there.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from torch import nn

from regraft.errors import ShapeError, SurgeryError
from regraft.surgery.shapes import _expects, fmt_shape

__all__ = ["build_module", "INFERRED", "suggest"]

# argument -> which dimension of the incoming tensor it takes
INFERRED: dict[str, int] = {
    "in_features": -1, "in_channels": 1, "num_features": 1, "num_channels": 1,
    "normalized_shape": -1, "embed_dim": -1,
}
_NOT_LAYERS = {"Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container"}


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"did you mean 'X'? "`` for the closest choice (case, prefixes, then spelling), or ``""``."""
    low = {c.lower(): c for c in choices}
    word_low = str(word).lower()
    close = [low[word_low]] if word_low in low else [c for c in choices if c.lower().startswith(word_low)]
    close = close or difflib.get_close_matches(word_low, list(low), n=1, cutoff=0.6)
    close = [low.get(c, c) for c in close]
    return f"did you mean '{close[0]}'? " if close else ""


def _layer_names() -> list[str]:
    return sorted(
        n for n in dir(nn)
        if isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Module) and n not in _NOT_LAYERS
    )


def _layer_class(name: Any) -> type[nn.Module]:
    names = _layer_names()
    if not isinstance(name, str) or name not in names:
        raise SurgeryError(
            f"unknown module type '{name}'; {suggest(str(name), names)}use a torch.nn layer name such as Linear, Conv2d, ReLU, Dropout, "
            "BatchNorm1d, Flatten or Sequential"
        )
    return getattr(nn, name)


def _check_args(cls: type[nn.Module], kwargs: dict[str, Any], in_shape: tuple[int, ...] | None) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    listing = ", ".join(names) or "none"
    for key in kwargs:
        if key not in names and not takes_any:
            raise SurgeryError(f"{cls.__name__} has no argument '{key}'; {suggest(key, names)}its arguments: {listing}")
    filled = dict(kwargs)
    for key, dim in INFERRED.items():
        if key in names and key not in filled and params[key].default is inspect.Parameter.empty:
            if in_shape is None or len(in_shape) < (2 if dim == 1 else 1):
                raise SurgeryError(
                    f"{cls.__name__} needs '{key}' and the input shape there is unknown ({fmt_shape(in_shape)}); "
                    f"give {key} in the spec"
                )
            filled[key] = int(in_shape[dim])
    missing = [n for n in names if params[n].default is inspect.Parameter.empty and n not in filled]
    if missing:
        raise SurgeryError(f"{cls.__name__} needs '{missing[0]}' in its spec (arguments: {listing})")
    return filled


def _out_shape(module: nn.Module, in_shape: tuple[int, ...] | None, label: str) -> tuple[int, ...] | None:
    """Run the new layer on zeros of ``in_shape`` to learn its output shape."""
    if in_shape is None:
        return None
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(in_shape))
    except Exception as exc:  # a layer that cannot take this input: say which and why
        expects = _expects(module)
        why = f"but {expects}" if expects else f"and failed: {' '.join(str(exc).split())[:200]}"
        raise ShapeError(
            f"{label} ({type(module).__name__}) would get input of shape {fmt_shape(in_shape)} {why}; "
            "change the spec or where it goes"
        ) from exc
    finally:
        module.train(was)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _normalise(spec: Any) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"type": spec}
    if isinstance(spec, (list, tuple)):
        return {"type": "Sequential", "layers": list(spec)}
    if not isinstance(spec, dict):
        raise SurgeryError(f"a module spec must be a mapping like {{type: Linear, out_features: 256}}; got {spec!r}")
    if "type" not in spec:
        raise SurgeryError(f"module spec {spec!r} has no 'type'; add one, e.g. type: Linear")
    return dict(spec)


def build_module(
    spec: Any, *, in_shape: tuple[int, ...] | None, label: str = "the new module"
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build a layer from a spec and tell the shape it outputs.

    Args:
        spec: a dict spec, a list (a Sequential), a layer name, or an ``nn.Module`` (used as is).
        in_shape: the shape of the tensor arriving there, batch included (None when unknown).
        label: how errors name this module.

    Returns:
        ``(module, output shape)``; the shape is None when ``in_shape`` is.

    Raises:
        SurgeryError: unknown type or argument, a required argument missing.
        ShapeError: the layer cannot take ``in_shape``.
    """
    if isinstance(spec, nn.Module):
        return spec, _out_shape(spec, in_shape, label)
    spec = _normalise(spec)
    kind = spec.pop("type")
    if kind == "Sequential":
        layers = spec.pop("layers", None)
        if spec or not isinstance(layers, list) or not layers:
            raise SurgeryError("a Sequential spec takes only 'layers', a non-empty list of module specs")
        built, shape = [], in_shape
        for i, layer_spec in enumerate(layers):
            module, shape = build_module(layer_spec, in_shape=shape, label=f"{label} layer {i}")
            built.append(module)
        return nn.Sequential(*built), shape
    cls = _layer_class(kind)
    kwargs = _check_args(cls, spec, in_shape)
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SurgeryError(f"{kind}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {exc}") from exc
    return module, _out_shape(module, in_shape, label)
