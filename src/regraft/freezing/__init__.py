"""Which parameters train: freeze specs, stages, and the BatchNorm policy.

A *freeze spec* is a list of tokens, each one of:

- ``all``, ``none``, ``head``, ``all-but-head``;
- a stage name from :func:`stages` (``layer3``, ``block5``, ``fc1``, ``features.7``), or a
  range of stages ``layer2..layer4`` (both ends included);
- a dotted module or parameter path (``classifier.0``, ``layer4.1.conv2.weight``);
- a glob, matched with :mod:`fnmatch` against module paths and parameter names (``layer4.*``,
  ``*.bn*``).

``freeze_to="layer3"`` freezes every stage from the first (the stem) up to **and including**
``layer3``; the stages after it and the head train.

BatchNorm layers inside frozen parts keep their running statistics: :func:`freeze` installs a
forward pre-hook that keeps them in eval mode even after ``model.train()``, and
:func:`apply_bn_policy` does the same explicitly (the training loop calls it after every
``model.train()``). ``train_bn=True`` keeps normalisation layers trainable (as fastai does);
``frozen_bn=True`` replaces frozen BatchNorm2d layers by ``FrozenBatchNorm2d``.

Example:
    >>> import torchvision
    >>> model = torchvision.models.resnet18(weights=None, num_classes=3)
    >>> plan = freeze(model, freeze_to="layer3", head="fc")
    >>> [name for name, _ in stages(model, head="fc")]
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> plan.trainable_modules()
    ['layer4', 'fc']
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from regraft.errors import FreezeError
from regraft.freezing.batchnorm import (
    apply_bn_policy,
    bn_frozen,
    hold_bn_statistics,
    is_bn,
    mark_bn,
    norm_params,
    release_bn_policy,
    swap_frozen_bn,
)
from regraft.freezing.stages import cover, find_stages, under, vgg_fc

__all__ = ["FreezePlan", "freeze", "stages", "select", "apply_bn_policy", "hold_bn_statistics", "release_bn_policy", "swap_frozen_bn", "resolve_head", "Spec"]

log = logging.getLogger(__name__)

Spec = str | Sequence[str] | None
_KEYWORDS = ("all", "none", "head", "all-but-head")


@dataclass
class FreezePlan:
    """What :func:`freeze` did: which parameters train, which are frozen, what happened to BatchNorm."""

    head: str | None
    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    n_trainable: int = 0  # scalars, not tensors
    n_frozen: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)  # name, trainable, frozen counts
    bn_eval: list[str] = field(default_factory=list)  # BatchNorm modules kept in eval mode
    bn_swapped: list[str] = field(default_factory=list)  # replaced by FrozenBatchNorm2d
    train_bn: bool = False
    _cover_train: list[str] = field(default_factory=list, repr=False)
    _cover_frozen: list[str] = field(default_factory=list, repr=False)

    def trainable_modules(self) -> list[str]:
        """The fewest dotted paths that hold exactly the trainable parameters."""
        return list(self._cover_train)

    def frozen_modules(self) -> list[str]:
        return list(self._cover_frozen)

    def summary(self) -> str:
        total = self.n_trainable + self.n_frozen
        share = self.n_trainable / total if total else 0.0
        where = ", ".join(self._cover_train[:6]) + (", ..." if len(self._cover_train) > 6 else "")
        text = f"training {self.n_trainable:,} of {total:,} parameters ({share:.2%}): {where or 'nothing'}"
        if self.bn_eval:
            text += f"; {len(self.bn_eval)} frozen BatchNorm layers keep their running statistics"
        if self.bn_swapped:
            text += f"; {len(self.bn_swapped)} replaced by FrozenBatchNorm2d"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "n_trainable": self.n_trainable,
            "n_frozen": self.n_frozen,
            "trainable_modules": self.trainable_modules(),
            "frozen_modules": self.frozen_modules(),
            "stages": self.stages,
            "train_bn": self.train_bn,
            "bn_eval": self.bn_eval,
            "bn_swapped": self.bn_swapped,
            "trainable": self.trainable,
            "frozen": self.frozen,
        }


def resolve_head(model: nn.Module, head: str | None) -> str | None:
    """``head`` checked against ``model``, or found with :func:`regraft.surgery.find_head` (None if unknown)."""
    names = dict(model.named_modules())
    params = dict(model.named_parameters())
    if head is not None:
        if head not in names and head not in params:
            close = difflib.get_close_matches(head, list(names), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise FreezeError(f"head '{head}' is not a module of this model{hint}; pass the classifier's dotted path, e.g. head='fc'")
        return head
    try:
        from regraft.surgery import find_head
    except ImportError:
        return _guess_head(model)
    try:
        return find_head(model)
    except Exception as exc:  # noqa: BLE001 - a model without a recognisable head still freezes by path
        log.debug("no head found: %s", exc)
        return None


def _guess_head(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = dict(model.named_modules())
    if cfg.get("classifier") in names:
        return cfg["classifier"]
    linears = [n for n, m in names.items() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def stages(model: nn.Module, *, ref: Any = None, head: str | None = None) -> list[tuple[str, list[str]]]:
    """The ordered stages of ``model``'s trunk, from the input side to the head (excluded).

    Known families: ResNet (``stem``, ``layer1``..``layer4``), VGG/AlexNet (``block1``.. split at
    each max-pool, then ``fc1``, ``fc2``), MobileNet/EfficientNet/SqueezeNet (``features.N``),
    ConvNeXt/Swin (``stem``, ``stage1``..), DenseNet (``stem``, ``denseblockN``), RegNet
    (``stem``, ``block1``..), torchvision ViT (``stem``, ``encoder_layer_N``), timm models by
    their ``group_matcher`` (``stem``, ``layer1``, ``blocks.3``, ``stages.2``...). Other models:
    their top-level children in order. Parameters no rule placed get a stage of their own.

    Args:
        model: any module.
        ref: the architecture's ``ModelRef`` (informational; families are recognised by structure).
        head: dotted path of the classifier; found with ``surgery.find_head`` when None.

    Returns:
        ``[(stage name, [dotted paths of its modules/parameters]), ...]`` in forward order.

    Raises:
        FreezeError: ``head`` is not a path in ``model``.
    """
    del ref  # families are recognised by structure, which survives surgery and look-alikes
    return find_stages(model, head=resolve_head(model, head))


def select(model: nn.Module, spec: Spec, *, head: str | None = None, what: str = "spec") -> list[str]:
    """The parameter names ``spec`` selects, in ``model.named_parameters()`` order.

    Args:
        model: the module.
        spec: a token or list of tokens (comma-separated strings are split); see the module docs.
        head: the head's dotted path (found when None).
        what: how to name the spec in errors (``--train``, ``unfreeze[1]``).

    Returns:
        Parameter names.

    Raises:
        FreezeError: a token matches nothing (close valid names are listed), or needs a head
            that cannot be found.
    """
    head = resolve_head(model, head)
    return _Selector(model, head).names(spec, what)


class _Selector:
    """Resolves spec tokens against one model (its parameters, modules and stages)."""

    def __init__(self, model: nn.Module, head: str | None) -> None:
        self.model, self.head = model, head
        self.params = [n for n, _ in model.named_parameters()]
        self.modules = [n for n, _ in model.named_modules() if n]
        self.stages = find_stages(model, head=head)
        self.stage_names = [n for n, _ in self.stages]

    def names(self, spec: Spec, what: str) -> list[str]:
        chosen: set[str] = set()
        for token in _tokens(spec):
            chosen |= self.token(token, what)
        return [n for n in self.params if n in chosen]

    def stage_params(self, index: int) -> set[str]:
        return {n for n in self.params if any(under(n, e) for e in self.stages[index][1])}

    def head_params(self, what: str) -> set[str]:
        if self.head is None:
            raise FreezeError(f"{what}: cannot tell which module is the head of this model; pass head='dotted.path' (or --head)")
        return {n for n in self.params if under(n, self.head)}

    def stage_index(self, token: str, what: str) -> int:
        if token in self.stage_names:
            return self.stage_names.index(token)
        for i, (_, entries) in enumerate(self.stages):
            if token in entries:
                return i
        close = difflib.get_close_matches(token, list(dict.fromkeys(self.stage_names)), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise FreezeError(f"{what}: '{token}' is not a stage of this model; {hint}valid stages: {', '.join(self.stage_names)}")

    def token(self, token: str, what: str) -> set[str]:
        if token == "all":
            return set(self.params)
        if token == "none":
            return set()
        if token == "head":
            return self.head_params(what)
        if token == "all-but-head":
            return set(self.params) - self.head_params(what)
        if ".." in token:
            lo, hi = (self.stage_index(t.strip(), what) for t in token.split("..", 1))
            return set().union(*(self.stage_params(i) for i in range(min(lo, hi), max(lo, hi) + 1)))
        if token in self.stage_names:
            return self.stage_params(self.stage_names.index(token))
        if token in self.modules or token in self.params:
            return {n for n in self.params if under(n, token)}
        if token in ("fc1", "fc2"):  # VGG's names, also after surgery moved the indices
            fcs, index = vgg_fc(self.model, self.head), int(token[-1]) - 1
            if index < len(fcs):
                return {n for n in self.params if under(n, fcs[index])}
        if any(ch in token for ch in "*?["):
            mods = [m for m in self.modules if fnmatch.fnmatchcase(m, token)]
            found = {n for n in self.params if fnmatch.fnmatchcase(n, token) or any(under(n, m) for m in mods)}
            if found:
                return found
        raise FreezeError(f"{what}: '{token}' matches no stage, module or parameter{self._hint(token)}")

    def _hint(self, token: str) -> str:
        pool = list(dict.fromkeys([*_KEYWORDS, *self.stage_names, *self.modules]))
        close = difflib.get_close_matches(token, pool, n=3, cutoff=0.5)
        stages = ", ".join(self.stage_names)
        return f"; did you mean {', '.join(close)}? (stages: {stages})" if close else f"; stages: {stages}, head, all"


def _tokens(spec: Spec) -> list[str]:
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise FreezeError(f"freeze spec entries must be strings; got {item!r}: use names such as 'layer4' or 'head'")
        out.extend(t.strip() for t in item.split(",") if t.strip())
    return out


def freeze(
    model: nn.Module,
    *,
    train: Spec = None,
    freeze: Spec = None,
    freeze_to: str | None = None,
    train_bn: bool = False,
    head: str | None = None,
    frozen_bn: bool = False,
) -> FreezePlan:
    """Set ``requires_grad`` on every parameter of ``model`` (in place) and apply the BatchNorm policy.

    With no spec at all, everything but the head is frozen (``freeze="all-but-head"``).

    Args:
        model: the module to freeze, changed in place.
        train: what trains; everything else is frozen.
        freeze: what is frozen; everything else trains.
        freeze_to: a stage name: freeze from the first stage (the stem) up to **and including**
            this stage; combines with ``freeze``.
        train_bn: keep normalisation layers (BatchNorm, LayerNorm, GroupNorm) trainable
            everywhere, and let BatchNorm running statistics update (fastai's ``train_bn``).
        head: the classifier's dotted path (found with ``surgery.find_head`` when None).
        frozen_bn: replace frozen BatchNorm2d layers by ``FrozenBatchNorm2d`` (their weights
            become buffers; not reversible).

    Returns:
        A :class:`FreezePlan`.

    Raises:
        FreezeError: a spec matches nothing, names an unknown stage, or ``train`` is combined
            with ``freeze``/``freeze_to``, or ``train_bn`` with ``frozen_bn``.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(weights=None, num_classes=2)
        >>> freeze(m, train=["layer4", "head"], head="fc").trainable_modules()
        ['layer4', 'fc']
    """
    if train is not None and (freeze is not None or freeze_to is not None):
        raise FreezeError("give 'train' or 'freeze'/'freeze_to', not both: 'train' already freezes everything it does not name")
    if train_bn and frozen_bn:
        raise FreezeError("train_bn and frozen_bn contradict each other: train_bn keeps BatchNorm trainable; pick one")
    head = resolve_head(model, head)
    sel = _Selector(model, head)
    if train is not None:
        trainable = set(sel.names(train, "train"))
    else:
        if freeze is None and freeze_to is None:
            freeze = "all-but-head"
        frozen = set(sel.names(freeze, "freeze"))
        if freeze_to is not None:
            last = sel.stage_index(freeze_to.strip(), "freeze_to")
            frozen |= set().union(*(sel.stage_params(i) for i in range(last + 1)))
        trainable = set(sel.params) - frozen
    if train_bn:
        trainable |= set(norm_params(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    mark_bn(model, train_bn=train_bn)
    plan = _make_plan(model, sel, train_bn=train_bn)
    if frozen_bn:
        plan.bn_swapped = swap_frozen_bn(model, plan.bn_eval)
        plan.bn_eval = [p for p in plan.bn_eval if p not in plan.bn_swapped]
    log.info("freeze: %s", plan.summary())
    return plan


def _make_plan(model: nn.Module, sel: _Selector, *, train_bn: bool) -> FreezePlan:
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    frozen = [n for n, p in params.items() if not p.requires_grad]
    rows = []
    for i, (name, _) in enumerate(sel.stages):
        names = sel.stage_params(i)
        rows.append(_count_row(name, [params[n] for n in names]))
    if sel.head is not None:
        rows.append(_count_row("head", [p for n, p in params.items() if under(n, sel.head)]))
    return FreezePlan(
        head=sel.head,
        trainable=trainable,
        frozen=frozen,
        n_trainable=sum(params[n].numel() for n in trainable),
        n_frozen=sum(params[n].numel() for n in frozen),
        stages=rows,
        bn_eval=[n for n, m in model.named_modules() if is_bn(m) and bn_frozen(m)],
        train_bn=train_bn,
        _cover_train=cover(model, set(trainable)),
        _cover_frozen=cover(model, set(frozen)),
    )


def _count_row(name: str, params: list) -> dict[str, Any]:
    return {
        "name": name,
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "frozen": sum(p.numel() for p in params if not p.requires_grad),
    }
