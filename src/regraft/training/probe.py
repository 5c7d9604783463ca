"""The probe: the new head fitted to convergence on the frozen trunk's features, once.

It is lp-ft's first stage and the evidence ``auto`` decides from. The trunk runs once over the
images (``features/``); a linear head is then solved to convergence by L-BFGS with its L2 penalty
chosen by stratified k-fold cross-validation and refitted on every training image
(``features/linear``). A head that is not linear on its input (hidden layers, a convolution
followed by pooling) is fitted the same way through its own forward pass. Under several processes
the main process fits and the head is broadcast: the probe runs once.

The probe is one row of the run's record: epoch 0, stage ``probe``. With a validation split its
figures are measured there; in the cross-validated regime (no split, little data) they are the
k-fold estimate (the task's figures on each fold's held-out images, from the out-of-fold
probabilities, averaged over folds), and the model keeps the head refitted on every image.

Multi-label runs fit a one-vs-rest sigmoid probe. ``--balance loss`` or ``sampler`` reaches the
probe as one weight per image (``regraft.tasks.balance``): the linear solver's ``sample_weight``,
and for a non-linear head the run's weighted training loss.
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
from regraft.features import CacheSettings, cache_features, cache_mirrored
from regraft.features.cut import eval_modes, find_cut
from regraft.features.linear import assign_folds, fit_probe, fold_count
from regraft.tasks import TaskRules, rules
from regraft.training.loop import EpochResult
from regraft.training.processes import Processes

__all__ = ["ProbeOutcome", "ProbeLabels", "fit_probe_stage", "PROBE_STAGE"]

log = logging.getLogger(__name__)

PROBE_STAGE = "probe"
_MODULE_L2 = 1e-3  # a head that is not linear: a fixed, mild penalty (its L2 is not cross-validated)
_MODULE_ITERS = 200


@dataclass(frozen=True)
class ProbeLabels:
    """What the labels ask of the probe: the task's rules and the run's balancing weights.

    Attributes:
        task: :func:`regraft.tasks.rules` of the run's task.
        sample_weights: one weight per training image (``--balance loss|sampler``), or None.
        loss_weights: the training loss's class (multi-label: positive) weights, or None; a head
            that is not linear is fitted with that loss.
    """

    task: TaskRules = field(default_factory=rules)
    sample_weights: list[float] | None = None
    loss_weights: list[float] | None = None


@dataclass
class ProbeOutcome:
    """What the probe did: its row, its evidence and its cost.

    Attributes:
        row: the ``metrics.csv`` row (epoch 0, stage ``probe``).
        validation: ``holdout`` (figures on the validation split) or ``cv5`` (the k-fold estimate).
        acc, loss: the probe's validation (or cross-validated) primary figure (accuracy; mAP for
            multi-label runs) and loss.
        acc_std: the spread of the cross-validated figure over folds (None for a holdout).
        l2: the penalty used. folds: the folds of its choice (0 when fixed).
        seconds: the whole stage; feature_seconds: the trunk's forward passes alone.
        images_per_second: the trunk's forward throughput (to estimate a fine-tuning epoch).
        out_of_fold: out-of-fold class probabilities of the training images (no image judges
            itself), for the data audit and multi-label thresholds; None without cross-validation.
        oof_targets: the training images' targets in the order of ``out_of_fold``.
        train_features, train_targets, val_features, val_targets: the cached features (one row
            per training sample; per readable validation image) and their targets, for the
            run's data findings (``training.findings``); the main process only.
        message: one line for the user.
        tta: with ``tta="flip"`` and a validation split: ``{"views", figure, "loss", "changed"}``,
            the head's validation figures with each image's and its mirror's probabilities
            averaged (what ``regraft eval --tta flip`` measures), beside the plain ones.
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
    oof_targets: torch.Tensor | None = field(default=None, repr=False)
    train_features: torch.Tensor | None = field(default=None, repr=False)
    train_targets: torch.Tensor | None = field(default=None, repr=False)
    val_features: torch.Tensor | None = field(default=None, repr=False)
    val_targets: torch.Tensor | None = field(default=None, repr=False)
    message: str = ""
    figure: str = "acc"  # the primary figure's short name: acc | mAP
    tta: dict[str, Any] | None = None  # --tta flip: the probe's figures with each validation image and its mirror averaged


def fit_probe_stage(
    model: nn.Module, *, head: str, train_dataset: Any, val_dataset: Any | None, num_classes: int, regime: str,
    settings: CacheSettings, procs: Processes, autocast: Callable[[], Any] | None, l2: float | None = None,
    folds: int = 5, labels: ProbeLabels | None = None, tta: str = "none",
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
        labels: the task and the balancing weights (default: multiclass, unweighted).
        tta: ``flip`` also measures the fitted head on the validation images' mirrors (one more
            pass of the trunk over the validation images): :attr:`ProbeOutcome.tta`.

    Raises:
        TrainingError: the features or the fit are not finite, or the head cannot be cut off.
    """
    t0 = time.perf_counter()
    outcome: ProbeOutcome | None = None
    if procs.is_main:
        outcome = _fit_on_main(model, head=head, train_dataset=train_dataset, val_dataset=val_dataset,
                               num_classes=num_classes, regime=regime, settings=settings, device=procs.device,
                               autocast=autocast, l2=l2, folds=folds, labels=labels or ProbeLabels(), tta=tta)
    procs.broadcast_(list(model.get_submodule(head).parameters()) + list(model.get_submodule(head).buffers()))
    if procs.distributed:  # every process records the same row and decides the same way
        shared = procs.gather_objects(_shareable(outcome))[0]
        outcome = outcome if procs.is_main else shared
    assert outcome is not None  # the main process always fits
    outcome.seconds = time.perf_counter() - t0
    outcome.row.epoch_seconds = outcome.seconds
    outcome.message = _message(outcome)
    return outcome


def _fit_on_main(model, *, head, train_dataset, val_dataset, num_classes, regime, settings, device, autocast, l2, folds,
                 labels: ProbeLabels, tta: str = "none"):
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
                              regime=regime, l2=l2, folds=folds, labels=labels)
                if tta == "flip" and vx is not None and len(vx):
                    mirrored = cache_mirrored(cut, model, val_dataset, settings=settings, device=device)
                    try:
                        fitted.tta = _tta_figures(cut.rest, vx, _tensors(mirrored)[0], vy, labels.task)
                        fitted.tta["plain"] = {fitted.figure.lower(): fitted.acc, "loss": fitted.loss}
                    finally:
                        mirrored.close()
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
    y = cache.labels
    return x, (y.float() if y.ndim > 1 else y.long())  # multi-hot rows (multi-label) or class indices


def _fit(rest: nn.Module, head: nn.Module, x, y, vx, vy, *, num_classes: int, regime: str, l2: float | None,
         folds: int, labels: ProbeLabels) -> ProbeOutcome:
    """The head fitted on ``(x, y)``, measured on ``(vx, vy)`` or by cross-validation."""
    cv, task = regime.startswith("cv"), labels.task
    weight = torch.tensor(labels.sample_weights, dtype=torch.float64) if labels.sample_weights is not None else None
    if weight is not None and len(weight) != len(x):
        log.warning("probe: %d sample weights for %d images; fitted unweighted", len(weight), len(x))
        weight = None
    linear = _linear_on_input(rest, head, x[: min(len(x), 8)])
    cv_figures: tuple[float, float, float | None, dict[str, float]] | None = None
    if linear:
        probe = fit_probe(x, y, num_classes=num_classes, folds=folds, l2_grid=[l2] if l2 is not None else None,
                          sample_weight=weight, multilabel=task.multilabel)
        with torch.no_grad():
            probe.fit.load_into(head)
        chosen_l2, n_folds = probe.cv.l2, (probe.cv.folds if l2 is None else 0)
        oof = probe.cv.oof_probabilities.float()
        cv_figures = _fold_figures(task, oof, y, probe.cv.fold) if cv else None
    else:
        chosen_l2, n_folds, oof = (l2 if l2 is not None else _MODULE_L2), 0, None
        criterion = task.criterion(weights=labels.loss_weights).to(x.device)
        if cv:
            oof, fold, n_folds = _module_cv(rest, head, x, y, l2=chosen_l2, folds=folds, criterion=criterion, task=task)
            cv_figures = _fold_figures(task, oof, y, fold)
        _fit_module(rest, head, x, y, l2=chosen_l2, criterion=criterion)
    train_loss, train_figures = _measure(rest, x, y, task)
    std = None
    if cv:
        if cv_figures is None:
            raise TrainingError("the cross-validated regime needs the probe's cross-validation; pass no --set probe_l2")
        val_loss, score, std, val_figures = cv_figures
    else:
        val_loss, val_figures = _measure(rest, vx, vy, task)
        score = val_figures.get(task.primary, math.nan)
    extra = {k: v for k, v in val_figures.items() if k != "val_acc"}
    if cv and std is not None:
        extra[f"{task.primary}_std"] = std
    row = EpochResult(epoch=0.0, train_loss=train_loss, train_acc=train_figures.get("val_acc"), val_loss=val_loss,
                      val_acc=val_figures.get("val_acc"), lr=None, images_per_sec=0.0, epoch_seconds=0.0,
                      stage=PROBE_STAGE, extra=extra)
    return ProbeOutcome(row=row, validation=regime, acc=score, loss=val_loss, acc_std=std if cv else None,
                        l2=chosen_l2, folds=n_folds, out_of_fold=oof, oof_targets=y if oof is not None else None,
                        train_features=x, train_targets=y, val_features=vx, val_targets=vy,
                        figure="mAP" if task.multilabel else "acc")


_EPS = torch.finfo(torch.float64).eps  # probabilities are clipped here before their log, as the linear probe's log-loss


@torch.no_grad()
def _tta_figures(rest: nn.Module, vx: torch.Tensor, mirrored: torch.Tensor, vy: torch.Tensor, task: TaskRules) -> dict[str, Any]:
    """The head's validation figures with each image's and its mirror's probabilities averaged,
    as ``regraft eval --tta flip`` measures them (``inference.images.mean_probs``)."""
    if mirrored.shape != vx.shape:
        raise TrainingError(f"the mirrored validation features have shape {tuple(mirrored.shape)}, the plain ones "
                            f"{tuple(vx.shape)}; an unreadable validation image? run 'regraft scan' on the data")
    plain = torch.cat([rest(vx[i : i + 1024]).double() for i in range(0, len(vx), 1024)])
    flipped = torch.cat([rest(mirrored[i : i + 1024]).double() for i in range(0, len(vx), 1024)])
    probs = [task.probabilities(z).double() for z in (plain, flipped)]
    p = ((probs[0] + probs[1]) / 2).clamp(_EPS, 1 - _EPS)
    logits = (p.log() - (1 - p).log()) if task.multilabel else p.log()  # what gives back p through sigmoid / softmax
    scored = task.evaluation(logits.float(), vy)
    changed = None if task.multilabel else int((probs[0].argmax(1) != p.argmax(1)).sum())  # multi-label: thresholds come later
    name = task.primary.removeprefix("val_")
    return {"views": "flip", name: scored.figures.get(task.primary, math.nan), "loss": scored.loss, "changed": changed}


def _fold_figures(task: TaskRules, oof: torch.Tensor, y: torch.Tensor, fold: torch.Tensor
                  ) -> tuple[float, float, float | None, dict[str, float]]:
    """``(loss, primary, its std over folds, figures)``: the task's figures on each fold's held-out
    images (their out-of-fold probabilities), averaged over the folds."""
    p = oof.double().clamp(_EPS, 1 - _EPS)
    logits = (p.log() - (1 - p).log()) if task.multilabel else p.log()  # what gives back p through sigmoid / softmax
    per_fold = [task.evaluation(logits[fold == k].float(), y[fold == k]) for k in sorted(set(fold.tolist()))]
    keys = per_fold[0].figures.keys()
    figures = {k: float(sum(ev.figures[k] for ev in per_fold) / len(per_fold)) for k in keys}
    primary = torch.tensor([ev.figures[task.primary] for ev in per_fold], dtype=torch.float64)
    std = float(primary.std()) if len(per_fold) > 1 else None
    loss = float(sum(ev.loss for ev in per_fold) / len(per_fold))
    return loss, figures[task.primary], std, figures


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
def _measure(rest: nn.Module, x: torch.Tensor, y: torch.Tensor, task: TaskRules) -> tuple[float, dict[str, float]]:
    """``(mean loss, the task's figures)`` of ``rest`` on features ``x`` (fp32, eval mode)."""
    if x is None or len(x) == 0:
        return math.nan, {}
    logits = torch.cat([rest(x[i : i + 1024]).float() for i in range(0, len(x), 1024)])
    scored = task.evaluation(logits, y)
    return scored.loss, scored.figures


def _fit_module(rest: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, *, l2: float, criterion: nn.Module) -> None:
    """Full-batch L-BFGS on ``head``'s parameters through ``rest`` (the non-convex case), in place."""
    params = [p for p in head.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=_MODULE_ITERS, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = criterion(rest(x).float(), y)
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


def _module_cv(rest: nn.Module, head: nn.Module, x, y, *, l2: float, folds: int, criterion: nn.Module,
               task: TaskRules) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Out-of-fold probabilities of :func:`_fit_module`, each fold's assignment and the folds; the head is left as it was."""
    start = {k: v.clone() for k, v in head.state_dict().items()}
    strata = _strata(y) if task.multilabel else y
    n_folds = fold_count(strata, requested=folds)
    fold = assign_folds(strata, folds=n_folds)
    with torch.no_grad():
        oof = torch.zeros(len(y), int(rest(x[:1]).shape[1]), dtype=torch.float64)
    for k in range(n_folds):
        held, keep = fold == k, fold != k
        head.load_state_dict(start)
        _fit_module(rest, head, x[keep], y[keep], l2=l2, criterion=criterion)
        with torch.no_grad():
            oof[held] = task.probabilities(rest(x[held]).float()).to(oof.dtype)
    head.load_state_dict(start)
    return oof, fold, n_folds


def _strata(y: torch.Tensor) -> torch.Tensor:
    """Multi-hot rows -> each row's rarest positive label (the label count when it has none), for stratified folds."""
    frequency = y.sum(dim=0)
    rank = torch.where(y > 0, frequency, torch.inf)
    return torch.where(y.sum(dim=1) > 0, rank.argmin(dim=1), torch.full((len(y),), y.shape[1], dtype=torch.long))


def _shareable(outcome: ProbeOutcome | None) -> ProbeOutcome | None:
    """A copy of the outcome without its large tensors, to send to the other processes."""
    if outcome is None:
        return None
    return replace(outcome, out_of_fold=None, oof_targets=None, train_features=None, train_targets=None,
                   val_features=None, val_targets=None)


def _message(o: ProbeOutcome) -> str:
    how = f"L2 {o.l2:.3g} chosen by {o.folds}-fold cross-validation" if o.folds else f"L2 {o.l2:.3g}"
    if o.validation.startswith("cv"):
        figure = f"cross-validated {o.figure} {o.acc:.3f}" + (f" ± {o.acc_std:.3f}" if o.acc_std is not None else "")
    else:
        figure = f"val {o.figure} {o.acc:.3f}, loss {o.loss:.3g}"
    line = f"probe: {figure} ({how}; features {o.feature_seconds:.1f}s, total {o.seconds:.1f}s)"
    if o.tta is not None:
        key = o.figure.lower()
        changed = f", {o.tta['changed']} prediction(s) changed" if o.tta.get("changed") is not None else ""
        line += f"; with TTA flip: val {o.figure} {o.tta[key]:.3f}, loss {o.tta['loss']:.3g}{changed}"
    return line
