"""What ``regraft train`` does before its first step, through the library's own typed steps, for
benchmarks that time regraft's loop and loaders apart from the whole command (throughput, the
feature cache's epochs). Mirrors ``regraft.training.run`` step for step, nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Prepared:
    stage: Any  # regraft.training.loop.Stage
    procs: Any
    data: Any  # training.setup.DataSetup
    net: Any  # training.setup.NetSetup
    numerics: Any
    run: Any


def prepare(cfg, *, strategy: str, notify=lambda text: None) -> Prepared:
    """The run folder, data, network, plan and gradient-trained stage that ``train(cfg)`` would make."""
    from dataclasses import replace

    from regraft import rng, strategies
    from regraft.runs import RunDir, RunKind
    from regraft.training import setup
    from regraft.training.numerics import step_numerics
    from regraft.training.processes import processes
    from regraft.training.stage import training_stage
    from regraft.weights import is_pretrained

    cfg = replace(cfg, strategy=strategy)
    decisions = strategies.decide(cfg, pretrained=is_pretrained(cfg.weights))
    rng.seed_all(cfg.seed)
    built = setup.build_model(cfg)
    procs = processes(cfg.device)
    numerics = step_numerics(procs.device, precision=cfg.precision, channels_last=cfg.channels_last, model=built.model,
                             device_flag=cfg.device)
    run = RunDir.create(cfg.out, kind=RunKind.TRAIN, overwrite=True)
    data = setup.setup_data(cfg, built, decisions=decisions, procs=procs, run=run, notify=notify)
    net = setup.setup_model(cfg, built, classes=data.classes, decisions=decisions, data_config=data.data_config, notify=notify)
    plan = strategies.plan(net.model, strategy=decisions.strategy, cfg=cfg,
                           steps_per_epoch=setup.steps_per_epoch(data.steps_per_epoch, cfg.grad_accum), head=net.head)
    stage = training_stage(cfg, name="train", net=net, data_setup=data, plan=plan, decisions=decisions, procs=procs,
                           numerics=numerics, last_epoch=cfg.epochs, notify=notify)
    return Prepared(stage, procs, data, net, numerics, run)
