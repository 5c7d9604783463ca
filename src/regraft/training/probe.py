"""The probe: the new head fitted to convergence on the frozen trunk's features, once.

It is lp-ft's first stage and the evidence ``auto`` decides from. The trunk runs once over the
images (``features/``); a linear head is then solved to convergence by L-BFGS with its L2 penalty
chosen by stratified k-fold cross-validation and refitted on every training image
(``features/linear``). A head that is not linear on its input (hidden layers, a convolution
followed by pooling) is fitted the same way through its own forward pass. Under several processes
the main process fits and the head is broadcast: the probe runs once.

The probe is one row of the run's record: epoch 0, stage ``probe``. With a validation split its
figures are measured there; in the cross-validated regime (no split, little data) they are the
k-fold estimate, and the model keeps the head refitted on every image.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from regraft.errors import TrainingError
from regraft.features import CacheSettings, cache_features
from regraft.features.cut import eval_modes, find_cut
from regraft.features.linear import assign_folds, fit_probe, fold_count
from regraft.training.loop import EpochResult
from regraft.training.processes import Processes

__all__ = ["ProbeOutcome", "fit_probe_stage", "PROBE_STAGE"]

log = logging.getLogger(__name__)

PROBE_STAGE = "probe"
_MODULE_L2 = 1e-3  # a head that is not linear: a fixed, mild penalty (its L2 is not cross-validated)
_MODULE_ITERS = 200


@dataclass
class ProbeOutcome:
    """What the probe did: its row, its evidence and its cost.

    Attributes:
        row: the ``metrics.csv`` row (epoch 0, stage ``probe``).
        validation: ``holdout`` (figures on the validation split) or ``cv5`` (the k-fold estimate).
        acc, loss: the probe's validation (or cross-validated) accuracy and loss.
        acc_std: the spread of the cross-validated accuracy over folds (None for a holdout).
        l2: the penalty used. folds: the folds of its choice (0 when fixed).
        seconds: the whole stage; feature_seconds: the trunk's forward passes alone.
        images_per_second: the trunk's forward throughput (to estimate a fine-tuning epoch).
        out_of_fold: out-of-fold class probabilities of the training images (no image judges
            itself), for the data audit; None when the L2 was not cross-validated.
        message: one line for the user.
    """

    row: EpochResult
    validation: str
    acc: float
    loss: float
    acc_std: float | None = None
    l2: float = 0.0
    folds: int = 0
    seconds: float = 0.0
    feature_seconds: float = 0.0
    images_per_second: float = 0.0
    out_of_fold: torch.Tensor | None = field(default=None, repr=False)
    train_features: torch.Tensor | None = field(default=None, repr=False)
    message: str = ""


def fit_probe_stage(
    model: nn.Module, *, head: str, train_dataset: Any, val_dataset: Any | None, num_classes: int, regime: str,
    settings: CacheSettings, procs: Processes, autocast: Callable[[], Any] | None, l2: float | None = None,
    folds: int = 5,
) -> ProbeOutcome:
    """Fit ``model``'s head at ``head`` on the frozen trunk's features (in place), and measure it.

    Args:
        model: the unwrapped model with its new head; its parameters' ``requires_grad`` flags
            and module modes are given back as they were.
        train_dataset, val_dataset: the run's image datasets (``val_dataset`` empty or None in
            the cross-validated regime).
        regime: ``holdout`` or ``cvK`` (from :func:`regraft.strategies.validation_regime`).
        settings: the feature cache's settings; ``autocast``: the training steps' context (the
            training features are computed in it; validation features always in fp32).
        l2: a fixed penalty instead of the cross-validated choice.

    Raises:
        TrainingError: the features or the fit are not finite, or the head cannot be cut off.
    """
    t0 = time.perf_counter()
    outcome: ProbeOutcome | None = None
    if procs.is_main:
        outcome = _fit_on_main(model, head=head, train_dataset=train_dataset, val_dataset=val_dataset,
                               num_classes=num_classes, regime=regime, settings=settings, device=procs.device,
                               autocast=autocast, l2=l2, folds=folds)
    procs.broadcast_(list(model.get_submodule(head).parameters()) + list(model.get_submodule(head).buffers()))
    if procs.distributed:  # every process records the same row and decides the same way
        shared = procs.gather_objects(_shareable(outcome))[0]
        outcome = outcome if procs.is_main else shared
    assert outcome is not None  # the main process always fits
    outcome.seconds = time.perf_counter() - t0
    outcome.row.epoch_seconds = outcome.seconds
    outcome.message = _message(outcome)
    return outcome


def _fit_on_main(model, *, head, train_dataset, val_dataset, num_classes, regime, settings, device, autocast, l2, folds):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with eval_modes(model):
            in_head = {n for n, _ in model.named_parameters() if n == head or n.startswith(head + ".")}
            cut = find_cut(model, trainable=in_head, head=head)
            if cut is None:
                raise TrainingError(f"the probe cannot run the network up to its head '{head}'; use --strategy full")
            t0 = time.perf_counter()
            caches = cache_features(cut, model, train_dataset, val_dataset, settings=settings, device=device,
                                    autocast=autocast, views=1)
            if caches is None:
                raise TrainingError("the probe's split of the network does not reproduce its output; use --strategy full")
            feature_seconds = time.perf_counter() - t0
            train_cache, val_cache = caches
            try:
                x, y = _tensors(train_cache)
                vx, vy = _tensors(val_cache) if val_cache is not None else (None, None)
                fitted = _fit(cut.rest, model.get_submodule(head), x, y, vx, vy, num_classes=num_classes,
                              regime=regime, l2=l2, folds=folds)
            finally:
                for cache in (train_cache, val_cache):
                    if cache is not None:
                        cache.close()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    n_images = len(train_dataset) + (len(val_dataset) if val_dataset is not None else 0)
    fitted.feature_seconds = feature_seconds
    fitted.images_per_second = n_images / max(feature_seconds, 1e-9)
    fitted.row.images_per_sec = len(train_dataset) / max(feature_seconds, 1e-9)
    return fitted


def _tensors(cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = cache.features[0].float()
    if not bool(torch.isfinite(x).all()):
        raise TrainingError("the frozen trunk's features contain NaN or infinity; check the weights (--weights) and the images")
    return x, cache.labels.long()


def _fit(rest: nn.Module, head: nn.Module, x, y, vx, vy, *, num_classes: int, regime: str, l2: float | None,
         folds: int) -> ProbeOutcome:
    """The head fitted on ``(x, y)``, measured on ``(vx, vy)`` or by cross-validation."""
    cv = regime.startswith("cv")
    linear = _linear_on_input(rest, head, x[: min(len(x), 8)])
    if linear:
        probe = fit_probe(x, y, num_classes=num_classes, folds=folds, l2_grid=[l2] if l2 is not None else None)
        with torch.no_grad():
            probe.fit.load_into(head)
        best = probe.cv.best
        chosen_l2, n_folds = probe.cv.l2, (probe.cv.folds if l2 is None else 0)
        oof = probe.cv.oof_probabilities.float()
        cv_acc, cv_acc_std, cv_loss = best.accuracy, best.accuracy_std, best.log_loss
    else:
        chosen_l2, n_folds, oof = (l2 if l2 is not None else _MODULE_L2), 0, None
        cv_acc = cv_acc_std = cv_loss = None
        if cv:
            cv_acc, cv_acc_std, cv_loss, n_folds = _module_cv(rest, head, x, y, l2=chosen_l2, folds=folds)
        _fit_module(rest, head, x, y, l2=chosen_l2)
    train_loss, train_acc = _measure(rest, x, y)
    if cv:
        if cv_acc is None:
            raise TrainingError("the cross-validated regime needs the probe's cross-validation; pass no --set probe_l2")
        val_loss, val_acc = cv_loss, cv_acc
    else:
        val_loss, val_acc = _measure(rest, vx, vy)
    row = EpochResult(epoch=0.0, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc, lr=None,
                      images_per_sec=0.0, epoch_seconds=0.0, stage=PROBE_STAGE)
    if cv and cv_acc_std is not None:
        row.extra["val_acc_std"] = cv_acc_std
    return ProbeOutcome(row=row, validation=regime, acc=val_acc, loss=val_loss, acc_std=cv_acc_std if cv else None,
                        l2=chosen_l2, folds=n_folds, out_of_fold=oof, train_features=x)


@torch.no_grad()
def _linear_on_input(rest: nn.Module, head: nn.Module, x: torch.Tensor) -> bool:
    """Whether the logits are ``head(x.flatten(1))`` for a plain ``nn.Linear`` head (the convex case)."""
    if not isinstance(head, nn.Linear) or x.ndim < 2:
        return False
    flat = x.flatten(1)
    if flat.shape[1] != head.in_features:
        return False
    return torch.allclose(rest(x).float(), head(flat).float(), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def _measure(rest: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``rest`` on features ``x`` (fp32, eval mode)."""
    if x is None or len(x) == 0:
        return math.nan, math.nan
    logits = torch.cat([rest(x[i : i + 1024]).float() for i in range(0, len(x), 1024)])
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float((logits.argmax(1) == y).float().mean())


def _fit_module(rest: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, *, l2: float) -> None:
    """Full-batch L-BFGS on ``head``'s parameters through ``rest`` (the non-convex case), in place."""
    params = [p for p in head.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=_MODULE_ITERS, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(rest(x).float(), y)
        loss = loss + 0.5 * l2 * sum((p * p).sum() for p in params if p.ndim > 1)
        loss.backward()
        return loss

    try:
        with torch.enable_grad():
            final = float(opt.step(closure).detach())
    finally:
        for p in params:
            p.requires_grad_(False)
    if not math.isfinite(final) or not all(bool(torch.isfinite(p).all()) for p in params):
        raise TrainingError("the probe's fit diverged (the loss or the head became NaN); check the images and --weights")


def _module_cv(rest: nn.Module, head: nn.Module, x, y, *, l2: float, folds: int) -> tuple[float, float, float, int]:
    """k-fold accuracy (mean, std) and loss of :func:`_fit_module`; the head is left as it was."""
    start = {k: v.clone() for k, v in head.state_dict().items()}
    accs, losses = [], []
    n_folds = fold_count(y, requested=folds)
    fold = assign_folds(y, folds=n_folds)
    for k in range(n_folds):
        held, keep = fold == k, fold != k
        head.load_state_dict(start)
        _fit_module(rest, head, x[keep], y[keep], l2=l2)
        loss, acc = _measure(rest, x[held], y[held])
        accs.append(acc)
        losses.append(loss)
    head.load_state_dict(start)
    t = torch.tensor(accs, dtype=torch.float64)
    return float(t.mean()), float(t.std()), float(sum(losses) / len(losses)), n_folds


def _shareable(outcome: ProbeOutcome | None) -> ProbeOutcome | None:
    """A copy of the outcome without its large tensors, to send to the other processes."""
    if outcome is None:
        return None
    return replace(outcome, out_of_fold=None, train_features=None)


def _message(o: ProbeOutcome) -> str:
    how = f"L2 {o.l2:.3g} chosen by {o.folds}-fold cross-validation" if o.folds else f"L2 {o.l2:.3g}"
    if o.validation.startswith("cv"):
        figure = f"cross-validated acc {o.acc:.3f}" + (f" ± {o.acc_std:.3f}" if o.acc_std is not None else "")
    else:
        figure = f"val acc {o.acc:.3f}, loss {o.loss:.3g}"
    return f"probe: {figure} ({how}; features {o.feature_seconds:.1f}s, total {o.seconds:.1f}s)"
