"""A strategy's plan for one model: what trains, at which learning rates, on which schedule.

``train``, ``freeze``, ``freeze_to`` and ``unfreeze`` in the config replace the strategy's choice
of what trains; the strategy still sets the learning rates (the table is in
:mod:`regraft.strategies`). Staged unfreezing is a typed :class:`Unfreezing` beside the
optimizer: which group wakes in which epoch, and how long its LR ramps.

Example:
    >>> import torchvision
    >>> from regraft.config import Config
    >>> model = torchvision.models.resnet18(weights=None, num_classes=3)
    >>> p = plan(model, strategy="partial", cfg=Config(), steps_per_epoch=10, head="fc")
    >>> p.freeze_plan.trainable_modules()
    ['layer4', 'fc']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from regraft.config import Config
from regraft.errors import ConfigError
from regraft.families import partial_units
from regraft.freezing import (
    FreezePlan,
    apply_bn_policy,
    freeze,
    resolve_head,
    select,
    stages,
    swap_frozen_bn,
)
from regraft.freezing.stages import under
from regraft.optim import (
    GroupScheduler,
    GroupWake,
    UnfreezeSchedule,
    build_optimizer,
    build_scheduler,
    param_groups,
    split_by_epoch,
)
from regraft.strategies.names import Strategy

__all__ = ["plan", "TrainPlan", "Unfreezing", "DEFAULT_LR", "SGD_LR_FACTOR", "default_lr", "default_weight_decay", "format_audit"]

log = logging.getLogger(__name__)

# AdamW learning rates when cfg.lr is None: the trunk's LR (the head gets head_lr_mult × it),
# or the only LR for scratch and head. SGD uses SGD_LR_FACTOR times these. (probe: lr-find's
# stand-in is head; the probe itself is a closed-form fit.)
DEFAULT_LR = {"scratch": 1e-3, "probe": 1e-3, "head": 1e-3, "partial": 1e-4, "full": 1e-4, "lp-ft": 1e-5, "gradual": 1e-4}
SGD_LR_FACTOR = 10.0
LP_FT_DISCRIMINATIVE = 0.1


def default_lr(strategy: str | Strategy, optimizer: str) -> float:
    """The learning rate a strategy uses when none is given (see :data:`DEFAULT_LR`)."""
    return DEFAULT_LR[Strategy.parse(strategy).value] * (SGD_LR_FACTOR if optimizer == "sgd" else 1.0)


def default_weight_decay(optimizer: str) -> float:
    """0.05 for AdamW, 1e-4 for SGD."""
    return 1e-4 if optimizer == "sgd" else 0.05


@dataclass
class Unfreezing:
    """When each optimizer group starts training (one :class:`~regraft.optim.GroupWake` per group)
    and the unfreeze steps that produced it; which groups are awake is the scheduler's."""

    wakes: list[GroupWake]
    schedule: UnfreezeSchedule | None = None

    def due(self, epoch: int) -> list[int]:
        """Groups whose wake epoch has come by ``epoch`` (counted from 0)."""
        return [i for i, w in enumerate(self.wakes) if w.epoch <= epoch]

    @property
    def staged(self) -> bool:
        """Whether anything starts training after the first epoch."""
        return any(w.epoch > 0 for w in self.wakes)


@dataclass
class TrainPlan:
    """Freezing, optimizer and schedule for one run, plus staged unfreezing as epochs begin."""

    strategy: Strategy
    head: str | None
    freeze_plan: FreezePlan
    optimizer: torch.optim.Optimizer
    scheduler: GroupScheduler
    lr: float
    steps_per_epoch: int
    unfreezing: Unfreezing
    epoch: int = -1  # the last epoch begun
    model: nn.Module | None = field(default=None, repr=False)
    layout: list[tuple[str, list[str]]] = field(default_factory=list, repr=False)  # stages + head

    @property
    def unfreeze(self) -> UnfreezeSchedule | None:
        """The unfreeze steps (from the config's ``unfreeze`` or strategy ``gradual``), if any."""
        return self.unfreezing.schedule

    def _groups(self) -> list[dict[str, Any]]:
        # the scheduler holds the bare optimizer; `optimizer` may have been wrapped
        return self.scheduler.optimizer.param_groups

    def begin_epoch(self, epoch: int) -> list[str]:
        """Apply the unfreeze schedule for ``epoch`` (counted from 0); returns what changed, in words."""
        groups = self._groups()
        woken = [i for i in self.unfreezing.due(epoch) if not self.scheduler.is_awake(i)]
        for i in self.unfreezing.due(epoch):
            for p in groups[i]["params"]:
                p.requires_grad_(True)
        self.epoch = epoch
        if not woken:
            return []
        self.scheduler.wake(woken)
        if self.model is not None:
            apply_bn_policy(self.model)
        stages_woken = list(dict.fromkeys(groups[i]["stage"] for i in woken))
        n = sum(p.numel() for i in woken for p in groups[i]["params"])
        steps = max(self.scheduler.wake_warmup[i] for i in woken)
        return [f"epoch {epoch + 1}: unfreezing {', '.join(stages_woken)} ({n:,} parameters); their LR warms up over {steps} steps"]

    def stage_label(self, epoch: int) -> str | None:
        """The ``stage`` of epoch ``epoch``'s rows under staged unfreezing (``head``, ``+layer4``,
        ``all`` ...), or None when nothing unfreezes during the run."""
        if not self.unfreezing.staged:
            return None
        steps = self.unfreezing.schedule.steps if self.unfreezing.schedule is not None else ()
        current = [s for s in steps if s.epoch <= epoch]
        if not current:
            return None
        last = current[-1]
        text = "+".join(last.train)
        return text if last is current[0] else f"+{text}"

    def audit(self) -> list[dict[str, Any]]:
        """One row per optimizer group, and one per stage part outside the optimizer (frozen).

        Rows: ``group``, ``stage``, ``trainable_params`` and ``frozen_params`` (counts now),
        ``lr`` (the group's peak LR; None for parts outside the optimizer), ``lr_now``,
        ``weight_decay``, ``unfreeze_epoch`` (from 0; None = never trains).
        """
        rows: list[dict[str, Any]] = []
        in_opt: set[int] = set()
        by_stage: dict[str, list[tuple[dict[str, Any], GroupWake]]] = {}
        for group, wake in zip(self._groups(), self._wakes(), strict=True):
            in_opt |= {id(p) for p in group["params"]}
            by_stage.setdefault(group.get("stage", group.get("name", "?")), []).append((group, wake))
        params = dict(self.model.named_parameters()) if self.model is not None else {}
        for stage, entries in self.layout:
            for group, wake in by_stage.pop(stage, []):
                rows.append(_group_row(group, wake))
            rest = [p for n, p in params.items() if any(under(n, e) for e in entries) and id(p) not in in_opt]
            if rest:
                name = stage if all(r["stage"] != stage for r in rows) else f"{stage}/frozen"
                rows.append({"group": name, "stage": stage, "trainable_params": 0, "frozen_params": sum(p.numel() for p in rest),
                             "lr": None, "lr_now": None, "weight_decay": 0.0, "unfreeze_epoch": None})
        rows += [_group_row(g, w) for groups in by_stage.values() for g, w in groups]
        return rows

    def _wakes(self) -> list[GroupWake]:
        # groups added to the optimizer after planning (add_param_group) train from when they came
        wakes = list(self.unfreezing.wakes)
        return wakes + [GroupWake(0)] * (len(self._groups()) - len(wakes))

    def describe(self) -> str:
        """The audit as a text table (what the CLI prints when training starts)."""
        return format_audit(self.audit())

    def state_dict(self) -> dict[str, Any]:
        """Plain values for exact resume (the optimizer and scheduler save their own)."""
        awake = [g.get("name", str(i)) for i, g in enumerate(self._groups()) if self.scheduler.is_awake(i)]
        return {"strategy": self.strategy.value, "epoch": self.epoch, "awake": awake}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore which groups train (``requires_grad``) as they did when ``state`` was saved."""
        awake = set(state.get("awake", []))
        for i, group in enumerate(self._groups()):
            if group.get("name", str(i)) in awake:
                for p in group["params"]:
                    p.requires_grad_(True)
        self.epoch = int(state.get("epoch", -1))


def _group_row(group: dict[str, Any], wake: GroupWake) -> dict[str, Any]:
    ps = group["params"]
    return {
        "group": group.get("name", "?"),
        "stage": group.get("stage", group.get("name", "?")),
        "trainable_params": sum(p.numel() for p in ps if p.requires_grad),
        "frozen_params": sum(p.numel() for p in ps if not p.requires_grad),
        "lr": group.get("base_lr", group.get("initial_lr", group["lr"])),
        "lr_now": group["lr"],
        "weight_decay": group.get("weight_decay", 0.0),
        "unfreeze_epoch": wake.epoch,
    }


def format_audit(rows: list[dict[str, Any]]) -> str:
    """Rows of :meth:`TrainPlan.audit` as an aligned text table."""
    def fmt(value: Any, kind: str) -> str:
        if value is None:
            return "-"
        return f"{value:,}" if kind == "n" else f"{value:.3g}"

    header = f"{'group':<28} {'trainable':>12} {'frozen':>12} {'lr':>9} {'wd':>7} {'from epoch':>10}"
    lines = [header]
    for r in rows:
        start = "-" if r["unfreeze_epoch"] is None else str(r["unfreeze_epoch"] + 1)
        wd = None if r["lr"] is None else r["weight_decay"]
        lines.append(f"{r['group']:<28} {fmt(r['trainable_params'], 'n'):>12} {fmt(r['frozen_params'], 'n'):>12} "
                     f"{fmt(r['lr'], 'f'):>9} {fmt(wd, 'f'):>7} {start:>10}")
    return "\n".join(lines)


def _initial_spec(strategy: Strategy, cfg: Config, units: list[list[str]], schedule: UnfreezeSchedule | None) -> dict[str, Any]:
    if cfg.train is not None or cfg.freeze is not None or cfg.freeze_to is not None:
        return {"train": cfg.train, "freeze": cfg.freeze, "freeze_to": cfg.freeze_to}
    if cfg.unfreeze and schedule is not None:
        first = [t for s in schedule.steps if s.epoch == 0 for t in s.train]
        return {"train": first or ["head"]}
    if strategy in (Strategy.SCRATCH, Strategy.FULL, Strategy.LP_FT):
        return {"train": ["all"]}
    if strategy in (Strategy.HEAD, Strategy.GRADUAL, Strategy.PROBE):
        return {"train": ["head"]}
    if cfg.partial_stages > len(units):
        log.warning("partial_stages=%d but the model has %d stages: training all of them", cfg.partial_stages, len(units))
    chosen = [n for unit in units[-cfg.partial_stages:] for n in unit] if units else []
    return {"train": [*chosen, "head"]}


def _lr_shape(strategy: Strategy, cfg: Config) -> dict[str, Any]:
    if strategy in (Strategy.SCRATCH, Strategy.HEAD, Strategy.PROBE):
        return {"head_lr_mult": 1.0, "discriminative_lr": cfg.discriminative_lr, "layer_decay": cfg.layer_decay}
    disc = cfg.discriminative_lr
    if strategy is Strategy.LP_FT and disc is None and cfg.layer_decay is None:
        disc = LP_FT_DISCRIMINATIVE
    return {"head_lr_mult": cfg.head_lr_mult, "discriminative_lr": disc, "layer_decay": cfg.layer_decay}


def _gradual_units(model: nn.Module, layout: list[tuple[str, list[str]]]) -> list[tuple[str, ...]]:
    # a stage of norms and biases only (a final LayerNorm) wakes with the stage before it
    params = dict(model.named_parameters())
    units: list[tuple[str, ...]] = []
    pending: tuple[str, ...] = ()
    for name, entries in reversed(layout):
        mine = [p for n, p in params.items() if any(under(n, e) for e in entries)]
        pending = (name, *pending)
        if any(p.ndim > 1 for p in mine):
            units.insert(0, pending)
            pending = ()
    if pending:  # norm-only stages at the input side wake with the first stage
        if units:
            units[0] = (*pending, *units[0])
        else:
            units.append(pending)
    return units


def _lr_groups(model: nn.Module, cfg: Config, head: str | None) -> dict[str, tuple[str, float]]:
    """A recipe's ``lr_groups`` as parameter name -> (key, LR); the first key naming a parameter wins.

    Keys are freeze-spec tokens (a stage, ``head``, a module path, a glob: docs/freezing.md).

    Raises:
        FreezeError: a key matches no parameter (the error names it).
    """
    out: dict[str, tuple[str, float]] = {}
    for key, value in cfg.lr_groups.items():
        for name in select(model, [key], head=head, what=f"lr_groups['{key}']"):
            out.setdefault(name, (key, float(value)))
    return out


def _schedule(strategy: Strategy, cfg: Config, model: nn.Module, layout: list[tuple[str, list[str]]]) -> UnfreezeSchedule | None:
    if cfg.unfreeze:
        schedule = UnfreezeSchedule.parse(cfg.unfreeze)
    elif strategy is Strategy.GRADUAL:
        schedule = UnfreezeSchedule.gradual(_gradual_units(model, layout), epochs=cfg.epochs)
    else:
        return None
    late = [s.epoch for s in schedule.steps if s.epoch >= cfg.epochs]
    if late:
        log.warning("unfreeze: epoch %d is past the last epoch (%d, counted from 0) and never happens", late[0], cfg.epochs - 1)
    return schedule


def plan(
    model: nn.Module, *, strategy: str | Strategy, cfg: Config, steps_per_epoch: int, head: str | None = None,
    epochs: int | None = None,
) -> TrainPlan:
    """Freeze ``model`` (in place) and build its optimizer, schedule and unfreeze steps.

    Args:
        model: the model with its new head.
        strategy: any strategy but ``auto`` (:func:`regraft.strategies.decide` resolves it).
        cfg: the run's settings (lr, optimizer, schedule, freezing fields...).
        steps_per_epoch: optimizer steps per epoch (batches / grad_accum).
        head: the head's dotted path (found with ``surgery.find_head`` when None).
        epochs: the schedule's length (default ``cfg.epochs``).

    Returns:
        A :class:`TrainPlan`; call ``begin_epoch(e)`` before each epoch and
        ``scheduler.step()`` after each optimizer step.

    Raises:
        ConfigError: ``auto``, an unknown strategy or bad LR settings.
        FreezeError: a freeze or unfreeze spec matches nothing, or nothing would train.
    """
    strategy = Strategy.parse(strategy)
    if strategy is Strategy.AUTO:
        raise ConfigError("plan() needs a concrete strategy; resolve 'auto' first with regraft.strategies.decide")
    epochs = cfg.epochs if epochs is None else epochs
    head = resolve_head(model, head)
    layout = stages(model, head=head)
    names = [n for n, _ in layout]
    schedule = _schedule(strategy, cfg, model, layout)
    units = partial_units(model, names)  # VGG/AlexNet's fc1 + fc2 (the pretrained MLP) are one unit
    fplan = freeze(model, **_initial_spec(strategy, cfg, units, schedule), train_bn=cfg.train_bn, head=head)
    wake = schedule.wake_epochs(model, head=head, initial=fplan.trainable) if schedule else dict.fromkeys(fplan.trainable, 0)
    if cfg.frozen_bn:
        never = [p for p in fplan.bn_eval if not any(under(n, p) for n in wake)]
        fplan.bn_swapped = swap_frozen_bn(model, never)
        fplan.bn_eval = [p for p in fplan.bn_eval if p not in fplan.bn_swapped]
    lr = cfg.lr if cfg.lr is not None else default_lr(strategy, cfg.optimizer)
    wd = cfg.weight_decay if cfg.weight_decay is not None else default_weight_decay(cfg.optimizer)
    groups = param_groups(model, lr=lr, head=head, weight_decay=wd, names=wake, lr_of=_lr_groups(model, cfg, head),
                          **_lr_shape(strategy, cfg))
    groups, wakes = split_by_epoch(groups, wake, steps_per_epoch=steps_per_epoch, schedule=schedule)
    optimizer = build_optimizer(groups, name=cfg.optimizer, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    scheduler = build_scheduler(
        optimizer, name=cfg.schedule, total_steps=max(1, epochs) * steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), step_size_steps=cfg.step_size * steps_per_epoch,
        gamma=cfg.gamma, unfreeze_warmup_steps=steps_per_epoch, wakes=wakes,
    )
    result = TrainPlan(
        strategy=strategy, head=head, freeze_plan=fplan, optimizer=optimizer, scheduler=scheduler, lr=lr,
        steps_per_epoch=steps_per_epoch, unfreezing=Unfreezing(wakes, schedule),
        model=model, layout=[*layout, *([("head", [head])] if head else [])],
    )
    log.info("strategy %s: lr %.3g, %s, schedule %s%s", strategy.value, lr, fplan.summary(), cfg.schedule,
             f", unfreeze {schedule.to_list()}" if schedule else "")
    return result
