"""Stage discovery for :func:`regraft.freezing.stages`: the ordered blocks of known families.

A stage is ``(name, entries)``: a name a user can type (``layer3``, ``fc1``, ``features.5``) and
the dotted paths of the modules or parameters it holds. Every parameter outside the head belongs
to exactly one stage; stages never hold the head. Families are recognised by structure (so
look-alikes and models after surgery still work); anything else falls back to its top-level
children in registration order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from torch import nn

log = logging.getLogger(__name__)

Stage = tuple[str, list[str]]

# top-level containers whose children are the blocks of a trunk (the generic fallback opens them)
_BLOCK_CONTAINERS = {"features", "blocks", "layers", "stages", "trunk_output", "backbone", "body", "encoder", "trunk"}


def under(name: str, path: str) -> bool:
    """Whether parameter/module ``name`` is ``path`` or lies inside it (``path`` "" is the root)."""
    return not path or name == path or name.startswith(path + ".")


def param_names(model: nn.Module, path: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if under(n, path)]


def has_params(module: nn.Module) -> bool:
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


def find_stages(model: nn.Module, *, head: str | None) -> list[Stage]:
    """Ordered trunk stages of ``model`` (the head excluded, every other parameter covered)."""
    found: list[Stage] = []
    for finder in _FINDERS:
        try:
            found = finder(model, head)
        except Exception as exc:  # noqa: BLE001 - a family rule that does not fit falls through
            log.debug("stage rule %s did not apply: %s", finder.__name__, exc)
            found = []
        if found:
            break
    else:
        found = _fallback(model, head)
    return _complete(model, found, head)


def _complete(model: nn.Module, found: list[Stage], head: str | None) -> list[Stage]:
    """Drop head parameters and empty stages; give every uncovered parameter a stage of its own unit."""
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


# ---------------------------------------------------------------------------- family rules


def _timm(model: nn.Module, head: str | None) -> list[Stage]:
    if not callable(getattr(model, "group_matcher", None)) or not hasattr(model, "pretrained_cfg"):
        return []
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


def _resnet(model: nn.Module, head: str | None) -> list[Stage]:
    names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    if not all(hasattr(model, n) for n in names):
        return []
    return [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]


def vgg_fc(model: nn.Module, head: str | None) -> list[str]:
    """Paths of VGG's (or AlexNet's) fc1 and fc2: the first two Linear layers of ``classifier`` that are not the head."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Sequential):
        return []
    linears = [f"classifier.{n}" for n, m in classifier.named_children() if isinstance(m, nn.Linear)]
    return [p for p in linears if not (head and under(p, head))][:2]


def _vgg(model: nn.Module, head: str | None) -> list[Stage]:
    features = getattr(model, "features", None)
    fcs = vgg_fc(model, head)
    if not isinstance(features, nn.Sequential) or not fcs:
        return []
    if not any(isinstance(m, nn.MaxPool2d) for m in features):
        return []
    blocks: list[Stage] = []
    current: list[str] = []
    for name, module in features.named_children():
        if has_params(module):
            current.append(f"features.{name}")
        if isinstance(module, nn.MaxPool2d) and current:
            blocks.append((f"block{len(blocks) + 1}", current))
            current = []
    if current:
        blocks.append((f"block{len(blocks) + 1}", current))
    return blocks + [(f"fc{i + 1}", [p]) for i, p in enumerate(fcs)]


def _densenet(model: nn.Module, head: str | None) -> list[Stage]:
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not hasattr(features, "denseblock1"):
        return []
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


def _convnext_swin(model: nn.Module, head: str | None) -> list[Stage]:
    from torchvision.models import ConvNeXt, SwinTransformer

    if not isinstance(model, (ConvNeXt, SwinTransformer)):
        return []
    children = [n for n, _ in model.features.named_children()]
    out: list[Stage] = [("stem", [f"features.{children[0]}"])]
    # features: stem, stage, downsample, stage, ...: each downsample opens the stage after it
    for i in range(1, len(children), 2):
        entries = ([f"features.{children[i - 1]}"] if i > 1 else []) + [f"features.{children[i]}"]
        out.append((f"stage{(i + 1) // 2}", entries))
    return out


def _regnet(model: nn.Module, head: str | None) -> list[Stage]:
    trunk = getattr(model, "trunk_output", None)
    if not isinstance(trunk, nn.Sequential) or not hasattr(model, "stem"):
        return []
    return [("stem", ["stem"])] + [(n, [f"trunk_output.{n}"]) for n, _ in trunk.named_children()]


def _vit(model: nn.Module, head: str | None) -> list[Stage]:
    from torchvision.models import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return []
    stem = ["conv_proj", "class_token", "encoder.pos_embedding"]
    return [("stem", stem)] + [(n, [f"encoder.layers.{n}"]) for n, _ in model.encoder.layers.named_children()]


def _features(model: nn.Module, head: str | None) -> list[Stage]:
    """MobileNetV2/V3, EfficientNet, SqueezeNet, MNASNet: each block of ``features``/``layers``."""
    for attr in ("features", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, nn.Sequential):
            blocks = [(f"{attr}.{n}", [f"{attr}.{n}"]) for n, m in seq.named_children() if has_params(m)]
            if len(blocks) >= 2:
                return blocks
    return []


def _fallback(model: nn.Module, head: str | None) -> list[Stage]:
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


_FINDERS: tuple[Callable[[nn.Module, str | None], list[Stage]], ...] = (
    _timm, _resnet, _vgg, _densenet, _convnext_swin, _regnet, _vit, _features,
)
