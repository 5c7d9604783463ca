"""Facts about architecture families, in one table; everything else in regraft asks it.

Each :class:`Family` row says where the classifier lives, how the trunk splits into stages,
the forward pass step by step (for the frozen-prefix cut of :mod:`regraft.features`), whether
the classifier's Linear layers answer to ``fc1``, ``fc2``... and whether fc1 + fc2 form one unit
for the ``partial`` strategy. Generic code asks the model first where it can answer (timm's
``pretrained_cfg['classifier']``, ``get_classifier``, ``group_matcher``); the table answers for
families that cannot. A stage rule that fails raises :class:`~regraft.errors.ModelError`; it
never falls back silently to another rule.

A model is *declared* a family by its class (torchvision or timm, or regraft's own
``Grafted``) or by the name it was built under (``model.regraft_ref``); a model of none of them
may *look like* one (a module with ``conv1``, ``bn1``, ``layer1``.. has ResNet's stages).
Heads and forward programs need a declared family; stages, aliases and units also serve
look-alikes, recognised by structure alone.

Example:
    >>> import torchvision
    >>> model = torchvision.models.vgg11()
    >>> identify(model).name, fc_aliases(model)["fc2"]
    ('torchvision:VGG', 'classifier.3')
    >>> [name for name, _ in stages(model, head="classifier.6")][-3:]
    ['block5', 'fc1', 'fc2']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from regraft.errors import ModelError
from regraft.families._stages import (
    CONVNEXT_SWIN,
    DENSENET,
    FEATURES,
    GRAFTED_STAGES,
    REGNET,
    RESNET,
    TIMM,
    VGG,
    VIT,
    Stage,
    StageRule,
    complete,
    cover,
    generic,
    has_params,
    param_names,
    under,
    vgg_fc,
)

__all__ = [
    "Family", "FAMILIES", "Stage", "StageRule", "family", "declared", "identify", "head_location", "stages",
    "fc_aliases", "partial_units", "forward_program", "no_weight_decay", "TORCHVISION_HEADS", "FC_ALIAS_FAMILIES", "GRAFTED",
    "FLATTEN", "POOL", "MEAN", "RELU", "DROP", "under", "cover", "param_names", "has_params", "vgg_fc",
]

log = logging.getLogger(__name__)

GRAFTED = "grafted"
# functional steps a forward program may hold between modules (regraft.features.cut runs them)
FLATTEN, POOL, MEAN, RELU, DROP = "<flatten>", "<avgpool>", "<mean>", "<relu>", "<dropout>"
# the methods whose being the family's own makes its forward program true
_FORWARD_METHODS = {"torchvision": ("forward", "_forward_impl"), "timm": ("forward", "forward_features", "forward_head"), "regraft": ("forward",)}


@dataclass(frozen=True)
class Family:
    """One architecture family's facts.

    Attributes:
        name: ``torchvision:ResNet``, ``timm:efficientnet.EfficientNet``, ``timm``, ``grafted``.
        zoo: ``torchvision``, ``timm`` or ``regraft``.
        classes: class names that are this family (timm's as ``module.Class``).
        name_prefixes: torchvision model names built as this family (``resnext`` -> ResNet).
        head: where the classifier lives (a module or the container holding it); for timm the
            model's own answer comes first.
        stages: the stage rule, None for the generic rule (top-level children).
        forward: the forward pass step by step (module paths and the functional steps
            FLATTEN, POOL, MEAN, RELU, DROP), None when regraft does not know it.
        forward_requires: ``(path, class name)`` pairs the forward program also needs.
        fc_aliases: the Linear layers directly in ``classifier`` answer to fc1, fc2, ...
        mlp_unit: fc1 and fc2 (the pretrained classifier MLP) count as one stage for ``partial``.
    """

    name: str
    zoo: str
    classes: tuple[str, ...] = ()
    name_prefixes: tuple[str, ...] = ()
    head: str | None = None
    stages: StageRule | None = None
    forward: tuple[str, ...] | None = None
    forward_requires: tuple[tuple[str, str], ...] = ()
    fc_aliases: bool = False
    mlp_unit: bool = False


def _tv(cls: str, prefixes: tuple[str, ...], head: str, stages: StageRule | None, forward: tuple[str, ...] | None, **kw: Any) -> Family:
    return Family(f"torchvision:{cls}", "torchvision", (cls,), prefixes, head, stages, forward, **kw)


def _timm(key: str, head: str, forward: tuple[str, ...], **kw: Any) -> Family:
    return Family(f"timm:{key}", "timm", (key,), (), head, TIMM, forward, **kw)


_VGG_FORWARD = ("features", "avgpool", FLATTEN, "classifier")
# the one table; torchvision programs follow models/<family>.py (0.15+), timm's forward_features
# then forward_head (1.0). Order matters only for look-alikes: the first rule that applies wins.
FAMILIES: tuple[Family, ...] = (
    _tv("ResNet", ("resnet", "resnext", "wide_resnet"), "fc", RESNET,
        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", FLATTEN, "fc")),
    _tv("VGG", ("vgg",), "classifier", VGG, _VGG_FORWARD, fc_aliases=True, mlp_unit=True),
    _tv("AlexNet", ("alexnet",), "classifier", VGG, _VGG_FORWARD, fc_aliases=True, mlp_unit=True),
    _tv("DenseNet", ("densenet",), "classifier", DENSENET, ("features", RELU, POOL, FLATTEN, "classifier")),
    _tv("ConvNeXt", ("convnext",), "classifier", CONVNEXT_SWIN, ("features", "avgpool", "classifier")),
    _tv("SwinTransformer", ("swin",), "head", CONVNEXT_SWIN, ("features", "norm", "permute", "avgpool", "flatten", "head")),
    _tv("RegNet", ("regnet",), "fc", REGNET, ("stem", "trunk_output", "avgpool", FLATTEN, "fc")),
    _tv("VisionTransformer", ("vit_",), "heads", VIT, None),
    _tv("MobileNetV2", ("mobilenet_v2",), "classifier", FEATURES, ("features", POOL, FLATTEN, "classifier")),
    _tv("MobileNetV3", ("mobilenet_v3",), "classifier", FEATURES, ("features", "avgpool", FLATTEN, "classifier")),
    _tv("EfficientNet", ("efficientnet",), "classifier", FEATURES, ("features", "avgpool", FLATTEN, "classifier")),
    _tv("MNASNet", ("mnasnet",), "classifier", FEATURES, ("layers", MEAN, "classifier")),
    _tv("SqueezeNet", ("squeezenet",), "classifier", FEATURES, ("features", "classifier", FLATTEN)),
    _tv("ShuffleNetV2", ("shufflenet",), "fc", None, ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5", MEAN, "fc")),
    _tv("GoogLeNet", ("googlenet",), "fc", None, None),
    _tv("Inception3", ("inception",), "fc", None, None),
    _tv("MaxVit", ("maxvit",), "classifier", None, ("stem", "blocks", "classifier")),
    _timm("resnet.ResNet", "fc", ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4", "global_pool", DROP, "fc")),
    _timm("efficientnet.EfficientNet", "classifier", ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", DROP, "classifier")),
    _timm("mobilenetv3.MobileNetV3", "classifier",
          ("conv_stem", "bn1", "blocks", "global_pool", "conv_head", "norm_head", "act2", "flatten", DROP, "classifier")),
    _timm("convnext.ConvNeXt", "head.fc",
          ("stem", "stages", "norm_pre", "head.global_pool", "head.norm", "head.flatten", "head.pre_logits", "head.drop", "head.fc"),
          forward_requires=(("head", "NormMlpClassifierHead"),)),
    Family("timm", "timm", stages=TIMM),
    Family(GRAFTED, "regraft", head="head", stages=GRAFTED_STAGES, forward=("trunk", "head")),
)

_BY_NAME = {f.name: f for f in FAMILIES}
_TORCHVISION = {c: f for f in FAMILIES if f.zoo == "torchvision" for c in f.classes}
_TIMM = {c: f for f in FAMILIES if f.zoo == "timm" for c in f.classes}
# the rules look-alikes are tried with, in table order; timm's asks the model and comes first
_OWNERS: dict[str, tuple[StageRule, Family]] = {TIMM.name: (TIMM, _BY_NAME["timm"])}
for _fam in FAMILIES:
    if _fam.zoo == "torchvision" and _fam.stages is not None:
        _OWNERS.setdefault(_fam.stages.name, (_fam.stages, _fam))  # a shared rule belongs to its first row
del _fam
_RULES: tuple[tuple[StageRule, Family], ...] = tuple(_OWNERS.values())

# kept for callers of the first version: torchvision class name -> where its classifier lives
TORCHVISION_HEADS: dict[str, str] = {c: str(f.head) for c, f in _TORCHVISION.items()}
FC_ALIAS_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILIES if f.fc_aliases)


def declared(model: nn.Module, *, ref: Any = None) -> Family | None:
    """The family ``model`` is by its class or by the name it was built under, else None.

    Args:
        model: any module.
        ref: its ``ModelRef``; defaults to ``model.regraft_ref`` (set by ``zoo.build``).
    """
    if getattr(type(model), "regraft_family", None) == GRAFTED:  # surgery.extract's trunk + new head
        return _BY_NAME[GRAFTED]
    ref = ref if ref is not None else getattr(model, "regraft_ref", None)
    for cls in type(model).__mro__:
        if cls.__module__.startswith("torchvision.models") and cls.__name__ in _TORCHVISION:
            return _TORCHVISION[cls.__name__]
        if cls.__module__.startswith("timm.models"):
            key = f"{cls.__module__.removeprefix('timm.models.')}.{cls.__name__}"
            if key in _TIMM:
                return _TIMM[key]
    if getattr(ref, "zoo", None) == "torchvision":
        for fam in FAMILIES:
            if any(str(ref.name).startswith(p) for p in fam.name_prefixes):
                return fam
    if getattr(ref, "zoo", None) == "timm" or type(model).__module__.startswith("timm.models") or (
        isinstance(getattr(model, "pretrained_cfg", None), dict) and hasattr(model, "get_classifier")
    ):
        return _BY_NAME["timm"]
    return None


def family(model: nn.Module, *, ref: Any = None) -> str | None:
    """``"torchvision:VGG"``, ``"timm"`` (any timm model), ``"grafted"`` or None for a user's module.

    The first version's answer, kept as it was; :func:`declared` gives the table's row
    (``timm:efficientnet.EfficientNet``).
    """
    fam = declared(model, ref=ref)
    if fam is None:
        return None
    return "timm" if fam.zoo == "timm" else fam.name


def _stage_rule(model: nn.Module, ref: Any) -> tuple[Family | None, StageRule | None]:
    fam = declared(model, ref=ref)
    if fam is not None and fam.stages is not None and fam.stages.applies(model):
        return fam, fam.stages
    for rule, owner in _RULES:  # a look-alike, or a declared model surgery changed beyond its rule
        if rule.applies(model):
            return owner, rule
    return fam, None


def identify(model: nn.Module, *, ref: Any = None) -> Family | None:
    """The family whose facts apply: the declared one, else the first whose stage rule fits."""
    fam = declared(model, ref=ref)
    return fam if fam is not None else _stage_rule(model, ref)[0]


def head_location(model: nn.Module, *, ref: Any = None) -> str | None:
    """Where a declared family's classifier lives (a module or its container), asking timm models first.

    Returns:
        A dotted path that exists in ``model`` (``fc``, ``classifier``, ``head.fc``), or None
        for a module of no declared family or one whose head is no longer there.
    """
    fam = declared(model, ref=ref)
    if fam is None:
        return None
    modules = dict(model.named_modules())
    if fam.zoo == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        name = cfg.get("classifier") if isinstance(cfg, dict) else None
        if isinstance(name, (list, tuple)):  # distilled models: (head, head_dist); the first is the class head
            name = name[0] if name else None
        if isinstance(name, str) and name in modules:
            return name
        if callable(getattr(model, "get_classifier", None)):
            target = model.get_classifier()
            found = next((p for p, m in modules.items() if m is target and p), None)
            if found:
                return found
    return fam.head if fam.head in modules else None


def stages(model: nn.Module, *, head: str | None, ref: Any = None) -> list[Stage]:
    """The ordered trunk stages of ``model``: the head excluded, every other parameter in exactly one.

    Args:
        model: any module.
        head: dotted path of the classifier (its parameters are in no stage), or None.
        ref: the model's ``ModelRef`` (defaults to ``model.regraft_ref``).

    Returns:
        ``[(stage name, [dotted paths of its modules/parameters]), ...]`` in forward order.

    Raises:
        ModelError: the family's stage rule failed on this model (a bug in the table, never
            papered over by another rule).
    """
    fam, rule = _stage_rule(model, ref)
    name = rule.name if rule is not None else "generic"
    try:
        found = rule.find(model, head) if rule is not None else generic(model, head)
        return complete(model, found, head, rule=name)
    except Exception as exc:
        where = f"{fam.name}'s" if fam is not None else "the"
        raise ModelError(
            f"{where} stage rule '{name}' failed on {type(model).__name__} ({type(exc).__name__}: {exc}); "
            "this is a regraft bug: please report it with the output of `regraft inspect MODEL`"
        ) from exc


def fc_aliases(model: nn.Module, *, ref: Any = None) -> dict[str, str]:
    """VGG/AlexNet (and look-alikes): ``fc1``, ``fc2``, ... -> the Linear layers directly in ``classifier``, in order."""
    fam = identify(model, ref=ref)
    classifier = model._modules.get("classifier")
    if fam is None or not fam.fc_aliases or not isinstance(classifier, nn.Sequential):
        return {}
    linears = [k for k, m in classifier._modules.items() if isinstance(m, nn.Linear)]
    return {f"fc{i}": f"classifier.{k}" for i, k in enumerate(linears, start=1)}


def partial_units(model: nn.Module, names: list[str], *, ref: Any = None) -> list[list[str]]:
    """Stage names grouped into the units ``partial`` counts: VGG/AlexNet's fc1 and fc2 are one.

    Args:
        model: the model whose stages ``names`` are (from :func:`stages`).
        names: stage names in order.
        ref: the model's ``ModelRef``.

    Returns:
        ``[[name], ..., ["fc1", "fc2"]]``: every name in one unit, order kept.
    """
    fam, _ = _stage_rule(model, ref)
    units: list[list[str]] = []
    for name in names:
        if fam is not None and fam.mlp_unit and name == "fc2" and units and units[-1] == ["fc1"]:
            units[-1].append(name)
        else:
            units.append([name])
    return units


def forward_program(model: nn.Module) -> tuple[str, tuple[str, ...]] | None:
    """``(label, steps)`` of ``model``'s forward pass when it is one the table knows, else None.

    Only a class whose forward methods are still the family's own counts: a subclass that
    overrides ``forward`` (or timm's ``forward_head``) is unknown.
    """
    if type(model) is nn.Sequential:
        return "nn.Sequential", tuple(name for name, _ in model.named_children())
    for cls in type(model).__mro__:
        fam = _declaring(cls)
        if fam is None:
            continue
        if fam.forward is None or any(getattr(type(model), f, None) is not getattr(cls, f, None) for f in _FORWARD_METHODS[fam.zoo]):
            return None
        for path, cls_name in fam.forward_requires:
            module = dict(model.named_modules()).get(path)
            if module is None or type(module).__name__ != cls_name:
                return None
        label = "grafted trunk and head" if fam.name == GRAFTED else f"{fam.zoo} {cls.__name__}"
        return label, fam.forward
    return None


def _declaring(cls: type) -> Family | None:
    if vars(cls).get("regraft_family") == GRAFTED:
        return _BY_NAME[GRAFTED]
    if cls.__module__.startswith("torchvision.models"):
        return _TORCHVISION.get(cls.__name__)
    if cls.__module__.startswith("timm.models"):
        return _TIMM.get(f"{cls.__module__.removeprefix('timm.models.')}.{cls.__name__}")
    return None


def no_weight_decay(model: nn.Module) -> set[str]:
    """Parameters the model says take no weight decay beyond norms and biases, asking timm models.

    timm's ``no_weight_decay()`` names embeddings and tokens (``pos_embed``, ``cls_token``) whose
    decay hurts; a name may be a parameter or a module holding parameters.

    Returns:
        Parameter names (empty for models that do not say).

    Example:
        >>> import timm
        >>> sorted(no_weight_decay(timm.create_model("test_vit")))
        ['cls_token', 'pos_embed']
    """
    ask = getattr(model, "no_weight_decay", None)
    if not callable(ask):
        return set()
    names = {str(n) for n in ask()}
    return {p for p, _ in model.named_parameters() if any(under(p, n) for n in names)}
