"""The one training loop. Every stage that trains by gradient steps runs through :func:`fit`.

Fine-tuning, training on cached features and each step of staged unfreezing are :class:`Stage`\\ s
of one run; they append to one record of evaluations (``FitState.history``, which becomes
``metrics.csv``) on one epoch axis, and "best" is always a row of that record whose weights are
the ones kept (``FitState.best``); what "best" means is the task's (:mod:`regraft.tasks`: the
higher primary figure, ``val_acc`` or ``val_map``, then the lower loss). The same :class:`Stepper` (autocast, the NaN guard, gradient
accumulation and clipping, the schedule, EMA) also drives ``lr_find``. Evaluation computes in the
numerics of inference (fp32), so ``regraft eval`` reproduces every figure recorded here.

The loop reads top to bottom; randomness in an epoch depends only on ``(seed, epoch)`` and a
checkpoint is written atomically after every epoch, so a resumed run continues exactly. The
library never prints: progress goes to :class:`Callback` objects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from regraft import rng
from regraft.errors import TrainingError
from regraft.inference.numerics import INFERENCE_NUMERICS
from regraft.runs import RunDir
from regraft.tasks import TaskRules, rules
from regraft.training import checkpoint
from regraft.training.numerics import StepNumerics
from regraft.training.processes import Processes, Trackers
from regraft.training.step import Stepper, Tally

__all__ = ["Callback", "EpochResult", "EvalResult", "FitState", "Stage", "Stepper", "fit", "evaluate", "better", "row_of"]


log = logging.getLogger(__name__)


class Callback:
    """Hooks the loop calls; override any. The CLI's progress display is one."""

    def on_fit_start(self, *, epochs: int, start_epoch: int, steps_per_epoch: int, stage: str) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None: ...
    def on_epoch_end(self, result: EpochResult) -> None: ...
    def on_message(self, text: str) -> None: ...


@dataclass
class EpochResult:
    """One evaluation: a row of ``metrics.csv``. ``epoch`` is on the run's one axis (fractional mid-epoch).

    ``train_acc``/``val_acc`` are None for a task without them (multi-label: its figures, ``val_map``
    and the rest, are in ``extra``); a None accuracy is left out of the row.
    """

    epoch: float
    train_loss: float
    train_acc: float | None
    val_loss: float
    val_acc: float | None
    lr: float | None  # the mean LR of the steps since the last row (None for a closed-form fit)
    images_per_sec: float
    epoch_seconds: float
    stage: str = "train"
    extra: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("extra"))
        for key in ("train_acc", "val_acc"):
            if row[key] is None:
                del row[key]
        if float(row["epoch"]).is_integer():
            row["epoch"] = int(row["epoch"])
        return row

    def figure(self, key: str) -> float | None:
        """A figure of the row by its column name (``val_acc``, ``val_map`` ...)."""
        value = self.to_row().get(key)
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class EvalResult:
    """A validation pass: the mean loss, the images, the row's figures (``val_acc``, ``val_balanced_acc``;
    ``val_map``, ``val_f1_macro``, ...) and ``score``, the primary one (the task's ``primary`` column)."""

    loss: float
    n: int
    figures: dict[str, float] = field(default_factory=dict)
    primary: str = "val_acc"
    logits: torch.Tensor | None = None  # (n, K), only with collect=True
    targets: torch.Tensor | None = None

    @property
    def score(self) -> float:
        return float(self.figures.get(self.primary, 0.0))

    @property
    def accuracy(self) -> float | None:
        return self.figures.get("val_acc")


def better(acc: float, loss: float, than_acc: float, than_loss: float) -> bool:
    """The one rule for "better" on validation evidence: a higher primary figure (accuracy, or mAP for
    multi-label runs), or the same and a lower loss (:meth:`regraft.tasks.TaskRules.better`)."""
    return TaskRules.better(acc, loss, than_acc, than_loss)


@dataclass
class FitState:
    """Where a run stands; saved in the checkpoint and restored on resume.

    ``history`` holds every evaluation in time order; ``best`` is the index of the row whose
    weights the run keeps (``model.safetensors``).
    """

    epoch: int = 0  # whole training epochs completed, on the run's axis
    history: list[dict[str, Any]] = field(default_factory=list)
    best: int | None = None
    lowest_val_loss: float = math.inf  # for patience
    bad_evals: int = 0
    train_seconds: float = 0.0
    stop_reason: str = ""  # why the stage stopped before its last epoch ("" = it did not)
    stopped_stage: str = ""  # which stage stopped early (a resumed run does not train it again)
    steps: int = 0  # optimizer steps so far (the trackers' axis)
    primary: str = "val_acc"  # the column "better" compares first: the task's primary figure

    @property
    def best_row(self) -> dict[str, Any] | None:
        return self.history[self.best] if self.best is not None else None

    def improves(self, score: float, loss: float) -> bool:
        row = self.best_row
        return row is None or better(score, loss, float(row[self.primary]), float(row["val_loss"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitState:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class Stage:
    """What one call of :func:`fit` trains, and how.

    Attributes:
        name: the ``stage`` column of its rows (``fine-tune``, ``train``, ...); a ``plan`` with
            staged unfreezing names each epoch after the parts that train in it instead.
        model: the module the steps run (possibly wrapped in DDP or compiled).
        weights: the plain module whose weights the run keeps (the full model when ``model`` is
            the trainable rest over cached features).
        plan: the :class:`~regraft.strategies.TrainPlan` (optimizer, scheduler, unfreezing).
        last_epoch: train until this many epochs are complete on the run's axis.
        evals_per_epoch: evaluations per epoch (2 on small data: every half epoch).
        stop_behind: stop as soon as an evaluation does not beat this row (index into history), or
            when a whole epoch of evaluations has not beaten the kept row (``auto``'s fine-tuning).
        patience: stop when the validation loss has not improved for this many epochs.
    """

    name: str
    model: nn.Module
    weights: nn.Module
    plan: Any
    train_loader: Iterable
    val_loader: Iterable
    last_epoch: int
    numerics: StepNumerics
    seed: int = 0
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    evals_per_epoch: int = 1
    grad_accum: int = 1
    clip_grad: float | None = None
    batch_transform: Callable | None = None
    after_train_mode: Callable[[nn.Module], Any] | None = None
    ema: checkpoint.WeightEMA | None = None
    stop_behind: int | None = None
    patience: int | None = None
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)
    task: TaskRules = field(default_factory=rules)  # multiclass unless the run says otherwise


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, procs: Processes | None = None, collect: bool = False,
             task: TaskRules | None = None) -> EvalResult:
    """Loss and the task's figures of ``model`` over ``loader`` in the numerics of inference (``INFERENCE_NUMERICS``).

    Args:
        model: the (possibly wrapped) model; put in eval mode and given back its mode afterwards.
        loader: yields ``(inputs, labels)``; under DDP each process must see a disjoint shard.
        collect: also return all logits and targets (gathered to every process, in shard order).
        task: the run's :class:`~regraft.tasks.TaskRules` (default multiclass): what is scored and how.
    """
    task = task or rules()
    procs = procs or Processes(device=next(model.parameters()).device)
    device = procs.device
    was_training = model.training
    model.eval()
    scores = task.accumulator(device)
    all_logits, all_targets = [], []
    for x, y in loader:
        y = y.to(device, non_blocking=True)
        # the numerics of eval/predict/exports (fp32, channels_last), whatever training runs in:
        # so that `regraft eval` reproduces these figures and exports agree with them
        logits = INFERENCE_NUMERICS(model, x.float() if x.is_floating_point() else x).to(device)
        scores.add(logits, y)
        if collect:
            all_logits.append(logits.cpu())
            all_targets.append(y.cpu())
    scored = scores.result(reduce_sum=procs.sum, gather=procs.gather_objects)
    model.train(was_training)
    result = EvalResult(loss=scored.loss, n=scored.n, figures=scored.figures, primary=task.primary)
    if collect:
        parts = procs.gather_objects((torch.cat(all_logits) if all_logits else torch.zeros(0), torch.cat(all_targets) if all_targets else torch.zeros(0, dtype=torch.long)))
        result.logits = torch.cat([p[0] for p in parts])
        result.targets = torch.cat([p[1] for p in parts])
    return result


def _finite_weights(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def fit(
    stage: Stage, *, procs: Processes, state: FitState | None = None, run: RunDir | None = None,
    callbacks: Sequence[Callback] = (), trackers: Trackers | None = None,
) -> FitState:
    """Train ``stage`` until ``stage.last_epoch`` epochs are complete (or it stops early).

    Returns:
        The :class:`FitState`, its ``history`` extended by this stage's rows.

    Raises:
        TrainingError: the loss, the validation loss or the weights became NaN or infinite
            (the best weights so far stay in the run).
    """
    state = state or FitState()
    if state.stopped_stage == stage.name:  # resumed after this stage had already stopped early
        return state
    state.stop_reason, state.stopped_stage = "", ""
    plan, loader = stage.plan, stage.train_loader
    state.primary = stage.task.primary
    stepper = Stepper(
        stage.model, plan.optimizer, numerics=stage.numerics, criterion=stage.criterion, scheduler=plan.scheduler,
        grad_accum=stage.grad_accum, clip_grad=stage.clip_grad, ema=stage.ema, batch_transform=stage.batch_transform,
    )
    steps = len(loader)  # type: ignore[arg-type]
    for cb in callbacks:
        cb.on_fit_start(epochs=stage.last_epoch, start_epoch=state.epoch, steps_per_epoch=steps, stage=stage.name)
    while state.epoch < stage.last_epoch and not state.stop_reason:
        _one_epoch(stage, stepper, state, procs=procs, run=run, callbacks=callbacks, trackers=trackers, steps=steps)
    return state


def _one_epoch(stage, stepper, state, *, procs, run, callbacks, trackers, steps) -> None:
    e = state.epoch  # the epoch being trained, from 0
    for message in stage.plan.begin_epoch(e) or []:
        _tell(callbacks, message)
    label = getattr(stage.plan, "stage_label", lambda _e: None)(e) or stage.name
    rng.seed_all(rng.epoch_seed(stage.seed, e, procs.index))  # dropout and mixup; the user's state is restored by the caller
    sampler = getattr(stage.train_loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(e)
    stage.model.train()
    if stage.after_train_mode is not None:
        stage.after_train_mode(stage.model)
    for cb in callbacks:
        cb.on_epoch_start(e + 1)
    tally = Tally(epoch=e + 1, steps=steps, callbacks=callbacks, defer=procs.device.type == "cuda", hits=stage.task.hits)
    marks = _mid_epoch_rows(stage, steps)
    for i, (x, y) in enumerate(stage.train_loader):
        sync = (i + 1) % stepper.grad_accum == 0 or i + 1 == steps
        loss, logits, target = stepper.step(x, y, sync=sync, check=tally.check(i))
        state.steps += int(sync)
        tally.add(i, loss, logits, target, stepper.lr())
        if i + 1 in marks:  # a mid-epoch evaluation on small data
            tally.flush()
            _record(stage, state, tally, epoch=round(e + (i + 1) / steps, 3), label=label, procs=procs, run=run,
                    callbacks=callbacks, trackers=trackers, stepper=stepper)
            if state.stop_reason:
                return
            stage.model.train()
            if stage.after_train_mode is not None:
                stage.after_train_mode(stage.model)
            tally.reset()
    tally.flush()
    state.epoch = e + 1
    _record(stage, state, tally, epoch=float(e + 1), label=label, procs=procs, run=run, callbacks=callbacks,
            trackers=trackers, end_of_epoch=True, stepper=stepper)


def _mid_epoch_rows(stage: Stage, steps: int) -> set[int]:
    """After which steps (1-based) an epoch is evaluated besides its end."""
    return {max(1, round(steps * k / stage.evals_per_epoch)) for k in range(1, stage.evals_per_epoch)} - {steps}


def _record(stage, state, tally, *, epoch, label, procs, run, callbacks, trackers, end_of_epoch=False, stepper=None) -> None:
    """Evaluate, append the row, keep the weights if they are the best so far, checkpoint, decide to stop."""
    train_loss, train_acc, ips, lr, seconds = tally.totals(procs)
    state.train_seconds += seconds
    val = evaluate(stage.model, stage.val_loader, procs=procs, task=stage.task)
    result = row_of(val, epoch=epoch, train_loss=train_loss, train_acc=train_acc, lr=lr, images_per_sec=ips,
                    epoch_seconds=seconds, stage=label)
    if not math.isfinite(val.loss) or not _finite_weights(stage.weights):
        what = f"the validation loss became {val.loss}" if not math.isfinite(val.loss) else "the weights became NaN or infinite"
        raise TrainingError(
            f"{what} at epoch {_fmt_epoch(epoch)}: lower --lr or set --clip-grad; those weights were not kept "
            "(the best weights so far stay in the run)"
        )
    ema_better = False
    if stage.ema is not None:
        ema_val = evaluate(stage.ema.module, stage.val_loader, procs=procs, task=stage.task)
        key = f"{state.primary}_ema"
        previous = [(r[key], r["val_loss_ema"]) for r in state.history if r.get(key) is not None]
        best_ema = max(previous, key=lambda t: (t[0], -t[1]), default=None)
        ema_better = best_ema is None or better(ema_val.score, ema_val.loss, *best_ema)
        result.extra.update({"val_loss_ema": ema_val.loss, key: ema_val.score})
    improved = state.improves(val.score, val.loss)
    state.history.append(result.to_row())
    if improved:
        state.best = len(state.history) - 1
    if val.loss < state.lowest_val_loss - 1e-6:
        state.lowest_val_loss, state.bad_evals = val.loss, 0
    else:
        state.bad_evals += 1
    state.stop_reason = _stop_reason(stage, state, val)
    state.stopped_stage = stage.name if state.stop_reason else ""
    if run is not None and procs.is_main:
        if improved:
            run.save_weights(stage.weights)
        if ema_better:
            run.save_weights(stage.ema.module, "model_ema.safetensors")
        if end_of_epoch or state.stop_reason:
            checkpoint.write(run, model=stage.weights, optimizer=stage.plan.optimizer, scheduler=stage.plan.scheduler,
                             plan=stage.plan, state=state, stage=stage.name, extra=stage.checkpoint_extra,
                             ema=stage.ema, scaler=stepper.scaler if stepper is not None else None)
    if trackers is not None:
        trackers.log({k: v for k, v in result.to_row().items() if isinstance(v, (int, float))}, step=state.steps)
    procs.wait()
    for cb in callbacks:
        cb.on_epoch_end(result)
    if state.stop_reason:
        _tell(callbacks, state.stop_reason)


def row_of(val: EvalResult, **fields: Any) -> EpochResult:
    """The ``metrics.csv`` row of a validation pass: ``val_loss``, ``val_acc`` when the task has it, the
    task's other figures in ``extra``."""
    figures = dict(val.figures)
    val_acc = figures.pop("val_acc", None)
    return EpochResult(val_loss=val.loss, val_acc=val_acc, extra=figures, **fields)


def _stop_reason(stage: Stage, state: FitState, val: EvalResult) -> str:
    row = state.history[-1]
    at = _fmt_epoch(row["epoch"])
    if stage.stop_behind is not None:
        ref = state.history[stage.stop_behind]
        if not better(val.score, val.loss, float(ref[state.primary]), float(ref["val_loss"])):
            name = stage.task.figure if stage.task.multilabel else "acc"
            return (f"{stage.name} stopped after epoch {at}: val {name} {val.score:.3f}, loss {val.loss:.3g} does not beat "
                    f"the {ref['stage']} ({name} {float(ref[state.primary]):.3f}, loss {float(ref['val_loss']):.3g})")
        if len(state.history) - 1 - state.best >= stage.evals_per_epoch and state.epoch < stage.last_epoch:
            kept = state.history[state.best]
            return (f"{stage.name} stopped after epoch {at}: a whole epoch without beating epoch {_fmt_epoch(kept['epoch'])} "
                    f"({kept['stage']}), which is kept")
    if stage.patience is not None and state.bad_evals >= stage.patience * stage.evals_per_epoch and state.epoch < stage.last_epoch:
        return f"early stop after epoch {at}: validation loss has not improved for {stage.patience} epochs"
    return ""


def _fmt_epoch(epoch: float) -> str:
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:.2f}".rstrip("0")


def _tell(callbacks: Sequence[Callback], text: str) -> None:
    log.info(text)
    for cb in callbacks:
        cb.on_message(text)
