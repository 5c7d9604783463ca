"""Building the gradient-trained stage of a run: the plan's model made ready for the one loop.

BatchNorm statistics held when the strategy says so, the memory format of the step numerics,
training on cached features of the frozen prefix when the strategy allows, DDP for several
processes, the EMA, ``torch.compile``, mixup/cutmix, and the task's loss (weighted by
``--balance loss``; the class-balanced sampler of ``--balance sampler`` is the data's). The model whose weights are kept stays the
plain module: the forward module may be the cached rest, DDP-wrapped or compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from regraft import data
from regraft.config import Config
from regraft.features import CacheSettings, train_with_cache
from regraft.freezing import apply_bn_policy, hold_bn_statistics
from regraft.strategies import Decisions, TrainPlan
from regraft.tasks import Balance
from regraft.training.checkpoint import WeightEMA
from regraft.training.loop import Stage
from regraft.training.numerics import StepNumerics
from regraft.training.processes import Processes
from regraft.training.setup import DataSetup, NetSetup

__all__ = ["training_stage"]


def training_stage(
    cfg: Config, *, name: str, net: NetSetup, data_setup: DataSetup, plan: TrainPlan, decisions: Decisions,
    procs: Processes, numerics: StepNumerics, last_epoch: int, notify: Callable[[str], None],
    evals_per_epoch: int = 1, stop_behind: int | None = None, checkpoint_extra: dict[str, Any] | None = None,
) -> Stage:
    """The :class:`~regraft.training.loop.Stage` that trains ``plan`` until ``last_epoch`` epochs are complete."""
    model = net.model
    if decisions.hold_bn_stats:
        held = hold_bn_statistics(model)
        if held:
            notify(f"BatchNorm statistics held fixed in {held} layers (bn_eval; affine parameters still train)")
    if numerics.channels_last:
        model.to(memory_format=torch.channels_last)
    forward, train_loader, val_loader = model, data_setup.train_loader, data_setup.val_loader
    if not decisions.cache_reason:
        cached = train_with_cache(
            model, train_dataset=data_setup.train_dataset, val_dataset=data_setup.val_dataset,
            settings=CacheSettings.from_config(cfg), device=procs.device, autocast=numerics.autocast, head=net.head,
            rank=procs.index, world_size=procs.count, notify=notify, sample_weights=_drawn(data_setup),
        )
        if cached is not None:
            forward, train_loader, val_loader = cached
    forward = _wrap(forward, plan, procs)
    ema = WeightEMA(model, decay=cfg.ema) if cfg.ema else None
    if cfg.compile:
        forward = torch.compile(forward)
    task = data_setup.rules
    mix = data.mixup_cutmix(len(data_setup.classes), mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, multilabel=task.multilabel)
    criterion = training_criterion(cfg, data_setup).to(procs.device)
    return Stage(
        name=name, model=forward, weights=model, plan=plan, train_loader=train_loader, val_loader=val_loader,
        last_epoch=last_epoch, numerics=numerics, seed=cfg.seed, criterion=criterion, evals_per_epoch=evals_per_epoch,
        grad_accum=cfg.grad_accum, clip_grad=cfg.clip_grad, batch_transform=mix, after_train_mode=apply_bn_policy,
        ema=ema, stop_behind=stop_behind, patience=cfg.patience, checkpoint_extra=dict(checkpoint_extra or {}), task=task,
    )


def training_criterion(cfg: Config, data_setup: DataSetup) -> nn.Module:
    """The task's training loss: label smoothing, the multi-label loss, and ``--balance loss``'s weights."""
    return data_setup.rules.criterion(label_smoothing=cfg.label_smoothing, weights=data_setup.loss_weights,
                                      loss=cfg.multilabel_loss)


def _drawn(data_setup: DataSetup) -> list[float] | None:
    """The sampler's per-image weights under ``--balance sampler`` (None otherwise)."""
    sampler = data_setup.balance is not None and data_setup.balance.mode is Balance.SAMPLER
    return data_setup.sample_weights if sampler else None


def _wrap(forward: nn.Module, plan: TrainPlan, procs: Processes) -> nn.Module:
    """``forward`` on the device; in DDP with only the parameters that train (and, under staged
    unfreezing, those that will: DDP registers parameters once, when it wraps)."""
    if not procs.distributed or not plan.unfreezing.staged:
        return procs.wrap(forward)
    later = [p for g in plan.optimizer.param_groups for p in g["params"] if not p.requires_grad]
    for p in later:
        p.requires_grad_(True)
    try:
        return procs.wrap(forward, find_unused_parameters=True)
    finally:
        for p in later:
            p.requires_grad_(False)
