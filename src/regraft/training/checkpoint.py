"""The checkpoint a run resumes from, and the EMA of its weights.

``RUN/checkpoints/last.pt`` holds the model, the optimizer, the schedule, the unfreezing state,
where the run stands (:class:`~regraft.training.loop.FitState`) and which stage it is in; it is
written atomically after every epoch and loads with ``torch.load(weights_only=True)``. Randomness
needs no state: every epoch reseeds from ``(seed, epoch)``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from regraft.errors import RunError, TrainingError
from regraft.runs import RunDir, save_checkpoint

__all__ = ["WeightEMA", "write", "restore"]


class WeightEMA:
    """An exponential moving average of a model's weights, evaluated alongside the model.

    Floating-point parameters and buffers are averaged; integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied. Updated after every optimizer step.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
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


def write(
    run: RunDir, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, plan: Any, state: Any,
    stage: str, extra: dict[str, Any] | None = None, ema: WeightEMA | None = None, scaler: Any = None,
) -> None:
    """Save everything a resume needs, atomically (tensors and plain values only); ``state`` is the
    loop's ``FitState`` (anything with ``to_dict()``)."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "plan": plan.state_dict() if plan is not None else None,
        "fit": state.to_dict(),
        "stage": stage,
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    payload.update(extra or {})
    save_checkpoint(run.checkpoint, payload)


def restore(
    checkpoint: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any,
    plan: Any, ema: WeightEMA | None = None, scaler: Any = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`write` back in place; returns its ``fit`` dict.

    Raises:
        RunError: the checkpoint does not fit this model or plan (it was written by another run).
    """
    try:
        model.load_state_dict(checkpoint["model"])
        if plan is not None and checkpoint.get("plan") is not None:
            plan.load_state_dict(checkpoint["plan"])
        if optimizer is not None and checkpoint.get("optimizer") is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler") is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise RunError(f"checkpoints/last.pt does not fit this run's model or optimizer ({first}); start the run again") from exc
    if ema is not None and checkpoint.get("ema") is not None:
        ema.load_state_dict(checkpoint["ema"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    return dict(checkpoint["fit"])
