"""The timed loops of bench/throughput.py: each returns a :class:`Rate` for one side of one row."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import _plain as plain
import torch
from _common import _cpu_now

from regraft.engine import Callback

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

    def describe(self) -> str:
        return f"{self.rate:8.2f} images/s  {self.cpu_per_image:.3f} CPU s/image  ({self.images} images in {self.wall:.1f} s)"


class StepTimer(Callback):
    """Clocks from the end of step ``warmup`` to the end of step ``warmup + steps`` (wall and CPU)."""

    def __init__(self, *, warmup: int, steps: int, batch: int, device: torch.device) -> None:
        self.warmup, self.steps, self.batch, self.device = warmup, steps, batch, device
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None

    def tick(self, step: int) -> None:  # step counted from 0
        if step == self.warmup - 1 or step == self.warmup + self.steps - 1:
            _sync(self.device)
            mark = (time.perf_counter(), _cpu_now())
            if step == self.warmup - 1:
                self.start = mark
            else:
                self.end = mark

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        if epoch == 1:
            self.tick(step - 1)

    def rate(self) -> Rate:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the loop ran fewer than {self.warmup + self.steps} steps")
        return Rate(self.steps * self.batch, self.end[0] - self.start[0], self.end[1] - self.start[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Cycling:
    """``total`` batches drawn in turn from a few resident ones (a loader without data loading)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], total: int) -> None:
        self.batches, self.total = batches, total

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.total))


def memory_batches(folder: Path, *, n_distinct: int, batch: int, img: int, device: torch.device, model_name: str):
    """A few training batches (tutorial transforms), decoded once and moved to ``device``."""
    mean, std = plain.norm_for(model_name)
    loader, _, _ = plain.loaders(folder, img=img, mean=mean, std=std, batch_size=batch, workers=0)
    out = []
    for x, y in loader:
        if len(out) == n_distinct:
            break
        if len(y) == batch:
            out.append((x.to(device), y.to(device)))
    return out


def _plain_model(model_name: str, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = plain.build(model_name, NUM_CLASSES).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _opts(device: torch.device, bf16: bool, channels_last: bool) -> plain.LoopOptions:
    return plain.LoopOptions(device=device, bf16=bf16, channels_last=channels_last)


def plain_folder_train(model_name, folder, *, workers, tmp, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    mean, std = plain.norm_for(model_name)
    loader, _, _ = plain.loaders(folder, img=img, mean=mean, std=std, batch_size=batch, workers=workers, pin=device.type == "cuda")
    model = _plain_model(model_name, device, channels_last)
    timer = StepTimer(warmup=warmup, steps=steps, batch=batch, device=device)
    plain.train_epoch(model, loader, plain.sgd(model), _opts(device, bf16, channels_last), on_step=timer.tick, max_steps=warmup + steps)
    return timer.rate()


def plain_memory_train(model_name, batches, *, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    model = _plain_model(model_name, device, channels_last)
    timer = StepTimer(warmup=warmup, steps=steps, batch=batch, device=device)
    plain.train_epoch(model, Cycling(batches, warmup + steps), plain.sgd(model), _opts(device, bf16, channels_last), on_step=timer.tick)
    return timer.rate()


def ceiling_train(model_name, batches, *, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    """Forward, backward and step on one resident batch; nothing read back until the end."""
    model = _plain_model(model_name, device, channels_last)
    optimizer = plain.sgd(model)
    criterion = torch.nn.CrossEntropyLoss()
    x, y = batches[0]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    w0, c0 = time.perf_counter(), _cpu_now()
    for _ in range(steps):
        step()
    _sync(device)
    return Rate(steps * batch, time.perf_counter() - w0, _cpu_now() - c0)


def _regraft_cfg(model_name: str, *, batch: int, img: int, device: torch.device, bf16: bool, channels_last: bool, **extra):
    from regraft.config import Config

    return Config.from_dict(dict(
        model=model_name, weights="none", strategy="full", epochs=1, batch_size=batch, img_size=img,
        optimizer="sgd", lr=1e-3, weight_decay=1e-4, seed=0, device=device.type,
        precision="bf16" if bf16 else "fp32", channels_last=channels_last, **extra,
    ), source="bench")


def regraft_folder_train(model_name, folder, *, workers, tmp, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    """``regraft.train.train``: the whole pipeline, decode cache on, strategy full."""
    from regraft.train import train

    cfg = _regraft_cfg(model_name, batch=batch, img=img, device=device, bf16=bf16, channels_last=channels_last,
                       data=str(folder), workers=workers, decode_cache=True, cache_dir=str(tmp / f"cache-{model_name}"),
                       out=str(tmp / f"run-{model_name}"), overwrite=True)
    timer = StepTimer(warmup=warmup, steps=steps, batch=batch, device=device)
    train(cfg, callbacks=[timer])
    return timer.rate()


def _regraft_model(model_name: str, *, img: int, device: torch.device, bf16: bool, channels_last: bool, batch: int, steps: int):
    from regraft import engine, strategies, surgery, zoo

    accelerator = engine.make_accelerator(device=device.type, precision="bf16" if bf16 else "fp32")
    torch.manual_seed(0)
    model = zoo.build(model_name)
    head = surgery.replace_head(model, NUM_CLASSES, input_size=(3, img, img))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = _regraft_cfg(model_name, batch=batch, img=img, device=device, bf16=bf16, channels_last=channels_last)
    plan = strategies.plan(model, strategy="full", cfg=cfg, steps_per_epoch=steps, head=head)
    model, plan.optimizer = accelerator.prepare(model, plan.optimizer)
    return model, plan, accelerator


def regraft_memory_train(model_name, batches, *, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    """``regraft.engine.fit`` with a ``strategies.plan`` (full), on resident batches."""
    from regraft import engine
    from regraft.freezing import apply_bn_policy

    model, plan, accelerator = _regraft_model(model_name, img=img, device=device, bf16=bf16, channels_last=channels_last,
                                              batch=batch, steps=warmup + steps)
    timer = StepTimer(warmup=warmup, steps=steps, batch=batch, device=device)
    engine.fit(model, plan, Cycling(batches, warmup + steps), Cycling(batches, 1), epochs=1, accelerator=accelerator,
               channels_last=channels_last, callbacks=[timer], after_train_mode=apply_bn_policy)
    return timer.rate()


def _timed(fn, device: torch.device, images: int) -> Rate:
    _sync(device)
    w0, c0 = time.perf_counter(), _cpu_now()
    fn()
    _sync(device)
    return Rate(images, time.perf_counter() - w0, _cpu_now() - c0)


def plain_memory_infer(model_name, batches, *, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    model, opts = _plain_model(model_name, device, channels_last), _opts(device, bf16, channels_last)
    plain.evaluate(model, Cycling(batches, warmup), opts)
    return _timed(lambda: plain.evaluate(model, Cycling(batches, steps), opts), device, steps * batch)


def regraft_memory_infer(model_name, batches, *, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    """``regraft.engine.evaluate`` (the validation pass) on resident batches."""
    from regraft import engine

    model, _, accelerator = _regraft_model(model_name, img=img, device=device, bf16=bf16, channels_last=channels_last, batch=batch, steps=1)
    engine.evaluate(model, Cycling(batches, warmup), accelerator=accelerator, channels_last=channels_last)
    return _timed(lambda: engine.evaluate(model, Cycling(batches, steps), accelerator=accelerator, channels_last=channels_last),
                  device, steps * batch)


def plain_folder_infer(model_name, folder, *, workers, tmp, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    mean, std = plain.norm_for(model_name)
    _, loader, _ = plain.loaders(folder, img=img, mean=mean, std=std, batch_size=batch, workers=workers,
                                 pin=device.type == "cuda", val="train")
    model, opts = _plain_model(model_name, device, channels_last), _opts(device, bf16, channels_last)
    plain.evaluate(model, loader, opts, max_steps=warmup)
    return _timed(lambda: plain.evaluate(model, loader, opts, max_steps=steps), device, steps * batch)


def regraft_folder_infer(model_name, folder, *, workers, tmp, batch, steps, warmup, img, device, bf16, channels_last) -> Rate:
    """``regraft.inference.predict`` on the run trained by :func:`regraft_folder_train` (what
    ``regraft predict`` does): the time for ``steps`` batches is predict(warm-up + timed files)
    minus predict(warm-up files), so loading the run cancels out."""
    from regraft.inference import list_images, predict

    run = tmp / f"run-{model_name}"
    files = list_images(folder / "train")
    warm, timed = files[: warmup * batch], files[: (warmup + steps) * batch]
    dev = device.type
    first = _timed(lambda: predict(run, warm, batch_size=batch, device=dev), device, len(warm))
    both = _timed(lambda: predict(run, timed, batch_size=batch, device=dev), device, len(timed))
    return Rate(len(timed) - len(warm), both.wall - first.wall, both.cpu - first.cpu)
