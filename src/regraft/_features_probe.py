"""The linear probe's loop: many cheap epochs on cached features, early stop, best head kept."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from regraft.engine import Callback, EpochResult, evaluate, seed_everything

log = logging.getLogger(__name__)

PROBE_LR = 1e-2  # AdamW; chosen by a sweep on real features (docs/features.md)
PROBE_WEIGHT_DECAY = 1e-4
PROBE_PATIENCE = 8


@dataclass
class ProbeResult:
    """What lp-ft's first stage did.

    Attributes:
        message: one line for the user (``linear probe: 23 epochs on cached features, ...``).
        history: ``EpochResult.to_row()`` per epoch, with ``stage="probe"``.
        best_val_acc, best_val_loss, best_epoch: the epoch whose head was kept (lowest val loss).
        epochs: epochs run. seconds: wall time including feature computation.
        cached: whether the epochs ran on cached features. stopped_early: patience ran out.
    """

    message: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = math.nan
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs: int = 0
    seconds: float = 0.0
    cached: bool = False
    stopped_early: bool = False


@dataclass
class ProbeSettings:
    epochs: int
    lr: float
    weight_decay: float = PROBE_WEIGHT_DECAY
    patience: int = PROBE_PATIENCE
    label_smoothing: float = 0.0
    seed: int = 0


def run_probe(
    module: nn.Module,
    head: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    settings: ProbeSettings,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
    train_mode: Callable[[nn.Module], None] | None = None,
) -> ProbeResult:
    """Train ``head`` (inside ``module``) with AdamW until the validation loss stops improving.

    ``train_mode(module)`` puts the module in training mode (default ``module.train()``); the
    uncached fallback uses it to keep the frozen trunk in eval mode. The head ends with the
    weights of its best epoch. The returned message is filled in by the caller.
    """
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    steps = len(train_loader)  # type: ignore[arg-type]
    for cb in callbacks:
        cb.on_fit_start(epochs=settings.epochs, start_epoch=0, steps_per_epoch=steps, stage="probe")
    result = ProbeResult(message="")
    best_state, bad = copy.deepcopy(head.state_dict()), 0
    for epoch in range(settings.epochs):
        row = _probe_epoch(module, optimizer, criterion, train_loader, epoch=epoch, device=device, settings=settings,
                           callbacks=callbacks, train_mode=train_mode)
        val = evaluate(module, val_loader)
        row.val_loss, row.val_acc = val.loss, val.accuracy
        result.history.append(row.to_row())
        result.epochs = epoch + 1
        if val.loss < result.best_val_loss - 1e-6:
            result.best_val_loss, result.best_val_acc, result.best_epoch = val.loss, val.accuracy, epoch + 1
            best_state, bad = copy.deepcopy(head.state_dict()), 0
        else:
            bad += 1
        for cb in callbacks:
            cb.on_epoch_end(row)
        if bad >= settings.patience and epoch + 1 < settings.epochs:
            result.stopped_early = True
            break
    head.load_state_dict(best_state)
    return result


def _probe_epoch(module, optimizer, criterion, loader, *, epoch, device, settings, callbacks, train_mode) -> EpochResult:
    seed_everything(settings.seed * 1_000_003 + epoch * 1009 + 17)
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    (train_mode or nn.Module.train)(module)
    for cb in callbacks:
        cb.on_epoch_start(epoch + 1)
    loss_sum = correct = seen = 0.0
    t0 = time.perf_counter()
    steps = len(loader)
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = module(x).float()
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += n
        for cb in callbacks:
            cb.on_step(epoch + 1, step + 1, steps, float(loss.detach()))
    seconds = time.perf_counter() - t0
    return EpochResult(
        epoch=epoch + 1, train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
        val_loss=math.nan, val_acc=math.nan, lr=settings.lr, images_per_sec=seen / max(seconds, 1e-9),
        epoch_seconds=seconds, stage="probe",
    )
