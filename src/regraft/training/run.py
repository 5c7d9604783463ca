"""The path one run takes: a validated :class:`~regraft.config.Config` in, a finished run folder out.

This is the only module that knows the whole sequence (docs/architecture.md): discover the
data, build the model, load weights (and refuse to train on too little of them), graft the head,
apply surgery, plan freezing and optimisation, train, and write the run folder.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from regraft.config import Config
from regraft.errors import Interrupted
from regraft.runs import RunDir, RunKind, lock_scope, prepare_resume
from regraft.training import loop as engine
from regraft.training import setup as pipeline

__all__ = ["train", "RunResult", "resolve_strategy", "default_out"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run: RunDir
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    load_report: Any = None
    audit: list[dict[str, Any]] = field(default_factory=list)



def resolve_strategy(cfg: Config) -> str:
    """``auto`` becomes ``lp-ft`` with pretrained weights and ``scratch`` without (docs/freezing.md)."""
    if cfg.strategy != "auto":
        return cfg.strategy
    from regraft.weights import is_pretrained

    return "lp-ft" if is_pretrained(cfg.weights) else "scratch"


def default_out(cfg: Config, strategy: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (cfg.model or "model").replace(":", "-").replace("/", "-")
    return str(Path("runs") / f"{name}-{strategy}-{stamp}")



@lock_scope()  # the run folder's writer lock is released when train returns or raises
def train(
    cfg: Config,
    *,
    callbacks: Sequence[engine.Callback] = (),
    resume: bool = False,
    model: torch.nn.Module | None = None,
) -> RunResult:
    """Train one run as ``cfg`` says and write its run folder.

    Args:
        cfg: the validated config; ``cfg.out`` is the run folder (a name is made when None).
        callbacks: progress hooks (see :class:`regraft.training.loop.Callback`).
        resume: continue the run in ``cfg.out`` from its last checkpoint.
        model: your own ``nn.Module`` instead of ``cfg.model`` from a zoo (its head is replaced
            when the class count differs; ``load_run(RUN, model=...)`` loads it back).

    Returns:
        A :class:`RunResult` with the run folder and its summary.

    Example:
        >>> from regraft.config import Config
        >>> result = train(Config(data="data/hotdog", model="resnet18", epochs=1))  # doctest: +SKIP
    """
    pipeline.check_inputs(cfg)
    strategy = resolve_strategy(cfg)
    cfg = replace(cfg, strategy=strategy, out=cfg.out or default_out(cfg, strategy))
    resumed = prepare_resume(cfg.out, config=cfg) if resume else None  # reads and checks, writes nothing
    resume = resumed is not None and resumed.checkpoint is not None  # none saved yet: start again cleanly

    engine.seed_everything(cfg.seed)  # the model's random initialisation draws from here
    built = pipeline.build_model(cfg, model)  # before the accelerator: auto precision looks at the model
    accelerator = engine.make_accelerator(
        device=cfg.device, precision=cfg.precision, grad_accum=cfg.grad_accum, model=built.model,
        log_with=cfg.log, project_dir=str(Path(cfg.out) / "logs") if cfg.log else None,
    )
    run = RunDir(cfg.out)
    if accelerator.is_main_process:
        run = (RunDir.open(cfg.out, kind=RunKind.TRAIN, lock=True) if resume else
               RunDir.create(cfg.out, kind=RunKind.TRAIN, overwrite=cfg.overwrite or resumed is not None, data=cfg.data))
    accelerator.wait_for_everyone()
    notify = _Notifier(callbacks)
    if resumed is not None and resumed.note:
        notify(resumed.note)

    setup = pipeline.setup(cfg, strategy=strategy, accelerator=accelerator, run=run, notify=notify, built=built)
    pipeline.announce(setup, notify)
    if accelerator.is_main_process and not resume:  # a resumed run keeps its files until it has restored
        pipeline.write_run_start(run, cfg, setup)
    if cfg.log:
        accelerator.init_trackers(run.path.name, config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})

    state = None
    if resume:
        with resumed.restoring(run, classes=setup.classes) as checkpoint:
            state = engine.restore(checkpoint, model=setup.model, plan=setup.plan, accelerator=accelerator, ema=setup.ema)
        notify(f"resuming {run.path} after epoch {state.epoch} of {cfg.epochs}")
    elif setup.plan.linear_probe_first:
        state = pipeline.linear_probe(cfg, setup, accelerator=accelerator, run=run, notify=notify, callbacks=callbacks)
    module, train_loader, val_loader, save_model = pipeline.cached_training(cfg, setup, accelerator=accelerator, notify=notify)

    t0 = time.perf_counter()
    try:
        state = engine.fit(
            module, setup.plan, train_loader, val_loader, save_model=save_model,
            epochs=cfg.epochs, accelerator=accelerator, run=run, seed=cfg.seed, state=state,
            label_smoothing=cfg.label_smoothing, clip_grad=cfg.clip_grad, patience=cfg.patience,
            channels_last=setup.channels_last, batch_transform=setup.batch_transform,
            callbacks=callbacks, checkpoint_extra={"config": cfg.to_dict()},
            stage="fine-tune" if setup.plan.linear_probe_first else "train",
            after_train_mode=setup.after_train_mode, ema=setup.ema,
        )
    except KeyboardInterrupt:
        done = _completed_epochs(run)
        if done == 0:
            raise Interrupted(f"interrupted before the first epoch finished; nothing to resume in {run.path}: start again") from None
        raise Interrupted(
            f"interrupted; the checkpoint after epoch {done} is saved: continue with 'regraft train --resume {run.path}'"
        ) from None
    finally:
        if accelerator.trackers:
            accelerator.end_training()
    wall = time.perf_counter() - t0
    summary = pipeline.finish(cfg, setup, state, run=run, accelerator=accelerator, wall_seconds=wall)
    # hand the user's module back as a plain module: Accelerate wraps a prepared model's forward
    # in autocast under mixed precision, which would keep running it in bf16 after training
    accelerator.unwrap_model(setup.model, keep_fp32_wrapper=False)
    return RunResult(run=run, summary=summary, history=state.history, load_report=setup.load_report, audit=setup.plan.audit())


def _completed_epochs(run: RunDir) -> int:
    try:
        from regraft.runs import load_checkpoint

        return int(load_checkpoint(run.checkpoint)["fit"]["epoch"])
    except Exception:
        return 0


class _Notifier:
    def __init__(self, callbacks: Sequence[engine.Callback]) -> None:
        self.callbacks = callbacks

    def __call__(self, text: str) -> None:
        log.info(text)
        for cb in self.callbacks:
            cb.on_message(text)



def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    return max(1, math.ceil(n_batches / grad_accum))
