"""A learning-rate range test (Smith, 2015; fastai's ``lr_find``) that leaves the model untouched.

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` batches, each a
step of the training loop's own :class:`~regraft.training.step.Stepper` (the same autocast,
loss and numerics), while the loss is recorded; it stops when the loss diverges. The suggestion
is the LR where the smoothed loss falls fastest, before its minimum. Parameter groups keep their
ratios (a head at 10x stays at 10x); LRs are reported in units of the base LR that ``--lr`` sets
(the trunk's), not the head's.

Example:
    >>> result = lr_find(model, loader, optimizer)   # doctest: +SKIP
    >>> result.suggestion                            # doctest: +SKIP
    0.0012
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from regraft import rng, strategies
from regraft.config import Config
from regraft.errors import TrainingError
from regraft.freezing import apply_bn_policy, hold_bn_statistics
from regraft.runs import RunDir, RunKind, lock_scope
from regraft.training import setup
from regraft.training.numerics import StepNumerics, step_numerics
from regraft.training.processes import processes
from regraft.training.stage import training_criterion
from regraft.training.step import Stepper
from regraft.weights import is_pretrained

__all__ = ["lr_find", "LRFindResult", "suggest_lr"]


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The LR two-thirds of the way down the stretch where the smoothed loss falls the most.

    A "stretch" is a run of steps over which the loss keeps falling (rises smaller than 1% of the
    loss range are treated as noise). Picking inside the largest fall, rather than the single
    steepest step, keeps the first noisy steps of the ramp from winning.
    """
    if len(lrs) < 3:
        raise TrainingError("lr-find recorded fewer than 3 steps: use more images or a smaller --batch-size")
    loss = np.asarray(losses, dtype=float)
    tolerance = 0.01 * (loss.max() - loss.min() + 1e-12)
    best_drop, best = 0.0, (0, int(np.argmin(loss)))
    start = 0
    for i in range(1, len(loss) + 1):
        if i == len(loss) or loss[i] > loss[i - 1] + tolerance:
            low = start + int(np.argmin(loss[start:i]))
            drop = loss[start] - loss[low]
            if drop > best_drop:
                best_drop, best = drop, (start, low)
            start = i
    lo, hi = best
    if hi <= lo:  # the loss never fell: a tenth of the LR at the lowest loss
        return float(lrs[int(np.argmin(loss))] / 10)
    return float(lrs[lo + int(round((hi - lo) * 2 / 3))])


class _Diverged(Exception):
    """Raised inside a step whose loss is not finite: the step never reaches the weights."""


def lr_find(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    diverge: float = 4.0,
    base_lr: float | None = None,
    numerics: StepNumerics | None = None,
    criterion: nn.Module | None = None,
    after_train_mode: Callable[[nn.Module], object] | None = None,
) -> LRFindResult:
    """Run the range test with the training loop's own step, and restore ``model`` and ``optimizer``.

    Args:
        model, loader, optimizer: what training would use; ``loader`` yields ``(images, labels)``.
        start_lr, end_lr, num_steps: the exponential ramp, in units of ``base_lr``.
        diverge: stop once the smoothed loss exceeds ``diverge`` times its minimum.
        base_lr: the LR that ``--lr`` sets (the trunk's; the head's group runs at its multiple of
            it). Default: the largest group LR. The ramp and the suggestion are in these units,
            so the suggestion is what ``regraft train --lr`` takes with the same flags.
        numerics: the step numerics (default: fp32 on the model's device).
        after_train_mode: called after ``model.train()`` (the frozen-BatchNorm policy).

    Returns:
        An :class:`LRFindResult` with the LRs, smoothed losses and the suggested LR.
    """
    if not 0 < start_lr < end_lr:
        raise TrainingError(f"lr-find needs 0 < start_lr < end_lr; got {start_lr} and {end_lr}")
    device = next(model.parameters()).device
    numerics = numerics or StepNumerics(precision="fp32", channels_last=False, device=device)
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    base = base_lr or max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups) or 1.0
    ratios = [g.get("initial_lr", g["lr"]) / base for g in optimizer.param_groups]
    stepper = Stepper(model, optimizer, numerics=numerics, criterion=criterion or nn.CrossEntropyLoss())
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    was_training = model.training
    model.train()
    if after_train_mode is not None:
        after_train_mode(model)

    def check(loss: torch.Tensor) -> None:
        if not math.isfinite(float(loss.detach())):
            raise _Diverged

    try:
        batches = itertools.cycle(loader) if num_steps > 0 else iter(())
        for step, (x, y) in zip(range(num_steps), batches, strict=False):
            lr = start_lr * (end_lr / start_lr) ** (step / max(num_steps - 1, 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            try:
                loss, _, _ = stepper.step(x, y, sync=True, check=check)
            except _Diverged:
                break
            avg = 0.98 * avg + 0.02 * float(loss)
            smoothed = avg / (1 - 0.98 ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if step > 5 and smoothed > diverge * best:
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        model.train(was_training)
    return LRFindResult(lrs=lrs, losses=losses, suggestion=suggest_lr(lrs, losses))


@lock_scope()  # the lr-find folder's writer lock is released when this returns or raises
def lr_find_run(cfg: Config, *, out: str | Path, start_lr: float = 1e-7, end_lr: float = 1.0, num_steps: int = 100):
    """``regraft lr-find``: set up as ``regraft train`` would with ``cfg``, run the test, plot it.

    ``out`` is an lr-find run folder: a previous lr-find there is replaced, anything else (a
    training run, a folder of other files) is refused.

    The strategy's stand-in decides what is ramped (lp-ft's fine-tuning stage is ``full``); the
    suggestion is the base ``--lr`` that ``regraft train`` takes with the same flags.

    Returns:
        ``(LRFindResult, path of lr_find.png)``.
    """
    from regraft.report import plot_lr_find

    setup.check_inputs(cfg)
    decisions = strategies.decide(cfg, pretrained=is_pretrained(cfg.weights))
    decisions = replace(decisions, strategy=decisions.lr_find_as, probe_first=False, cache_reason="lr-find")
    out = Path(out)
    run = RunDir.create(out, kind=RunKind.LR_FIND, data=cfg.data)
    cfg = replace(cfg, out=str(out))
    with rng.preserved():
        rng.seed_all(cfg.seed)
        built = setup.build_model(cfg)
        procs = processes(cfg.device)
        numerics = step_numerics(procs.device, precision=cfg.precision, channels_last=cfg.channels_last,
                                 model=built.model, device_flag=cfg.device)
        notify = logging.getLogger(__name__).info
        data = setup.setup_data(cfg, built, decisions=decisions, procs=procs, run=run, notify=notify)
        net = setup.setup_model(cfg, built, classes=data.classes, decisions=decisions,
                                data_config=data.data_config, notify=notify)
        plan = strategies.plan(net.model, strategy=decisions.strategy, cfg=cfg, steps_per_epoch=max(1, data.steps_per_epoch),
                               head=net.head)
        if decisions.hold_bn_stats:
            hold_bn_statistics(net.model)
        model = net.model.to(procs.device)
        if numerics.channels_last:
            model = model.to(memory_format=torch.channels_last)
        criterion = training_criterion(cfg, data).to(procs.device)  # the run's own loss: task, weights, smoothing
        result = lr_find(model, data.train_loader, plan.optimizer, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                         base_lr=plan.lr, numerics=numerics, after_train_mode=apply_bn_policy, criterion=criterion)
    plot = plot_lr_find(result.lrs, result.losses, result.suggestion, out / "lr_find.png")
    return result, plot
