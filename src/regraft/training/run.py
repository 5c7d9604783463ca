"""The path one run takes: a validated :class:`~regraft.config.Config` in, a finished run folder out.

This is the only module that knows the whole sequence (docs/architecture.md), and it holds the
sequence only: decide what the strategy implies, build the model, open the run folder, set up
the data and the network, fit the probe and decide from its evidence, train, pick the weights to
keep, finish. Each step is a function of ``setup``, ``probe``, ``stage``, ``wise`` or ``finish``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regraft import rng, strategies
from regraft.config import Config
from regraft.errors import Interrupted
from regraft.features import CacheSettings
from regraft.freezing import release_bn_policy
from regraft.runs import ResumeState, RunDir, RunKind, load_checkpoint, lock_scope, prepare_resume
from regraft.strategies import Continuation, Decisions, Evidence
from regraft.training import card as cards
from regraft.training import checkpoint, loop, setup, wise
from regraft.training.findings import write_data_findings
from regraft.training.finish import finish
from regraft.training.numerics import StepNumerics, step_numerics
from regraft.training.probe import PROBE_STAGE, ProbeLabels, ProbeOutcome, fit_probe_stage
from regraft.training.processes import Processes, Trackers, check_trackers, processes
from regraft.training.stage import training_stage
from regraft.weights import is_pretrained

__all__ = ["train", "RunResult", "default_out"]

log = logging.getLogger(__name__)

_START = "checkpoints/start.safetensors"  # the weights fine-tuning starts from (WiSE-FT's α = 0)


@dataclass
class RunResult:
    run: RunDir
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    load_report: Any = None
    audit: list[dict[str, Any]] = field(default_factory=list)


def default_out(cfg: Config, strategy: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (cfg.model or "model").replace(":", "-").replace("/", "-")
    return str(Path("runs") / f"{name}-{strategy}-{stamp}")


@lock_scope()  # the run folder's writer lock is released when train returns or raises
def train(
    cfg: Config, *, callbacks: Sequence[loop.Callback] = (), resume: bool = False, model: nn.Module | None = None,
) -> RunResult:
    """Train one run as ``cfg`` says and write its run folder.

    Args:
        cfg: the validated config; ``cfg.out`` is the run folder (a name is made when None).
        callbacks: progress hooks (see :class:`regraft.training.loop.Callback`).
        resume: continue the run in ``cfg.out`` from its last checkpoint.
        model: your own ``nn.Module`` instead of ``cfg.model`` from a zoo (its head is replaced
            when the class count differs; ``load_run(RUN, model=...)`` loads it back). It is
            handed back trained, and otherwise as it was: no hooks, its ``requires_grad`` flags
            and train/eval mode restored; the process's random number generators are untouched.

    Returns:
        A :class:`RunResult` with the run folder and its summary.

    Example:
        >>> from regraft.config import Config
        >>> result = train(Config(data="data/hotdog", model="resnet18", epochs=1))  # doctest: +SKIP
    """
    setup.check_inputs(cfg)
    check_trackers(cfg.log)
    decisions = strategies.decide(cfg, pretrained=is_pretrained(cfg.weights))
    cfg = replace(cfg, out=cfg.out or default_out(cfg, decisions.strategy.value if not decisions.auto else "auto"))
    notify = _Notifier(callbacks)
    t_start = time.perf_counter()
    # resume reads and checks every file of the run before anything is written; a run that never
    # saved a checkpoint starts again cleanly
    resumed = prepare_resume(cfg.out, config=cfg) if resume else None
    with rng.preserved(), _handed_back(model):
        rng.seed_all(cfg.seed)  # the model's random initialisation draws from here
        built = setup.build_model(cfg, model)  # before the numerics: auto precision looks at the model
        procs = processes(cfg.device)
        numerics = step_numerics(procs.device, precision=cfg.precision, channels_last=cfg.channels_last,
                                 model=built.model, device_flag=cfg.device)
        run = _open_run(cfg, resumed=resumed, procs=procs)
        if resumed is not None and resumed.note:
            notify(resumed.note)
        seq = _Sequence(cfg, decisions=decisions, procs=procs, numerics=numerics, run=run, notify=notify,
                        callbacks=callbacks, t_start=t_start)
        return seq.execute(built, resumed=resumed if resumed is not None and resumed.checkpoint is not None else None)


def _open_run(cfg: Config, *, resumed: ResumeState | None, procs: Processes) -> RunDir:
    """The run folder, created with its marker or reopened to resume; locked by the main process."""
    run = RunDir(cfg.out)
    if procs.is_main:
        if resumed is not None and resumed.checkpoint is not None:
            run = RunDir.open(cfg.out, kind=RunKind.TRAIN, lock=True)
        else:  # a new run, or one that never saved a checkpoint: start again
            run = RunDir.create(cfg.out, kind=RunKind.TRAIN, overwrite=cfg.overwrite or resumed is not None, data=cfg.data)
    procs.wait()
    return run


@contextmanager
def _handed_back(model: nn.Module | None):
    """Give a user's module back as plain PyTorch: no BatchNorm hooks, flags and mode as they were."""
    if model is None:
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    mode = model.training
    try:
        yield
    finally:
        release_bn_policy(model)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(mode)
        model.to(memory_format=torch.contiguous_format)


class _Sequence:
    """One run's steps in order; state that several steps share lives here, nowhere else."""

    def __init__(self, cfg: Config, *, decisions: Decisions, procs: Processes, numerics: StepNumerics, run: RunDir,
                 notify: Callable[[str], None], callbacks: Sequence[loop.Callback], t_start: float) -> None:
        self.cfg, self.decisions, self.procs, self.numerics, self.run = cfg, decisions, procs, numerics, run
        self.notify, self.callbacks, self.t_start = notify, callbacks, t_start
        self.continuation: Continuation | None = None
        self.mix: wise.Mix | None = None
        self.probe: ProbeOutcome | None = None
        self.data_counts: dict[str, int] | None = None  # data_findings.json's totals
        self.batch_transform: Any = None  # the fine-tuning stage's mixup/cutmix, for samples.png

    def execute(self, built: setup.Built, *, resumed: ResumeState | None) -> RunResult:
        cfg, procs = self.cfg, self.procs
        self.data = setup.setup_data(cfg, built, decisions=self.decisions, procs=procs, run=self.run, notify=self.notify)
        self.net = setup.setup_model(cfg, built, classes=self.data.classes, decisions=self.decisions,
                                     data_config=self.data.data_config, notify=self.notify)
        plan = self._plan(self.decisions, epochs=cfg.epochs)
        card = cards.model_card(cfg, ref=built.ref, head=self.net.head, classes=self.data.classes,
                                data_config=self.data.data_config, strategy=self.decisions.strategy.value,
                                frozen_bn=plan.freeze_plan.bn_swapped)
        if resumed is not None:  # the same classes, and a checkpoint that fits, before anything is written
            resumed.check_classes(self.data.classes)
        saved = resumed.checkpoint if resumed is not None else None
        if procs.is_main and resumed is None:  # a resumed run keeps its files until it has restored
            cards.write_run_start(self.run, cfg, card=card, numerics=self.numerics.to_dict(),
                                  load_report=self.net.load_report, audit=plan.audit(), surgery_diff=self.net.surgery_diff)
        cards.announce(self.notify, load_report=self.net.load_report, surgery_diff=self.net.surgery_diff, plan=plan,
                       numerics_line=self.numerics.describe())
        trackers = Trackers(cfg.log, run_name=self.run.path.name, logging_dir=str(self.run.path / "logs"), procs=procs)
        trackers.start({k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})
        try:
            state = self._train(plan, saved=saved, trackers=trackers, resumed=resumed)
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            trackers.finish()
        probe = self.probe
        oof = (probe.out_of_fold, probe.oof_targets) if probe is not None and probe.out_of_fold is not None else None
        summary = finish(run=self.run, model=self.net.model, data_setup=self.data, state=state, procs=procs,
                         summary_fields=self._summary_fields(), batch_transform=self.batch_transform, out_of_fold=oof)
        return RunResult(run=self.run, summary=summary, history=state.history, load_report=self.net.load_report,
                         audit=plan.audit())

    def _plan(self, decisions: Decisions, *, epochs: int) -> strategies.TrainPlan:
        steps = setup.steps_per_epoch(self.data.steps_per_epoch, self.cfg.grad_accum)
        return strategies.plan(self.net.model, strategy=decisions.strategy, cfg=self.cfg, steps_per_epoch=steps,
                               head=self.net.head, epochs=epochs)

    def _train(self, plan: strategies.TrainPlan, *, saved: dict[str, Any] | None, trackers: Trackers,
               resumed: ResumeState | None = None) -> loop.FitState:
        decisions, state = self.decisions, loop.FitState(primary=self.data.rules.primary)
        if self.cfg.tta != "none" and not decisions.probe_first:
            self.notify(f"--tta {self.cfg.tta} measures the probe, which strategy {decisions.strategy.value} does not fit: "
                        f"measure the run with 'regraft eval RUN --tta {self.cfg.tta}'")
        if saved is not None:  # resume: the probe (if any) and the decision after it are in the checkpoint
            state = loop.FitState.from_dict(saved["fit"])
            self.continuation = Continuation(**saved["continuation"]) if saved.get("continuation") else None
            self.notify(f"resuming {self.run.path} after epoch {state.epoch} of {self.cfg.epochs}")
        elif decisions.probe_first:
            outcome = self._probe()
            state.history.append(outcome.row.to_row())
            state.best, state.train_seconds = 0, outcome.seconds
            self.continuation = strategies.after_probe(decisions, self._evidence(outcome))
            self.notify(self.continuation.reason)
            self._save_start(plan, state)
        if decisions.probe_first and self.continuation is not None:
            if self.continuation.action == "probe":
                return state
            decisions = strategies.continuation_decisions(decisions, self.continuation)
            if decisions.strategy is not plan.strategy or self.continuation.epochs != self.cfg.epochs:
                plan = self._plan(decisions, epochs=self.continuation.epochs)
        last = self.continuation.epochs if self.continuation is not None else self.cfg.epochs
        stage = self._stage(plan, decisions, last_epoch=last, probed=decisions.probe_first)
        if resumed is not None:
            with resumed.restoring(self.run, classes=self.data.classes):  # a mismatch: one line, nothing written
                if saved.get("stage") == PROBE_STAGE:  # stopped between the probe and fine-tuning
                    self.net.model.load_state_dict(saved["model"])
                else:
                    fit = checkpoint.restore(saved, model=self.net.model, optimizer=plan.optimizer,
                                             scheduler=plan.scheduler, plan=plan, ema=stage.ema)
                    state = loop.FitState.from_dict(fit)
        self.batch_transform = stage.batch_transform
        state = loop.fit(stage, procs=self.procs, state=state, run=self.run, callbacks=self.callbacks, trackers=trackers)
        if decisions.wise_ft and self.cfg.wise_ft and state.history and state.history[0].get("stage") == PROBE_STAGE:
            self._wise_ft(state, stage)
        return state

    def _probe(self) -> ProbeOutcome:
        outcome = fit_probe_stage(
            self.net.model, head=self.net.head, train_dataset=self.data.train_dataset, val_dataset=self.data.val_dataset,
            num_classes=len(self.data.classes), regime=self.data.regime, settings=CacheSettings.from_config(self.cfg),
            procs=self.procs, autocast=self.numerics.autocast, l2=self.cfg.probe_l2,
            labels=ProbeLabels(task=self.data.rules, sample_weights=self.data.sample_weights,
                               loss_weights=self.data.class_weights),
            tta=self.cfg.tta,
        )
        if self.cfg.tta != "none" and not len(self.data.val_dataset):
            self.notify("TTA: no validation images, so no TTA figure for the probe (regraft eval RUN --data DIR --tta flip measures one)")
        self.notify(outcome.message)
        self.probe = outcome
        if self.procs.is_main and self.cfg.data_findings:
            self.data_counts = write_data_findings(
                self.run, outcome, train_dataset=self.data.train_dataset, val_dataset=self.data.val_dataset,
                classes=self.data.classes, multilabel=self.data.rules.multilabel, seed=self.cfg.seed, notify=self.notify)
        outcome.train_features = outcome.val_features = None  # the features are not needed past here
        return outcome

    def _evidence(self, outcome: ProbeOutcome) -> Evidence:
        n_train, n_val = len(self.data.train_dataset), len(self.data.val_dataset)
        # one fine-tuning epoch ≈ a forward and a backward pass (about three forwards) over the
        # training images, plus a forward pass over the validation images
        per_epoch = (3 * n_train + n_val) / outcome.images_per_second if outcome.images_per_second else None
        return Evidence(validation=outcome.validation, probe_acc=outcome.acc, probe_loss=outcome.loss,
                        probe_acc_std=outcome.acc_std, class_counts=self.data.class_counts(),
                        seconds_so_far=time.perf_counter() - self.t_start, seconds_per_epoch=per_epoch,
                        time_budget=self.cfg.time_budget, epochs=self.cfg.epochs)

    def _save_start(self, plan: strategies.TrainPlan, state: loop.FitState) -> None:
        """The probe's weights: kept so far, the start of fine-tuning, checkpointed (a resume skips the probe)."""
        if self.procs.is_main:
            self.run.save_weights(self.net.model)
            self.run.save_weights(self.net.model, _START)
            checkpoint.write(self.run, model=self.net.model, optimizer=plan.optimizer, scheduler=plan.scheduler,
                             plan=plan, state=state, stage=PROBE_STAGE, extra=self._extra())
        self.procs.wait()

    def _extra(self) -> dict[str, Any]:
        cont = self.continuation
        return {"config": self.cfg.to_dict(), "continuation": cont.__dict__ if cont is not None else None}

    def _stage(self, plan, decisions: Decisions, *, last_epoch: int, probed: bool) -> loop.Stage:
        small = len(self.data.train_dataset) <= 100 * len(self.data.classes)
        halves = decisions.stop_behind_probe and small and self.data.steps_per_epoch >= 4
        return training_stage(
            self.cfg, name="fine-tune" if probed else "train", net=self.net, data_setup=self.data, plan=plan,
            decisions=decisions, procs=self.procs, numerics=self.numerics, last_epoch=last_epoch, notify=self.notify,
            evals_per_epoch=2 if halves else 1, stop_behind=0 if decisions.stop_behind_probe and probed else None,
            checkpoint_extra=self._extra(),
        )

    def _wise_ft(self, state: loop.FitState, stage: loop.Stage) -> None:
        from safetensors.torch import load_file

        ft_rows = [i for i, r in enumerate(state.history) if r.get("stage") != PROBE_STAGE]
        start_file = self.run.path / _START
        if not ft_rows or not start_file.is_file():
            return
        self.procs.wait()
        model = self.net.model
        end = {k: v.detach().clone() for k, v in model.state_dict().items()}
        probe_row, last_row = state.history[0], state.history[ft_rows[-1]]
        key = state.primary
        ends = ((float(probe_row[key]), float(probe_row["val_loss"])), (float(last_row[key]), float(last_row["val_loss"])))
        start = {k: v.to(end[k].device) for k, v in load_file(str(start_file)).items()}
        mix = wise.choose_mix(model, start=start, end=end, ends=ends,
                              evaluate=lambda m: loop.evaluate(m, stage.val_loader, procs=self.procs, task=stage.task))
        self.mix = mix
        tried = ", ".join(f"α {a:g}: {score:.3f}" for a, score, _ in mix.tried)
        if 0.0 < mix.alpha < 1.0 and mix.result is not None and state.improves(mix.score, mix.loss):
            train_acc = float("nan") if "train_acc" in last_row else None
            row = loop.row_of(mix.result, epoch=float(last_row["epoch"]), train_loss=float("nan"), train_acc=train_acc,
                              lr=None, images_per_sec=0.0, epoch_seconds=0.0, stage="wise-ft")
            row.extra["wise_alpha"] = mix.alpha
            state.history.append(row.to_row())
            state.best = len(state.history) - 1
            if self.procs.is_main:
                self.run.save_weights(model)
            self.notify(f"WiSE-FT: kept the mix α {mix.alpha:g} of the probe and the fine-tuned weights ({tried})")
        else:
            self.notify(f"WiSE-FT: no mix beat the kept weights ({tried})")
        self.procs.wait()

    def _summary_fields(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.decisions
        cont = self.continuation
        fields = {
            "model": cfg.model, "weights": cfg.weights, "pretrained": d.loads_weights and is_pretrained(cfg.weights),
            "strategy": cfg.strategy if not d.auto else f"auto: {cont.action if cont else d.strategy.value}",
            "decision": cont.reason if cont is not None else None,
            "wall_seconds": round(time.perf_counter() - self.t_start, 3),
            "trunk_coverage": self.net.load_report.coverage if self.net.load_report is not None else 0.0,
            "numerics": self.numerics.to_dict() | {"evaluation": "fp32"},
            "balance": self.data.balance.to_dict() if self.data.balance is not None else None,
        }
        if cont is not None and cont.action == "probe":  # only the head was fitted
            fields["trainable_params"] = sum(p.numel() for p in self.net.model.get_submodule(self.net.head).parameters())
        if self.data_counts is not None:
            fields["data"] = self.data_counts
        if self.mix is not None:
            fields["wise_ft"] = {"alpha": self.mix.alpha, "tried": [list(t) for t in self.mix.tried]}
        probe = self.probe
        if probe is not None:
            name = self.data.rules.primary.removeprefix("val_")  # acc | map
            fields["probe"] = {"validation": probe.validation, name: probe.acc, "loss": probe.loss, f"{name}_std": probe.acc_std,
                               "l2": probe.l2, "folds": probe.folds, "seconds": round(probe.seconds, 3)}
            if probe.tta is not None:
                fields["probe"]["tta"] = probe.tta
        return fields

    def _interrupted(self) -> Interrupted:
        try:
            done = int(load_checkpoint(self.run.checkpoint)["fit"]["epoch"])
        except Exception:  # noqa: BLE001 - no readable checkpoint: nothing to resume
            done = 0
        if done == 0:
            return Interrupted(f"interrupted before the first epoch finished; nothing to resume in {self.run.path}: start again")
        return Interrupted(f"interrupted; the checkpoint after epoch {done} is saved: continue with 'regraft train --resume {self.run.path}'")


class _Notifier:
    def __init__(self, callbacks: Sequence[loop.Callback]) -> None:
        self.callbacks = callbacks

    def __call__(self, text: str) -> None:
        log.info(text)
        for cb in self.callbacks:
            cb.on_message(text)

