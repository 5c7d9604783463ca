"""A learning-rate range test (Smith, 2015; fastai's ``lr_find``) that leaves the model untouched.

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` batches while the
loss is recorded; the run stops when the loss diverges. The suggestion is the LR where the
smoothed loss falls fastest, before its minimum. Parameter groups keep their ratios (a head at
10x stays at 10x); the reported LR is the base (largest-group) one.

Example:
    >>> result = lr_find(model, loader, optimizer)   # doctest: +SKIP
    >>> result.suggestion                            # doctest: +SKIP
    0.0012
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from regraft.errors import TrainingError
from regraft.runs import lock_scope

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


def lr_find(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    diverge: float = 4.0,
    device: torch.device | str | None = None,
    after_train_mode: Callable[[nn.Module], object] | None = None,
) -> LRFindResult:
    """Run the range test and restore ``model`` and ``optimizer`` to their state before it.

    Args:
        model, loader, optimizer: what training would use; ``loader`` yields ``(images, labels)``.
        start_lr, end_lr, num_steps: the exponential ramp of the base LR.
        diverge: stop once the smoothed loss exceeds ``diverge`` times its minimum.
        after_train_mode: called after ``model.train()`` (the frozen-BatchNorm policy).

    Returns:
        An :class:`LRFindResult` with the LRs, smoothed losses and the suggested LR.
    """
    if not 0 < start_lr < end_lr:
        raise TrainingError(f"lr-find needs 0 < start_lr < end_lr; got {start_lr} and {end_lr}")
    device = device or next(model.parameters()).device
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    base = max(g["lr"] for g in optimizer.param_groups) or 1.0
    ratios = [g["lr"] / base for g in optimizer.param_groups]
    criterion = nn.CrossEntropyLoss()
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    was_training = model.training
    model.train()
    if after_train_mode is not None:
        after_train_mode(model)
    try:
        batches = itertools.cycle(loader) if num_steps > 0 else iter(())
        for step, (x, y) in zip(range(num_steps), batches, strict=False):
            lr = start_lr * (end_lr / start_lr) ** (step / max(num_steps - 1, 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            loss = criterion(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            avg = 0.98 * avg + 0.02 * value
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
def lr_find_run(cfg, *, out, start_lr: float = 1e-7, end_lr: float = 1.0, num_steps: int = 100):
    """``regraft lr-find``: set up as ``regraft train`` would with ``cfg``, run the test, plot it.

    ``out`` is an lr-find run folder: a previous lr-find there is replaced, anything else
    (a training run, a folder of other files) is refused.

    Returns:
        ``(LRFindResult, path of lr_find.png)``.
    """
    import logging
    from dataclasses import replace
    from pathlib import Path

    from regraft.report import plot_lr_find
    from regraft.runs import RunDir, RunKind
    from regraft.training import loop as engine
    from regraft.training import setup as _pipeline
    from regraft.training.run import resolve_strategy

    _pipeline.check_inputs(cfg)
    strategy = resolve_strategy(cfg)
    if strategy == "lp-ft":
        strategy = "full"  # the LR that matters for lp-ft is the fine-tuning stage's
    out = Path(out)
    run = RunDir.create(out, kind=RunKind.LR_FIND, data=cfg.data)
    cfg = replace(cfg, strategy=strategy, out=str(out), decode_cache=cfg.decode_cache)
    engine.seed_everything(cfg.seed)
    built = _pipeline.build_model(cfg)
    accelerator = engine.make_accelerator(device=cfg.device, precision=cfg.precision, model=built.model)
    setup = _pipeline.setup(cfg, strategy=strategy, accelerator=accelerator, run=run, notify=logging.getLogger(__name__).info, built=built)
    result = lr_find(
        setup.model, setup.train_loader, setup.plan.optimizer,
        start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
        device=accelerator.device, after_train_mode=setup.after_train_mode,
    )
    plot = plot_lr_find(result.lrs, result.losses, result.suggestion, out / "lr_find.png")
    return result, plot
