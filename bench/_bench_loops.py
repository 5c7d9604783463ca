"""The contestants of bench/throughput.py: each runs rounds of timed steps on one side of one row.

A machine shared with other jobs drifts: one contestant timed after another would compare two
different machines. So every contestant is built once and then runs short rounds in turn
(plain, regraft, regraft, plain, ...); in each round the first step is untimed (a new epoch's
iterator, caches) and the next ``steps`` are timed.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _plain as plain
import torch
from _common import _cpu_now

from regraft.training.loop import Callback

NUM_CLASSES = 10  # the crop folders have ten classes


@dataclass
class Rate:
    images: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.images / self.wall if self.wall > 0 else float("nan")

    @property
    def cpu_per_image(self) -> float:
        return self.cpu / self.images if self.images else float("nan")

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.images + other.images, self.wall + other.wall, self.cpu + other.cpu)

    def describe(self) -> str:
        return f"{self.rate:8.2f} images/s  {self.cpu_per_image:.3f} CPU s/image  ({self.images} images in {self.wall:.1f} s)"


@dataclass
class Setting:
    model: str
    batch: int
    img: int
    device: torch.device
    bf16: bool
    channels_last: bool
    workers: int
    folder: Path
    tmp: Path


class StepTimer(Callback):
    """Clocks from the end of step ``warmup`` to the end of step ``warmup + steps`` (wall and CPU)."""

    def __init__(self, *, warmup: int, steps: int, batch: int, device: torch.device) -> None:
        self.warmup, self.steps, self.batch, self.device = warmup, steps, batch, device
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None

    def tick(self, step: int) -> None:  # step counted from 0
        if step in (self.warmup - 1, self.warmup + self.steps - 1):
            _sync(self.device)
            mark = (time.perf_counter(), _cpu_now())
            if step == self.warmup - 1:
                self.start = mark
            else:
                self.end = mark

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.tick(step - 1)

    def rate(self) -> Rate:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the loop ran fewer than {self.warmup + self.steps} steps")
        return Rate(self.steps * self.batch, self.end[0] - self.start[0], self.end[1] - self.start[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, images: int) -> Rate:
    _sync(device)
    w0, c0 = time.perf_counter(), _cpu_now()
    fn()
    _sync(device)
    return Rate(images, time.perf_counter() - w0, _cpu_now() - c0)


class Cycling:
    """``total`` batches drawn in turn from a few resident ones (a loader without data loading)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], total: int) -> None:
        self.batches, self.total = batches, total

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.total))


class Limited:
    """The first ``n`` batches of a loader; keeps its ``batch_sampler`` (the engine sets its epoch)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n = loader, n
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)


def memory_batches(s: Setting, n_distinct: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few training batches (tutorial transforms), decoded once and moved to the device."""
    mean, std = plain.norm_for(s.model)
    loader, _, _ = plain.loaders(s.folder, img=s.img, mean=mean, std=std, batch_size=s.batch, workers=0)
    out = []
    for x, y in loader:
        if len(out) == n_distinct:
            break
        if len(y) == s.batch:
            out.append((x.to(s.device), y.to(s.device)))
    return out


# ------------------------------------------------------------------ the plain side


class PlainTrain:
    """The tutorial loop, from the JPEG folder (``ImageFolder``) or from resident batches."""

    def __init__(self, s: Setting, batches: list | None = None) -> None:
        torch.manual_seed(0)
        self.s, self.batches = s, batches
        model = plain.build(s.model, NUM_CLASSES).to(s.device)
        self.model = model.to(memory_format=torch.channels_last) if s.channels_last else model
        self.optimizer = plain.sgd(self.model)
        self.opts = plain.LoopOptions(device=s.device, bf16=s.bf16, channels_last=s.channels_last)
        if batches is None:
            mean, std = plain.norm_for(s.model)
            self.loader, self.val_loader, _ = plain.loaders(s.folder, img=s.img, mean=mean, std=std, batch_size=s.batch,
                                                            workers=s.workers, pin=s.device.type == "cuda", val="train")

    def round(self, steps: int) -> Rate:
        timer = StepTimer(warmup=1, steps=steps, batch=self.s.batch, device=self.s.device)
        loader = Cycling(self.batches, 1 + steps) if self.batches is not None else self.loader
        plain.train_epoch(self.model, loader, self.optimizer, self.opts, on_step=timer.tick, max_steps=1 + steps)
        return timer.rate()

    def infer(self, steps: int) -> Rate:
        loader = Cycling(self.batches, 1 + steps) if self.batches is not None else self.val_loader
        plain.evaluate(self.model, loader, self.opts, max_steps=1)
        return _timed(lambda: plain.evaluate(self.model, loader, self.opts, max_steps=steps), self.s.device, steps * self.s.batch)


class Ceiling:
    """Forward, backward and step on one resident batch; nothing read back until the round ends."""

    def __init__(self, s: Setting, batches: list) -> None:
        self.s = s
        self.inner = PlainTrain(s, batches)
        x, self.y = batches[0]
        self.x = x.contiguous(memory_format=torch.channels_last) if s.channels_last else x
        self.criterion = torch.nn.CrossEntropyLoss()

    def _step(self) -> None:
        model, optimizer = self.inner.model, self.inner.optimizer
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.s.device.type, dtype=torch.bfloat16, enabled=self.s.bf16):
            loss = self.criterion(model(self.x), self.y)
        loss.backward()
        optimizer.step()

    def round(self, steps: int) -> Rate:
        self.inner.model.train()
        self._step()

        def run() -> None:
            for _ in range(steps):
                self._step()

        return _timed(run, self.s.device, steps * self.s.batch)


# ------------------------------------------------------------------ the regraft side


def _regraft_cfg(s: Setting, **extra):
    from regraft.config import Config

    return Config.from_dict(dict(
        model=s.model, weights="none", strategy="full", epochs=1000, batch_size=s.batch, img_size=s.img,
        optimizer="sgd", lr=1e-3, weight_decay=1e-4, seed=0, device=s.device.type, workers=s.workers,
        precision="bf16" if s.bf16 else "fp32", channels_last=s.channels_last, **extra,
    ), source="bench")


class RegraftTrain:
    """regraft's one loop (``loop.fit``, one epoch per round) with a ``strategies.plan`` (full).

    From JPEGs: the run's whole setup as ``regraft train`` makes it (bench/_regraft_setup.py:
    discovery, the decode cache, loaders, the plan, the stage). In memory: ``zoo.build`` +
    ``surgery.replace_head`` + ``strategies.plan`` and a stage over resident batches.
    """

    def __init__(self, s: Setting, batches: list | None = None) -> None:
        from regraft import rng
        from regraft.training import loop

        self.s, self.batches = s, batches
        rng.seed_all(0)
        self.state = loop.FitState()
        if batches is None:
            self._from_folder()
        else:
            self._in_memory()

    def _from_folder(self) -> None:
        from _regraft_setup import prepare

        cfg = _regraft_cfg(self.s, data=str(self.s.folder), decode_cache=True, cache_dir=str(self.s.tmp / f"cache-{self.s.model}"),
                           out=str(self.s.tmp / f"run-{self.s.model}"), overwrite=True)
        self.prepared = prepare(cfg, strategy="full")
        self.stage, self.procs = self.prepared.stage, self.prepared.procs
        self.loader = self.stage.train_loader

    def _in_memory(self) -> None:
        from regraft import strategies, surgery, zoo
        from regraft.freezing import apply_bn_policy
        from regraft.training import loop
        from regraft.training.numerics import StepNumerics
        from regraft.training.processes import Processes

        torch.manual_seed(0)
        model = zoo.build(self.s.model)
        head = surgery.replace_head(model, NUM_CLASSES, input_size=(3, self.s.img, self.s.img))
        model = model.to(self.s.device)
        if self.s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        plan = strategies.plan(model, strategy="full", cfg=_regraft_cfg(self.s), steps_per_epoch=100, head=head)
        numerics = StepNumerics(precision="bf16" if self.s.bf16 else "fp32", channels_last=self.s.channels_last, device=self.s.device)
        self.procs = Processes(device=self.s.device)
        self.stage = loop.Stage(name="train", model=model, weights=model, plan=plan, train_loader=None, val_loader=[],
                                last_epoch=0, numerics=numerics, after_train_mode=apply_bn_policy)
        self.loader = None

    def round(self, steps: int) -> Rate:
        from dataclasses import replace

        from regraft.training import loop

        timer = StepTimer(warmup=1, steps=steps, batch=self.s.batch, device=self.s.device)
        loader = Cycling(self.batches, 1 + steps) if self.batches is not None else Limited(self.loader, 1 + steps)
        stage = replace(self.stage, train_loader=loader, val_loader=[], last_epoch=self.state.epoch + 1)
        self.state = loop.fit(stage, procs=self.procs, state=self.state, callbacks=[timer])
        return timer.rate()

    def infer(self, steps: int) -> Rate:
        """``loop.evaluate`` (the validation pass) in memory; ``regraft eval``'s batch loop from JPEGs."""
        from regraft.training import loop

        if self.batches is not None:
            model = self.stage.model
            loop.evaluate(model, Cycling(self.batches, 1), procs=self.procs)
            return _timed(lambda: loop.evaluate(model, Cycling(self.batches, steps), procs=self.procs), self.s.device,
                          steps * self.s.batch)
        return self._infer_files(steps)

    def _infer_files(self, steps: int) -> Rate:
        # image_batches + the numerics of inference: the batch loop `regraft eval` and predict run over files
        from regraft.data import build_transforms
        from regraft.inference.images import forward_views, image_batches
        from regraft.inference.numerics import Numerics

        samples = [s.path for s in self.prepared.data.train_dataset.samples][: (1 + steps) * self.s.batch]
        transform = build_transforms(self.prepared.data.data_config, train=False)
        model = self.prepared.net.model.eval()
        numerics = Numerics("bf16" if self.s.bf16 else "fp32", channels_last=self.s.channels_last)

        def run(items):
            for batch in image_batches(items, transform, batch_size=self.s.batch):
                forward_views(numerics, model, batch)

        run(samples[: self.s.batch])
        return _timed(lambda: run(samples[self.s.batch :]), self.s.device, steps * self.s.batch)
