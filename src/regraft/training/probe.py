"""lp-ft's first stage: the linear probe on the frozen trunk's (cached) features."""

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

from regraft.config import Config
from regraft.features import cache_features, feature_loaders
from regraft.features.cut import eval_modes, find_cut
from regraft.training.loop import Callback, EpochResult, evaluate, seed_everything

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


def linear_probe(
    model: nn.Module,
    *,
    head: str,
    train_dataset: Any,
    val_dataset: Any,
    cfg: Config,
    accelerator: Any,
    callbacks: Sequence[Callback] = (),
) -> ProbeResult:
    """lp-ft stage one: train only the head, to convergence, on the frozen trunk's features.

    Everything but ``head`` is frozen for the probe; features are cached when the model can be
    cut (else each epoch runs the frozen trunk in eval mode): the training images un-augmented,
    plus ``cfg.feature_views - 1`` augmented views when augmentation is on, each sample drawing
    one view per epoch. Up to ``cfg.lp_epochs`` AdamW epochs (``cfg.lp_lr``, default 1e-2) with
    early stopping on the validation loss; the head keeps its best epoch. ``requires_grad`` flags and module modes
    are given back as they were: the fine-tune plan sets them. Under several processes every
    process runs the same probe, and the head is broadcast from the main process at the end.

    Args:
        model: the unwrapped model with its new head.
        head: the head's dotted path (an ``nn.Sequential`` head trains whole).
        train_dataset, val_dataset: the run's image datasets.
        cfg: ``lp_epochs``, ``lp_lr``, ``batch_size``, ``seed``, ``label_smoothing``, cache settings.
        accelerator: the run's ``Accelerator`` (device, autocast for the features).
        callbacks: told about each probe epoch (``stage="probe"``) and the cache; the final
            ``message`` is left to the caller to announce.

    Returns:
        A :class:`ProbeResult`.
    """
    t0 = time.perf_counter()
    head_module = model.get_submodule(head)
    in_head = {id(p) for p in head_module.parameters()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    settings = ProbeSettings(epochs=cfg.lp_epochs, lr=cfg.lp_lr or PROBE_LR, label_smoothing=cfg.label_smoothing, seed=cfg.seed)
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in in_head)
        with eval_modes(model):
            result, caches = _probe(model, head, head_module, train_dataset, val_dataset, cfg=cfg,
                                    accelerator=accelerator, settings=settings, callbacks=callbacks)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    for cache in caches:
        cache.close()
    _broadcast(head_module, accelerator)
    result.seconds = time.perf_counter() - t0
    where = "on cached features" if result.cached else "through the frozen network"
    end = " (early stop)" if result.stopped_early else ""
    result.message = (
        f"linear probe: {result.epochs} epochs {where}, val acc {result.best_val_acc:.3f} "
        f"(best epoch {result.best_epoch}){end} in {result.seconds:.1f}s"
    )
    return result


def _probe(model, head, head_module, train_dataset, val_dataset, *, cfg, accelerator, settings, callbacks):
    cut = find_cut(model, head=head) if cfg.feature_cache else None
    caches = cache_features(cut, model, train_dataset, val_dataset, cfg=cfg, accelerator=accelerator) if cut else None
    device = accelerator.device
    if cut is not None and caches is not None:
        train_loader, val_loader = feature_loaders(*caches, batch_size=cfg.batch_size, seed=cfg.seed)
        text = f"linear probe on cached features: {cut.describe()}; {caches[0].describe()}"
        for cb in callbacks:
            cb.on_message(text)
        log.info(text)
        result = run_probe(cut.rest, head_module, train_loader, val_loader, settings=settings, device=device, callbacks=callbacks)
        result.cached = True
        return result, caches
    from regraft.data import make_loader

    train_loader = make_loader(train_dataset, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, workers=cfg.workers)
    val_loader = make_loader(val_dataset, batch_size=cfg.batch_size, shuffle=False, seed=cfg.seed, workers=cfg.workers)

    def head_only(module: nn.Module) -> None:
        module.eval()
        head_module.train()

    result = run_probe(model, head_module, train_loader, val_loader, settings=settings, device=device,
                       callbacks=callbacks, train_mode=head_only)
    return result, ()


def _broadcast(module: nn.Module, accelerator: Any) -> None:
    if getattr(accelerator, "num_processes", 1) <= 1:
        return
    from accelerate.utils import broadcast

    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            tensor.copy_(broadcast(tensor.detach().clone(), from_process=0))
