"""The training loop: ``fit`` and ``evaluate`` on HF Accelerate.

The loop is ours and reads top to bottom; Accelerate carries devices, mixed precision,
gradient accumulation and distribution, so the same code runs on a CPU, one GPU, or under
``accelerate launch`` / ``torchrun``. Randomness in an epoch depends only on ``(seed, epoch)``,
and a checkpoint is written atomically after every epoch, so a resumed run continues exactly.

The library never prints: progress goes to :class:`Callback` objects (the CLI supplies a
progress bar or plain lines).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from regraft.errors import TrainingError
from regraft.inference.numerics import INFERENCE_NUMERICS

if TYPE_CHECKING:
    from accelerate import Accelerator

    from regraft.runs import RunDir

__all__ = ["Callback", "EpochResult", "EvalResult", "FitState", "WeightEMA", "make_accelerator", "fit", "evaluate", "restore", "save_checkpoint", "seed_everything"]

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
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    images_per_sec: float
    epoch_seconds: float
    stage: str = "train"
    extra: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("extra"))
        return row


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    n: int
    logits: torch.Tensor | None = None  # (n, K), only with collect=True
    targets: torch.Tensor | None = None


@dataclass
class FitState:
    """Where a fit stands; saved in the checkpoint and restored on resume."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WeightEMA:
    """An exponential moving average of a model's weights, evaluated alongside the model.

    Floating-point parameters and buffers are averaged; integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied. Updated after every optimizer step.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        import copy

        if not 0.0 < decay < 1.0:
            raise TrainingError(f"--ema must be a decay between 0 and 1 (e.g. 0.999); got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = current[name].detach().to(avg.device)
            if avg.dtype.is_floating_point:
                avg.mul_(self.decay).add_(new.to(avg.dtype), alpha=1.0 - self.decay)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(
    *, device: str = "auto", precision: str = "auto", grad_accum: int = 1, distributed_kwargs: bool = True,
    log_with: Sequence[str] = (), project_dir: str | None = None, model: nn.Module | None = None,
) -> Accelerator:
    """An ``Accelerator`` for ``device`` (auto|cpu|cuda|mps) and ``precision`` (auto|no|fp32|bf16|fp16).

    ``auto`` precision: see :func:`resolve_precision` (``model``: the network it will run).
    ``log_with``: Accelerate trackers (``tensorboard``, ``mlflow``), writing under ``project_dir``.
    """
    _check_trackers(log_with)
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise TrainingError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    cpu = device == "cpu"
    precision = resolve_precision(precision, device=device, model=model)
    # Accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision; every regraft run (compare's strategies, fit() in a notebook) starts its own.
    # The process group (PartialState) is kept, so this is safe under torchrun.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # frozen parameters, and stages unfrozen later, produce no gradients on some steps
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if distributed_kwargs else []
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=grad_accum,
        kwargs_handlers=handlers,
        log_with=list(log_with) or None,
        project_dir=project_dir,
    )


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix units (Intel AMX with AVX512-BF16: Sapphire Rapids and later).

    There, bf16 autocast trains ResNet-18/50, RegNet and ViT 1.5-2.8x faster than fp32 (both
    channels_last; bench/RESULTS.md); CPUs without AMX emulate bf16 and gain little or lose.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # older torch, or a build without these probes
        return False


def has_depthwise_conv(model: nn.Module) -> bool:
    """Whether ``model`` has depthwise convolutions (MobileNet, EfficientNet, ConvNeXt, ...)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def resolve_precision(precision: str, *, device: str = "auto", model: nn.Module | None = None) -> str:
    """What Accelerate is asked for: ``bf16``, ``fp16`` or ``no`` (full precision).

    ``auto`` is bf16 on a CUDA GPU that supports it; on a CPU, bf16 when it has bf16 matrix units
    (:func:`cpu_has_fast_bf16`) and ``model`` has no depthwise convolutions: oneDNN's bf16
    depthwise kernels train MobileNetV3, EfficientNet and EfficientNet-Lite0 0.77-0.95x as fast as
    fp32 (ConvNeXt 0.98x), so those stay fp32. Full precision elsewhere (other CPUs, MPS).
    """
    on_cuda = torch.cuda.is_available() and device != "cpu"
    on_mps = not on_cuda and device in ("auto", "mps") and hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if precision == "auto":
        if on_cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        fast = not on_mps and cpu_has_fast_bf16()
        return "bf16" if fast and not (model is not None and has_depthwise_conv(model)) else "no"
    if precision == "fp32":
        return "no"
    if precision == "fp16" and not on_cuda:
        raise TrainingError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    return precision


def resolve_channels_last(channels_last: bool | None, model: nn.Module, device: torch.device) -> bool:
    """``None`` (auto) is on for models with 2-D convolutions on CPU and CUDA, off on MPS.

    channels_last is oneDNN's and cuDNN's native layout: measured on CPU, fp32 training 1.1-1.2x
    and bf16 up to 1.5x faster (bench/RESULTS.md); on MPS it has been a source of wrong results.
    """
    if channels_last is not None:
        return bool(channels_last)
    return device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules())


_TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def _check_trackers(names: Sequence[str]) -> None:
    import importlib.util

    from regraft.errors import ConfigError, MissingDependencyError

    for name in names:
        if name not in _TRACKER_MODULES:
            raise ConfigError(f"--log {name}: unknown tracker; choose from {', '.join(_TRACKER_MODULES)}")
        if importlib.util.find_spec(_TRACKER_MODULES[name]) is None:
            raise MissingDependencyError(f"--log {name} needs {name}: pip install 'regraft[{name}]'")


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    # augmentation, dropout and mixup draw from these: the same (seed, epoch) gives the same epoch
    s = seed * 1_000_003 + epoch * 1009 + rank
    seed_everything(s)


def _correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many predictions are right, as a tensor on the logits' device (reading it would sync)."""
    target = y.argmax(dim=1) if y.ndim == 2 else y
    return (logits.argmax(dim=1) == target).sum()


class _StepStats:
    """Per-step loss and accuracy without stalling a GPU.

    Reading a CUDA loss (``float(loss)``) waits for the step to finish, so the next batch's copy
    and kernel launches would start only then. On CUDA each step's figures are read one step
    late, once the next step is queued behind it; elsewhere (no queue to keep full) at once,
    before the step is applied, so a non-finite loss never reaches the weights.
    """

    def __init__(self, *, epoch: int, steps: int, callbacks: Sequence[Callback], defer: bool) -> None:
        self.epoch, self.steps, self.callbacks, self.defer = epoch, steps, callbacks, defer
        self.loss_sum = self.correct = self.seen = 0.0
        self._pending: tuple[int, torch.Tensor, torch.Tensor, int] | None = None

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        item = (step, loss.detach(), _correct(logits.detach(), y), y.shape[0])
        if not self.defer:
            self._settle(item)
            return
        previous, self._pending = self._pending, item
        if previous is not None:
            self._settle(previous)

    def flush(self) -> None:
        if self._pending is not None:
            previous, self._pending = self._pending, None
            self._settle(previous)

    def _settle(self, item: tuple[int, torch.Tensor, torch.Tensor, int]) -> None:
        step, loss_t, correct_t, n = item
        loss = float(loss_t)
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at epoch {self.epoch}, step {step + 1}: lower --lr, "
                "or train in full precision (--precision fp32); the best weights so far are kept in the run"
            )
        self.loss_sum += loss * n
        self.correct += int(correct_t)
        self.seen += n
        for cb in self.callbacks:
            cb.on_step(self.epoch, step + 1, self.steps, loss)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    accelerator: Accelerator | None = None,
    collect: bool = False,
    channels_last: bool = False,
) -> EvalResult:
    """Loss and accuracy of ``model`` over ``loader`` (summed exactly across processes).

    Args:
        model: the (possibly prepared) model; put in eval mode and restored afterwards.
        loader: yields ``(images, labels)``; under DDP each process must see a disjoint shard.
        collect: also return all logits and targets (gathered to every process, in shard order).
    """
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    all_logits, all_targets = [], []
    for x, y in loader:
        y = y.to(device, non_blocking=True)
        # the numerics of eval/predict/exports (fp32, channels_last), whatever training runs in:
        # so that `regraft eval` reproduces these figures and exports agree with them
        logits = INFERENCE_NUMERICS(model, x).to(device)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += _correct(logits, y)
        count += y.shape[0]
        if collect:
            all_logits.append(logits.cpu())
            all_targets.append(y.cpu())
    if accelerator is not None and accelerator.num_processes > 1:
        loss_sum, correct, count = (accelerator.reduce(t, reduction="sum") for t in (loss_sum, correct, count))
    model.train(was_training)
    n = int(count.item())
    result = EvalResult(loss=float(loss_sum / max(n, 1)), accuracy=float(correct / max(n, 1)), n=n)
    if collect:
        logits = torch.cat(all_logits) if all_logits else torch.zeros(0)
        targets = torch.cat(all_targets) if all_targets else torch.zeros(0, dtype=torch.long)
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([(logits, targets)])
            logits = torch.cat([p[0] for p in parts])
            targets = torch.cat([p[1] for p in parts])
        result.logits, result.targets = logits, targets
    return result


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max((g["lr"] for g in optimizer.param_groups), default=0.0)


def fit(
    model: nn.Module,
    plan: Any,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    epochs: int,
    accelerator: Accelerator,
    run: RunDir | None = None,
    seed: int = 0,
    state: FitState | None = None,
    label_smoothing: float = 0.0,
    clip_grad: float | None = None,
    patience: int | None = None,
    channels_last: bool = False,
    batch_transform: Callable | None = None,
    callbacks: Sequence[Callback] = (),
    save_model: nn.Module | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    stage: str = "train",
    after_train_mode: Callable[[nn.Module], Any] | None = None,
    ema: WeightEMA | None = None,
) -> FitState:
    """Train ``model`` for ``epochs`` epochs with ``plan``'s optimizer and schedule.

    Args:
        model: the module to train, already prepared by ``accelerator`` (see :func:`prepare`).
        plan: a :class:`regraft.strategies.TrainPlan` (optimizer, scheduler, ``begin_epoch``) —
            already prepared too.
        train_loader, val_loader: yield ``(images, labels)``; the train loader's batch sampler is
            told the epoch (``set_epoch``) so its order depends on ``(seed, epoch)`` only.
        run: where the best weights (``model.safetensors``) and ``checkpoints/last.pt`` go; only
            the main process writes.
        state: a :class:`FitState` to resume from (its ``epoch`` epochs are skipped).
        save_model: the module whose weights are saved as the best (default ``model``); used when
            training runs on a part of the model (cached features).
        after_train_mode: called after every ``model.train()`` (the frozen-BatchNorm policy).
        ema: a :class:`WeightEMA` updated after every optimizer step and evaluated each epoch
            (``val_acc_ema``, ``val_loss_ema``; its best weights go to ``model_ema.safetensors``).

    Returns:
        The final :class:`FitState`.

    Raises:
        TrainingError: the loss became NaN or infinite (the best weights so far are kept).
    """
    state = state or FitState()
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    optimizer, scheduler = plan.optimizer, plan.scheduler
    steps = len(train_loader)
    for cb in callbacks:
        cb.on_fit_start(epochs=epochs, start_epoch=state.epoch, steps_per_epoch=steps, stage=stage)
    for epoch in range(state.epoch, epochs):
        for message in plan.begin_epoch(epoch) or []:
            log.info(message)
            for cb in callbacks:
                cb.on_message(message)
        result = _train_one_epoch(
            model, optimizer, scheduler, train_loader, criterion,
            accelerator=accelerator, epoch=epoch, seed=seed, clip_grad=clip_grad,
            channels_last=channels_last, batch_transform=batch_transform,
            callbacks=callbacks, after_train_mode=after_train_mode, ema=ema,
        )
        val = evaluate(model, val_loader, accelerator=accelerator, channels_last=channels_last)
        result.val_loss, result.val_acc, result.stage = val.loss, val.accuracy, stage
        ema_improved = False
        if ema is not None:
            ema_val = evaluate(ema.module, val_loader, accelerator=accelerator, channels_last=channels_last)
            ema_improved = ema_val.accuracy > max((r.get("val_acc_ema", -1.0) for r in state.history), default=-1.0)
            result.extra.update(val_loss_ema=ema_val.loss, val_acc_ema=ema_val.accuracy)
        state.epoch = epoch + 1
        state.train_seconds += result.epoch_seconds
        state.history.append(result.to_row())
        improved = val.accuracy > state.best_val_acc or (
            val.accuracy == state.best_val_acc and val.loss < state.best_val_loss
        )
        if improved:
            state.best_val_acc, state.best_epoch = val.accuracy, epoch + 1
        if val.loss < state.best_val_loss - 1e-6:
            state.best_val_loss, state.bad_epochs = val.loss, 0
        else:
            state.bad_epochs += 1
        stop = patience is not None and state.bad_epochs >= patience and epoch + 1 < epochs
        state.stopped_early = stop
        if run is not None and accelerator.is_main_process:
            target = accelerator.unwrap_model(save_model or model)
            if improved:
                run.save_weights(target)
            if ema_improved:
                run.save_weights(ema.module, "model_ema.safetensors")
            extra = dict(checkpoint_extra or {})
            if ema is not None:
                extra["ema"] = ema.state_dict()
            save_checkpoint(run, accelerator, target, plan, state, extra)
        if accelerator.trackers:
            accelerator.log({k: v for k, v in result.to_row().items() if isinstance(v, (int, float))}, step=epoch + 1)
        accelerator.wait_for_everyone()
        for cb in callbacks:
            cb.on_epoch_end(result)
        if stop:
            msg = f"early stop after epoch {epoch + 1}: validation loss has not improved for {patience} epochs"
            log.info(msg)
            for cb in callbacks:
                cb.on_message(msg)
            break
    return state


def _train_one_epoch(
    model, optimizer, scheduler, loader, criterion, *, accelerator, epoch, seed, clip_grad,
    channels_last, batch_transform, callbacks, after_train_mode, ema=None,
) -> EpochResult:
    _seed_epoch(seed, epoch, accelerator.process_index)
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    model.train()
    if after_train_mode is not None:
        after_train_mode(model)
    for cb in callbacks:
        cb.on_epoch_start(epoch + 1)
    steps = len(loader)
    stats = _StepStats(epoch=epoch + 1, steps=steps, callbacks=callbacks, defer=accelerator.device.type == "cuda")
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if batch_transform is not None:
            x, y = batch_transform(x, y)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(x)
                loss = criterion(logits.float(), y)
            if not stats.defer:
                stats.add(step, loss, logits, y)  # raises on a non-finite loss before it is applied
            accelerator.backward(loss)
            if clip_grad is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            if accelerator.sync_gradients:
                if scheduler is not None:
                    scheduler.step()
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
            optimizer.zero_grad(set_to_none=True)
        if stats.defer:
            stats.add(step, loss, logits, y)  # reads the previous step, now queued behind this one
    stats.flush()
    seconds = time.perf_counter() - t0
    totals = torch.tensor([stats.loss_sum, stats.correct, stats.seen], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, correct, seen = (float(v) for v in totals)
    return EpochResult(
        epoch=epoch + 1,
        train_loss=loss_sum / max(seen, 1),
        train_acc=correct / max(seen, 1),
        val_loss=math.nan,
        val_acc=math.nan,
        lr=_current_lr(optimizer),
        images_per_sec=seen / max(seconds, 1e-9),
        epoch_seconds=seconds,
    )


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(run: RunDir, accelerator: Accelerator, model: nn.Module, plan: Any, state: FitState, extra: dict | None) -> None:
    from regraft.runs import save_checkpoint

    payload = {
        "model": model.state_dict(),
        "optimizer": plan.optimizer.state_dict(),
        "scheduler": plan.scheduler.state_dict() if plan.scheduler is not None else None,
        "plan": plan.state_dict(),
        "fit": state.to_dict(),
        "rng": rng_state(),
        "scaler": accelerator.scaler.state_dict() if getattr(accelerator, "scaler", None) is not None else None,
    }
    payload.update(extra or {})
    save_checkpoint(run.checkpoint, payload)


def restore(checkpoint: dict[str, Any], *, model: nn.Module, plan: Any, accelerator: Accelerator, ema: WeightEMA | None = None) -> FitState:
    """Load a checkpoint written by :func:`fit` back into ``model``, ``plan`` and the accelerator."""
    accelerator.unwrap_model(model).load_state_dict(checkpoint["model"])
    if ema is not None and checkpoint.get("ema") is not None:
        ema.load_state_dict(checkpoint["ema"])
    plan.load_state_dict(checkpoint["plan"])
    plan.optimizer.load_state_dict(checkpoint["optimizer"])
    if plan.scheduler is not None and checkpoint.get("scheduler") is not None:
        plan.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("scaler") is not None and getattr(accelerator, "scaler", None) is not None:
        accelerator.scaler.load_state_dict(checkpoint["scaler"])
    return FitState(**checkpoint["fit"])
