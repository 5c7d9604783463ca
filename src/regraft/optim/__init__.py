"""Parameter groups, optimizers, per-batch LR schedules, and staged unfreezing.

Groups follow the stages of :func:`regraft.freezing.stages` plus the head, each split into
parameters that get weight decay and those that do not (norms, biases, position embeddings).
Learning rates compose: ``lr × stage scale`` where the scale is ``head_lr_mult`` for the head,
a geometric ramp for ``discriminative_lr`` or ``decay ** depth`` for ``layer_decay``.

:class:`GroupScheduler` multiplies each group's own base LR by one shared schedule (constant,
cosine, one-cycle, step; with linear warmup) and by a per-group wake factor: groups of stages
that unfreeze later sit in the optimizer from the start with LR 0 and ``requires_grad=False``
(so no gradient, no optimizer state, no weight decay) until :meth:`GroupScheduler.wake`, after
which they warm up linearly. Its ``state_dict`` holds only plain values, for exact resume.

Example:
    >>> import torchvision
    >>> model = torchvision.models.resnet18(weights=None, num_classes=3)
    >>> groups = param_groups(model, lr=1e-4, head="fc")
    >>> [(g["name"], g["lr"]) for g in groups][-2:]
    [('head', 0.001), ('head/no_decay', 0.001)]
    >>> opt = build_optimizer(groups, name="adamw", lr=1e-4)
    >>> sched = build_scheduler(opt, name="cosine", total_steps=100, warmup_steps=10)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from regraft.errors import ConfigError, FreezeError
from regraft.freezing import resolve_head
from regraft.freezing.stages import find_stages, under
from regraft.optim.unfreeze import GroupWake, UnfreezeSchedule, UnfreezeStep, split_by_epoch

__all__ = [
    "param_groups",
    "stage_scales",
    "build_optimizer",
    "build_scheduler",
    "GroupScheduler",
    "UnfreezeSchedule",
    "UnfreezeStep",
    "GroupWake",
    "split_by_epoch",
    "OPTIMIZERS",
    "SCHEDULES",
]

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
# parameters without weight decay whatever their shape (timm's no_weight_decay() adds its own)
_NO_DECAY_NAMES = {"pos_embed", "pos_embedding", "cls_token", "class_token", "dist_token", "reg_token",
                   "relative_position_bias_table", "absolute_pos_embed"}


def stage_scales(n: int, *, discriminative_lr: float | None = None, layer_decay: float | None = None) -> list[float]:
    """LR multipliers for ``n`` trunk stages, first (input side) to last.

    ``discriminative_lr=d``: geometric from ``d`` (first stage) to 1 (last stage).
    ``layer_decay=g``: ``g ** depth`` with depth counted from the head (last stage: ``g``).
    Neither: all 1.

    Raises:
        ConfigError: both are given, or one is outside (0, 1].
    """
    if discriminative_lr is not None and layer_decay is not None:
        raise ConfigError("give discriminative_lr or layer_decay, not both: both set per-stage LRs")
    for key, value in (("discriminative_lr", discriminative_lr), ("layer_decay", layer_decay)):
        if value is not None and not 0.0 < value <= 1.0:
            raise ConfigError(f"{key} must be in (0, 1] (the lowest stage's LR as a fraction of lr); got {value}")
    if discriminative_lr is not None:
        return [discriminative_lr ** ((n - 1 - i) / (n - 1)) if n > 1 else 1.0 for i in range(n)]
    if layer_decay is not None:
        return [layer_decay ** (n - i) for i in range(n)]
    return [1.0] * n


def _no_decay(model: nn.Module) -> set[str]:
    extra: set[str] = set()
    if callable(getattr(model, "no_weight_decay", None)):
        try:
            extra = set(model.no_weight_decay())
        except Exception:  # noqa: BLE001 - a model's own hint is optional
            extra = set()
    out = set()
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES or any(under(name, x) for x in extra):
            out.add(name)
    return out


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    head_lr_mult: float = 10.0,
    head: str | None = None,
    weight_decay: float = 0.0,
    no_decay_norm_bias: bool = True,
    discriminative_lr: float | None = None,
    layer_decay: float | None = None,
    include_frozen: bool = False,
    names: Iterable[str] | None = None,
    lr_of: Mapping[str, tuple[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per stage (and the head), split by weight decay.

    Args:
        model: the module (its ``requires_grad`` flags decide what is included).
        lr: the trunk's learning rate (the last stage's, with discriminative LRs).
        head_lr_mult: the head's LR is ``lr * head_lr_mult``.
        head: the head's dotted path (found with ``surgery.find_head`` when None).
        weight_decay: for weights; 1-D parameters (norms, biases) and embeddings get 0 when
            ``no_decay_norm_bias``.
        discriminative_lr: the first stage's LR as a fraction of ``lr``, geometric in between.
        layer_decay: timm-style layer-wise decay: stage LR ``lr * layer_decay ** depth``.
        include_frozen: also include parameters with ``requires_grad=False``.
        names: include exactly these parameter names (overrides the two rules above).
        lr_of: parameter name -> ``(label, lr)``: these parameters train at ``lr`` whatever their
            stage's scale (a recipe's ``lr_groups``); they get groups of their own, named
            ``stage[label]`` (``stage`` alone when the label is the stage's name).

    Returns:
        Group dicts with ``params``, ``param_names``, ``name`` (``layer4``, ``head/no_decay``),
        ``stage``, ``lr``, ``initial_lr``, ``base_lr``, ``lr_scale`` and ``weight_decay``,
        from the input side to the head; empty groups are left out.

    Raises:
        ConfigError: a bad ``lr``, ``head_lr_mult``, ``discriminative_lr`` or ``layer_decay``.
    """
    if not lr > 0 or not head_lr_mult > 0:
        raise ConfigError(f"lr and head_lr_mult must be positive; got lr={lr}, head_lr_mult={head_lr_mult}")
    head = resolve_head(model, head)
    stage_list = find_stages(model, head=head)
    scales = stage_scales(len(stage_list), discriminative_lr=discriminative_lr, layer_decay=layer_decay)
    units = [(name, entries, s) for (name, entries), s in zip(stage_list, scales, strict=True)]
    if head is not None:
        units.append(("head", [head], head_lr_mult))
    wanted = set(names) if names is not None else None
    no_decay = _no_decay(model) if no_decay_norm_bias else set()
    overrides = dict(lr_of or {})
    buckets: dict[tuple[int, bool, str], list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if (wanted is not None and name not in wanted) or (wanted is None and not (p.requires_grad or include_frozen)):
            continue
        unit = next(i for i, (_, entries, _) in enumerate(units) if any(under(name, e) for e in entries))
        buckets.setdefault((unit, name in no_decay, overrides.get(name, ("", 0.0))[0]), []).append((name, p))
    groups = []
    for (unit, nd, label), members in sorted(buckets.items()):
        stage, _, scale = units[unit]
        group_lr = overrides[members[0][0]][1] if label else lr * scale
        base = stage if label in ("", stage) else f"{stage}[{label}]"
        groups.append({
            "params": [p for _, p in members],
            "param_names": [n for n, _ in members],
            "name": f"{base}/no_decay" if nd else base,
            "stage": stage,
            "lr": group_lr,
            "initial_lr": group_lr,
            "base_lr": group_lr,
            "lr_scale": group_lr / lr,
            "weight_decay": 0.0 if nd else weight_decay,
        })
    return groups


def build_optimizer(
    groups: Sequence[Mapping[str, Any]],
    *,
    name: str = "adamw",
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """An SGD or AdamW optimizer over ``groups`` (each group's own ``lr``/``weight_decay`` win).

    Args:
        groups: from :func:`param_groups` (copied, not changed).
        name: ``sgd`` or ``adamw``.
        lr, weight_decay: defaults for groups that do not set their own.
        momentum, nesterov: SGD only.

    Raises:
        ConfigError: an unknown optimizer, or nesterov without momentum.
        FreezeError: the groups hold no parameter (everything is frozen).
    """
    groups = [dict(g) for g in groups]
    if not any(len(g["params"]) for g in groups):
        raise FreezeError("nothing to train: every parameter is frozen; train at least the head (e.g. --strategy head)")
    key = name.lower()
    wd = 0.0 if weight_decay is None else weight_decay
    if key == "sgd":
        if nesterov and momentum <= 0:
            raise ConfigError(f"nesterov needs momentum > 0; got momentum={momentum}: set momentum 0.9 or drop nesterov")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got '{name}'")


def _cos_between(start: float, end: float, x: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * min(max(x, 0.0), 1.0))) / 2.0


class GroupScheduler(LRScheduler):
    """Per-batch schedule: each group's LR is ``base_lr × schedule(step) × wake ramp``.

    ``wakes`` (one :class:`GroupWake` per group, from :func:`split_by_epoch`) says which groups
    start asleep (LR 0, ``epoch > 0``) until :meth:`wake`; a woken group ramps linearly from
    ``1/W`` to 1 over its ``W`` warmup steps. Groups added to the optimizer later
    (``add_param_group``) are picked up and warm up from the step they appear.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        schedule: str = "constant",
        total_steps: int,
        warmup_steps: int = 0,
        step_size_steps: int | None = None,
        gamma: float = 0.1,
        unfreeze_warmup_steps: int = 0,
        wakes: Sequence[GroupWake] | None = None,
    ) -> None:
        self.schedule = schedule
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.step_size_steps = max(1, int(step_size_steps or max(1, self.total_steps // 3)))
        self.gamma = float(gamma)
        self.unfreeze_warmup_steps = max(0, int(unfreeze_warmup_steps))
        plan = list(wakes) if wakes is not None else [GroupWake(0)] * len(optimizer.param_groups)
        if len(plan) != len(optimizer.param_groups):
            raise ValueError(f"wakes has {len(plan)} entries for {len(optimizer.param_groups)} optimizer groups")
        self.wake_steps: list[int | None] = [None if w.epoch > 0 else 0 for w in plan]
        # groups training from the start follow the shared warmup only
        self.wake_warmup: list[int] = [max(0, w.warmup_steps) if w.epoch > 0 else 0 for w in plan]
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The shared schedule's multiplier at ``step`` (0 = the first optimizer step)."""
        t, total, warm = step, self.total_steps, self.warmup_steps
        if self.schedule == "onecycle":
            rise = warm if warm > 0 else max(1, round(0.3 * total))
            if t < rise:
                return _cos_between(1.0 / 25.0, 1.0, t / rise)
            return _cos_between(1.0, 1.0 / 25e4, (t - rise) / max(1, total - 1 - rise))
        ramp = (t + 1) / warm if t < warm else 1.0
        if self.schedule == "cosine":
            return ramp * _cos_between(1.0, 0.0, (t - warm) / max(1, total - warm))
        if self.schedule == "step":
            return ramp * self.gamma ** (max(t, 0) // self.step_size_steps)
        return ramp

    def group_factor(self, index: int, step: int) -> float:
        """The schedule times group ``index``'s wake ramp (0 while asleep)."""
        woke = self.wake_steps[index]
        if woke is None:
            return 0.0
        width = self.wake_warmup[index]
        ramp = min(1.0, (step - woke + 1) / width) if width > 0 else 1.0
        return self.factor(step) * max(ramp, 0.0)

    def _sync(self) -> None:
        for group in self.optimizer.param_groups[len(self.base_lrs):]:
            self.base_lrs.append(group.setdefault("initial_lr", group["lr"]))
            self.wake_steps.append(max(self.last_epoch, 0))
            self.wake_warmup.append(self.unfreeze_warmup_steps)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        self._sync()
        return [base * self.group_factor(i, self.last_epoch) for i, base in enumerate(self.base_lrs)]

    def is_awake(self, index: int) -> bool:
        self._sync()
        return self.wake_steps[index] is not None

    def wake(self, indices: Iterable[int], *, warmup_steps: int | None = None) -> None:
        """Start groups ``indices`` from the current step, ramping up over ``warmup_steps``; LRs update now."""
        self._sync()
        for i in indices:
            if self.wake_steps[i] is None:
                self.wake_steps[i] = max(self.last_epoch, 0)
                if warmup_steps is not None:
                    self.wake_warmup[i] = max(0, int(warmup_steps))
        values = self.get_lr()
        for group, value in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = value
        self._last_lr = list(values)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str = "constant",
    total_steps: int,
    warmup_steps: int = 0,
    step_size_steps: int | None = None,
    gamma: float = 0.1,
    unfreeze_warmup_steps: int = 0,
    wakes: Sequence[GroupWake] | None = None,
) -> GroupScheduler:
    """A :class:`GroupScheduler`, stepped once per optimizer step (per batch).

    Args:
        optimizer: its groups keep their own base LRs (``initial_lr``, else ``lr``).
        name: ``constant``, ``cosine`` (to 0), ``onecycle`` (from lr/25 up to lr, then down to
            lr/25e4; ``warmup_steps`` sets the rise, else 30% of the run), ``step`` (× ``gamma``
            every ``step_size_steps``).
        total_steps: optimizer steps in the run.
        warmup_steps: linear warmup at the start (all schedules but onecycle).
        unfreeze_warmup_steps: the ramp of groups added to the optimizer later.
        wakes: one :class:`GroupWake` per group (default: all train from the start).

    Raises:
        ConfigError: an unknown schedule name.
    """
    key = name.lower()
    if key not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}; got '{name}'")
    if warmup_steps >= total_steps > 1:
        log.warning("warmup (%d steps) is as long as the run (%d steps): the LR never reaches its peak", warmup_steps, total_steps)
    return GroupScheduler(
        optimizer, schedule=key, total_steps=total_steps, warmup_steps=warmup_steps,
        step_size_steps=step_size_steps, gamma=gamma, unfreeze_warmup_steps=unfreeze_warmup_steps, wakes=wakes,
    )
