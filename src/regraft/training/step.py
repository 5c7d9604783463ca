"""One batch at a time: the step every gradient-trained stage and lr-find share, and its tally."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from regraft.errors import TrainingError
from regraft.training.numerics import StepNumerics, grad_scaler
from regraft.training.processes import Processes, unwrap

if TYPE_CHECKING:
    from regraft.training.checkpoint import WeightEMA

__all__ = ["Stepper", "Tally", "correct"]

Hits = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class Stepper:
    """One batch at a time: forward in the step numerics, the loss, its check, backward, and on
    every ``grad_accum``-th batch the optimizer step, the schedule and the EMA.

    ``check(loss)`` runs between forward and backward; raising there keeps the step from
    reaching the weights (the NaN guard; lr-find's divergence stop).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, numerics: StepNumerics, criterion: nn.Module,
        scheduler: Any = None, grad_accum: int = 1, clip_grad: float | None = None, ema: WeightEMA | None = None,
        batch_transform: Callable | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.numerics, self.criterion, self.grad_accum = numerics, criterion, max(1, grad_accum)
        self.clip_grad, self.ema, self.batch_transform = clip_grad, ema, batch_transform
        self.scaler = grad_scaler(numerics)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

    def step(self, x: torch.Tensor, y: torch.Tensor, *, sync: bool, check: Callable[[torch.Tensor], None] | None = None):
        """Run one batch; apply the accumulated step when ``sync``. Returns ``(loss, logits, y)``, detached."""
        x, y = self.numerics.to_input(x), y.to(self.numerics.device, non_blocking=True)
        if self.batch_transform is not None:
            x, y = self.batch_transform(x, y)
        # DDP: gradients are exchanged only on the batch that steps (no_sync on the others)
        quiet = self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else contextlib.nullcontext()
        with quiet:
            with self.numerics.autocast():
                logits = self.model(x)
            loss = self.criterion(logits.float(), y)
            if check is not None:
                check(loss)
            scaled = loss / self.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if sync:
            self._apply()
        return loss.detach(), logits.detach(), y

    def _apply(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad is not None:
            nn.utils.clip_grad_norm_([p for p in self._params if p.grad is not None], self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))

    def lr(self) -> float:
        return max((g["lr"] for g in self.optimizer.param_groups), default=0.0)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many predictions are right, as a tensor on the logits' device (reading it would sync)."""
    target = y.argmax(dim=1) if y.ndim == 2 else y
    return (logits.argmax(dim=1) == target).sum()


class Tally:
    """Loss and accuracy of the steps since the last row, without stalling a GPU.

    Reading a CUDA loss (``float(loss)``) waits for the step to finish, so the next batch's copy
    and kernel launches would start only then. On CUDA each step's figures are read one step
    late, once the next step is queued behind it; elsewhere at once, before the step is applied
    (``check``), so a non-finite loss never reaches the weights.

    ``hits`` counts a batch's right predictions (the task's; default :func:`correct`); when it
    returns None (multi-label runs have no training accuracy) the train accuracy is None.
    """

    def __init__(self, *, epoch: int, steps: int, callbacks: Sequence[Any], defer: bool, hits: Hits | None = None) -> None:
        self.epoch, self.steps, self.callbacks, self.defer = epoch, steps, callbacks, defer
        self.hits = hits or correct
        self.reset()
        self._pending: tuple[int, torch.Tensor, torch.Tensor, int] | None = None

    def reset(self) -> None:
        self.loss_sum = self.correct = self.seen = 0.0
        self.lr_sum, self.lr_n, self.t0 = 0.0, 0, time.perf_counter()

    def check(self, step: int) -> Callable[[torch.Tensor], None] | None:
        if self.defer:
            return None
        return lambda loss: self._guard(float(loss.detach()), step)

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        self.lr_sum, self.lr_n = self.lr_sum + lr, self.lr_n + 1
        item = (step, loss, self.hits(logits, y), y.shape[0])
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

    def _guard(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at epoch {self.epoch}, step {step + 1}: lower --lr, "
                "or train in full precision (--precision fp32); the best weights so far are kept in the run"
            )

    def _settle(self, item: tuple[int, torch.Tensor, torch.Tensor | None, int]) -> None:
        step, loss_t, correct_t, n = item
        loss = float(loss_t)
        self._guard(loss, step)
        self.loss_sum += loss * n
        if correct_t is None:
            self.correct = None
        elif self.correct is not None:
            self.correct += int(correct_t)
        self.seen += n
        for cb in self.callbacks:
            cb.on_step(self.epoch, step + 1, self.steps, loss)

    def totals(self, procs: Processes) -> tuple[float, float | None, float, float | None, float]:
        """``(train loss, train acc or None, images/s, mean lr, seconds)`` since the last reset, over all processes."""
        seconds = time.perf_counter() - self.t0
        hits = self.correct if self.correct is not None else 0.0
        t = procs.sum(torch.tensor([self.loss_sum, hits, self.seen], dtype=torch.float64, device=procs.device))
        loss_sum, correct, seen = (float(v) for v in t)
        lr = self.lr_sum / self.lr_n if self.lr_n else None
        acc = correct / max(seen, 1) if self.correct is not None else None
        return loss_sum / max(seen, 1), acc, seen / max(seconds, 1e-9), lr, seconds


