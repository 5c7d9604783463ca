"""Stage rules: how each family's trunk splits into ordered stages, and the completion every rule shares.

A stage is ``(name, entries)``: a name a user can type (``layer3``, ``fc1``, ``features.5``) and
the dotted paths of the modules or parameters it holds. A rule is a :class:`StageRule`: a
precondition (``applies``) that reads the model's structure and never raises, and a ``find``
that lists the stages. :func:`complete` then drops the head, gives every parameter no rule
placed a stage of its own and checks that every entry exists, so a rule that produces nonsense
raises instead of changing what gets frozen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "Stage", "StageRule", "under", "param_names", "has_params", "cover", "complete", "vgg_fc",
    "RESNET", "VGG", "DENSENET", "CONVNEXT_SWIN", "REGNET", "VIT", "FEATURES", "TIMM", "GRAFTED_STAGES",
    "generic",
]

Stage = tuple[str, list[str]]

# top-level containers whose children are the blocks of a trunk (the generic rule opens them)
_BLOCK_CONTAINERS = {"features", "blocks", "layers", "stages", "trunk_output", "backbone", "body", "encoder", "trunk"}


@dataclass(frozen=True)
class StageRule:
    """One family's stage rule: ``applies(model)`` reads structure only, ``find(model, head)`` lists stages."""

    name: str
    applies: Callable[[nn.Module], bool]
    find: Callable[[nn.Module, str | None], list[Stage]]


def under(name: str, path: str) -> bool:
    """Whether parameter/module ``name`` is ``path`` or lies inside it (``path`` "" is the root)."""
    return not path or name == path or name.startswith(path + ".")


def param_names(model: nn.Module, path: str) -> list[str]:
    """Names of the parameters at or inside ``path``."""
    return [n for n, _ in model.named_parameters() if under(n, path)]


def has_params(module: nn.Module) -> bool:
    """Whether ``module`` holds any parameter."""
    return next(module.parameters(), None) is not None


def cover(model: nn.Module, names: set[str], prefix: str = "") -> list[str]:
    """The fewest module/parameter paths whose parameters are exactly ``names`` (within ``prefix``)."""
    module = model.get_submodule(prefix) if prefix else model
    if prefix:
        own = [n for n, _ in module.named_parameters(prefix=prefix)]
        if own and all(n in names for n in own):
            return [prefix]
    out: list[str] = []
    for pname, _ in module.named_parameters(recurse=False):
        full = f"{prefix}.{pname}" if prefix else pname
        if full in names:
            out.append(full)
    for cname, _ in module.named_children():
        full = f"{prefix}.{cname}" if prefix else cname
        if any(under(n, full) for n in names):
            out.extend(cover(model, names, full))
    return out


def complete(model: nn.Module, found: list[Stage], head: str | None, *, rule: str) -> list[Stage]:
    """Drop head parameters and empty stages; give every uncovered parameter a stage of its own unit.

    Raises:
        ValueError: an entry of ``found`` is neither a module nor a parameter of ``model`` (the
            rule named by ``rule`` is wrong for this model).
    """
    paths = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    for name, entries in found:
        for entry in entries:
            if entry not in paths:
                raise ValueError(f"stage rule {rule} put '{entry}' in stage '{name}', but the model has no such module")
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    head_names = {n for n in order if head and under(n, head)}
    stages: list[tuple[str, set[str]]] = []
    taken: set[str] = set(head_names)
    for name, entries in found:
        names = {n for n in order if any(under(n, e) for e in entries)} - taken
        if names:
            stages.append((name, names))
            taken |= names
    units: dict[str, set[str]] = {}
    for n in order:
        if n not in taken:
            units.setdefault(_unit(n, taken), set()).add(n)
    for unit, names in sorted(units.items(), key=lambda kv: min(order[n] for n in kv[1])):
        first = min(order[n] for n in names)
        pos = next((i for i, (_, s) in enumerate(stages) if min(order[n] for n in s) > first), len(stages))
        stages.insert(pos, (unit, names))
    seen: set[str] = set()
    out: list[Stage] = []
    for name, names in stages:
        unique = name if name not in seen else f"{name}#{len(out)}"
        seen.add(unique)
        out.append((unique, cover(model, names)))
    return out


def _unit(name: str, taken: set[str]) -> str:
    """The shortest prefix of ``name`` that holds no parameter already in a stage or the head."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if not any(under(t, prefix) for t in taken):
            return prefix
    return name


# ---------------------------------------------------------------------------- the rules


def _timm_applies(model: nn.Module) -> bool:
    return callable(getattr(model, "group_matcher", None)) and isinstance(getattr(model, "pretrained_cfg", None), dict)


def _timm(model: nn.Module, head: str | None) -> list[Stage]:
    """Ask the model: timm's ``group_matcher(coarse=True)`` groups parameters into stages."""
    from timm.models._manipulate import group_parameters

    matcher = model.group_matcher(coarse=True)
    groups = group_parameters(model, matcher)
    stem_re = matcher.get("stem") if isinstance(matcher, dict) else None
    out: list[Stage] = []
    for _, names in sorted(groups.items()):
        names = [n for n in names if not (head and under(n, head))]
        if not names:
            continue
        paths = cover(model, set(names))
        is_stem = isinstance(stem_re, str) and not out and all(re.match(stem_re, n) for n in names)
        out.append(("stem" if is_stem else paths[0], paths))
    return out


def _resnet_layers(model: nn.Module) -> list[str]:
    layers = []
    while isinstance(getattr(model, f"layer{len(layers) + 1}", None), nn.Module):
        layers.append(f"layer{len(layers) + 1}")
    return layers


def _resnet_applies(model: nn.Module) -> bool:
    # layer1.. as far as they go: a trunk cut after layer3 keeps the same stages up to there
    return all(isinstance(getattr(model, n, None), nn.Module) for n in ("conv1", "bn1")) and len(_resnet_layers(model)) >= 2


def _resnet(model: nn.Module, head: str | None) -> list[Stage]:
    return [("stem", ["conv1", "bn1"])] + [(n, [n]) for n in _resnet_layers(model)]


def vgg_fc(model: nn.Module, head: str | None) -> list[str]:
    """Paths of VGG's (or AlexNet's) fc1 and fc2: the first two Linear layers of ``classifier`` that are not the head."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Sequential):
        return []
    linears = [f"classifier.{n}" for n, m in classifier.named_children() if isinstance(m, nn.Linear)]
    return [p for p in linears if not (head and under(p, head))][:2]


def _vgg_applies(model: nn.Module) -> bool:
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    return (
        isinstance(features, nn.Sequential) and any(isinstance(m, nn.MaxPool2d) for m in features)
        and isinstance(classifier, nn.Sequential) and any(isinstance(m, nn.Linear) for m in classifier)
    )


def _vgg(model: nn.Module, head: str | None) -> list[Stage]:
    blocks: list[Stage] = []
    current: list[str] = []
    for name, module in model.features.named_children():
        if has_params(module):
            current.append(f"features.{name}")
        if isinstance(module, nn.MaxPool2d) and current:
            blocks.append((f"block{len(blocks) + 1}", current))
            current = []
    if current:
        blocks.append((f"block{len(blocks) + 1}", current))
    return blocks + [(f"fc{i + 1}", [p]) for i, p in enumerate(vgg_fc(model, head))]


def _densenet_applies(model: nn.Module) -> bool:
    features = getattr(model, "features", None)
    return isinstance(features, nn.Sequential) and hasattr(features, "denseblock1")


def _densenet(model: nn.Module, head: str | None) -> list[Stage]:
    features = model.features
    out: list[Stage] = [("stem", [f"features.{n}" for n in ("conv0", "norm0") if hasattr(features, n)])]
    k = 1
    while hasattr(features, f"denseblock{k}"):
        entries = [f"features.denseblock{k}"]
        if hasattr(features, f"transition{k}"):
            entries.append(f"features.transition{k}")
        out.append((f"denseblock{k}", entries))
        k += 1
    final = [n for n, _ in features.named_children() if n.startswith("norm") and n != "norm0"]
    out[-1][1].extend(f"features.{n}" for n in final)  # the last norm closes the last block
    return out


def _is_torchvision(model: nn.Module, *names: str) -> bool:
    return any(
        c.__module__.startswith("torchvision.models") and c.__name__ in names for c in type(model).__mro__
    )


def _convnext_swin_applies(model: nn.Module) -> bool:
    return _is_torchvision(model, "ConvNeXt", "SwinTransformer") and isinstance(getattr(model, "features", None), nn.Sequential)


def _convnext_swin(model: nn.Module, head: str | None) -> list[Stage]:
    children = [n for n, _ in model.features.named_children()]
    out: list[Stage] = [("stem", [f"features.{children[0]}"])]
    # features: stem, stage, downsample, stage, ...: each downsample opens the stage after it
    for i in range(1, len(children), 2):
        entries = ([f"features.{children[i - 1]}"] if i > 1 else []) + [f"features.{children[i]}"]
        out.append((f"stage{(i + 1) // 2}", entries))
    return out


def _regnet_applies(model: nn.Module) -> bool:
    return isinstance(getattr(model, "trunk_output", None), nn.Sequential) and isinstance(getattr(model, "stem", None), nn.Module)


def _regnet(model: nn.Module, head: str | None) -> list[Stage]:
    return [("stem", ["stem"])] + [(n, [f"trunk_output.{n}"]) for n, _ in model.trunk_output.named_children()]


def _vit_applies(model: nn.Module) -> bool:
    return _is_torchvision(model, "VisionTransformer") and isinstance(getattr(getattr(model, "encoder", None), "layers", None), nn.Sequential)


def _vit(model: nn.Module, head: str | None) -> list[Stage]:
    stem = [p for p in ("conv_proj", "class_token", "encoder.pos_embedding") if _has_path(model, p)]
    return [("stem", stem)] + [(n, [f"encoder.layers.{n}"]) for n, _ in model.encoder.layers.named_children()]


def _has_path(model: nn.Module, path: str) -> bool:
    return path in dict(model.named_parameters()) or path in dict(model.named_modules())


def _blocks_of(model: nn.Module) -> str | None:
    for attr in ("features", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, nn.Sequential) and sum(has_params(m) for m in seq.children()) >= 2:
            return attr
    return None


def _features(model: nn.Module, head: str | None) -> list[Stage]:
    """MobileNetV2/V3, EfficientNet, SqueezeNet, MNASNet: each block of ``features``/``layers``."""
    attr = _blocks_of(model)
    return [(f"{attr}.{n}", [f"{attr}.{n}"]) for n, m in getattr(model, str(attr)).named_children() if has_params(m)]


def _grafted_applies(model: nn.Module) -> bool:
    return bool(getattr(model, "trunk_stages", None)) and isinstance(getattr(model, "trunk", None), nn.Module)


def _grafted(model: nn.Module, head: str | None) -> list[Stage]:
    """The source model's stages, as far as the trunk kept them (``trunk.`` + the source paths)."""
    paths = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    out: list[Stage] = []
    for name, entries in model.trunk_stages:
        kept = [f"trunk.{e}" for e in entries if f"trunk.{e}" in paths]
        if kept:
            out.append((name, kept))
    return out


def generic(model: nn.Module, head: str | None) -> list[Stage]:
    """Top-level children in order; block containers (``features``, ``blocks``, ...) opened one level."""
    out: list[Stage] = []
    children = [(n, m) for n, m in model.named_children() if has_params(m)]
    for name, child in children:
        # a container that holds the head beside other layers (a neck) is opened, so the neck
        # gets a stage of its own rather than sharing the head's name
        holds_head = head is not None and head != name and head.startswith(name + ".")
        opens = isinstance(child, (nn.Sequential, nn.ModuleList)) and (
            name in _BLOCK_CONTAINERS or isinstance(model, nn.Sequential) or len(children) == 1 or holds_head
        )
        if opens:
            out.extend((f"{name}.{n}", [f"{name}.{n}"]) for n, m in child.named_children() if has_params(m))
        else:
            out.append((name, [name]))
    return out


TIMM = StageRule("timm group_matcher", _timm_applies, _timm)
RESNET = StageRule("resnet", _resnet_applies, _resnet)
VGG = StageRule("vgg", _vgg_applies, _vgg)
DENSENET = StageRule("densenet", _densenet_applies, _densenet)
CONVNEXT_SWIN = StageRule("convnext/swin", _convnext_swin_applies, _convnext_swin)
REGNET = StageRule("regnet", _regnet_applies, _regnet)
VIT = StageRule("vit", _vit_applies, _vit)
FEATURES = StageRule("features blocks", lambda m: _blocks_of(m) is not None, _features)
GRAFTED_STAGES = StageRule("grafted trunk", _grafted_applies, _grafted)
