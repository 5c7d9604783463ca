"""Part (a) of bench/time_to_accuracy.py: seconds per ``head`` epoch with and without the feature cache.

Two paths, each with the cache on and off, EfficientNet-Lite0 with its ImageNet weights at 224 px:

- ``regraft.training.run.train``: what ``regraft train --strategy head [--no-feature-cache]`` runs;
  whether it caches is read from its own messages (``feature cache: ...``);
- the library path docs/features.md describes: the run's typed setup steps, the stage
  (``training.stage``: ``features.train_with_cache``, cut + cache), then ``loop.fit`` on the cached
  features with ``save_model`` the full model.

An epoch is timed from ``on_epoch_start`` to ``on_epoch_end``: training, validation and the
checkpoint. Setup is timed from the call to the first epoch's start (data, model, weights,
decode cache and, when on, building the feature cache).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import clock, fmt, median, table

from regraft.training.loop import Callback


class EpochClock(Callback):
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first_start: float | None = None
        self.starts: list[float] = []
        self.seconds: list[float] = []
        self.messages: list[str] = []
        self.val_acc: list[float] = []
        self.train_seconds: list[float] = []  # the engine's own figure: the training steps only

    def on_epoch_start(self, epoch: int) -> None:
        now = time.perf_counter()
        self.first_start = self.first_start or now
        self.starts.append(now)

    def on_epoch_end(self, result) -> None:
        self.seconds.append(time.perf_counter() - self.starts[-1])
        self.val_acc.append(result.val_acc)
        self.train_seconds.append(result.epoch_seconds)

    def on_message(self, text: str) -> None:
        self.messages.append(text)

    @property
    def setup_seconds(self) -> float:
        return (self.first_start or time.perf_counter()) - self.t0

    def cached(self) -> bool:
        return any(m.startswith("feature cache:") for m in self.messages)


def _cfg(data: Path, weights: str, *, epochs: int, cache: bool, tmp: Path, name: str):
    from regraft.config import Config

    return Config.from_dict(dict(
        data=str(data), model="tf_efficientnet_lite0", weights=weights, strategy="head", epochs=epochs,
        img_size=224, feature_cache=cache, workers=0, cache_dir=str(tmp / f"cache-{name}"), out=str(tmp / name), overwrite=True,
    ), source="bench")


def via_train(data: Path, weights: str, *, epochs: int, cache: bool, tmp: Path) -> EpochClock:
    from regraft.training.run import train

    timer = EpochClock()
    train(_cfg(data, weights, epochs=epochs, cache=cache, tmp=tmp, name=f"train-{cache}"), callbacks=[timer])
    return timer


def via_library(data: Path, weights: str, *, epochs: int, tmp: Path) -> tuple[EpochClock, float]:
    """The run's own steps (bench/_regraft_setup.py), the stage on cached features, ``loop.fit``;
    returns the clock and the seconds to build the stage (the cache included)."""
    from _regraft_setup import prepare

    from regraft.training import loop

    cfg = _cfg(data, weights, epochs=epochs, cache=True, tmp=tmp, name="library")
    timer = EpochClock()
    with clock() as build:
        prepared = prepare(cfg, strategy="head", notify=timer.on_message)
    if prepared.stage.model is prepared.net.model:
        raise RuntimeError("the head stage did not train on cached features: " + "; ".join(timer.messages[-3:]))
    loop.fit(prepared.stage, procs=prepared.procs, run=prepared.run, callbacks=[timer])
    return timer, build.wall


def part_a(data: Path, weights: str, *, epochs: int) -> tuple[list[str], list[str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="regraft-bench-a-") as tmp_name:
        tmp = Path(tmp_name)
        off = via_train(data, weights, epochs=epochs, cache=False, tmp=tmp)
        print(f"  regraft train, --no-feature-cache: setup {off.setup_seconds:.1f}s, epochs {[round(s, 2) for s in off.seconds]}", flush=True)
        on = via_train(data, weights, epochs=epochs, cache=True, tmp=tmp)
        print(f"  regraft train, feature cache on: setup {on.setup_seconds:.1f}s, epochs {[round(s, 2) for s in on.seconds]}, "
              f"cached: {on.cached()}", flush=True)
        lib, build = via_library(data, weights, epochs=epochs, tmp=tmp)
        print(f"  library path (train_with_cache + fit): build {build:.1f}s, epochs {[round(s, 3) for s in lib.seconds]}", flush=True)
    base = median(off.seconds)
    for name, clk, extra in (
        ("`regraft train --strategy head --no-feature-cache`", off, ""),
        ("`regraft train --strategy head` (feature cache on)", on, "" if on.cached() else "no `feature cache:` message: train() did not cache"),
        ("`features.train_with_cache` + `loop.fit`", lib, f"building the stage and its cache: {build:.1f} s"),
    ):
        per = median(clk.seconds)
        rows.append([name, fmt(clk.setup_seconds, 1), " / ".join(f"{s:.3f}" for s in clk.seconds), fmt(per, 3),
                     f"{base / per:.0f}x" if per > 0 else "—", fmt(median(clk.train_seconds), 3), fmt(clk.val_acc[-1], 3), extra])
    head = ["path", "setup s", "epoch s (each)", "median epoch s", "uncached ÷ this", "of which training steps s", "val acc", "notes"]
    notes = [
        "strategy head, tf_efficientnet_lite0 with the EfficientNet-Lite0 package's ImageNet weights, 224 px, batch 32, "
        f"AdamW (regraft's head defaults), light augmentation, {epochs} epochs, CPU, no workers; data: the textures task "
        "(120 train / 45 val, bench/_tasks.py); feature_views 1 (the default: each image's un-augmented view)",
        "an epoch: training + validation + the checkpoint (on_epoch_start to on_epoch_end); setup: from the call to the "
        "first epoch (data, model, weights, decode cache, and the feature cache when built)",
    ]
    return table(head, rows), notes
