"""Data-loading time per epoch with and without the decode cache (issue: fast epochs).

Generates (once, under bench/data/, git-ignored) a folder of JPEG photos-like images, then times
full passes over a training DataLoader at 224 px with light augmentation and no model:

- ``tutorial``: the tutorials' pipeline (decode, RandomResizedCrop on the full image, flip,
  normalise per image) as a reference;
- ``no cache``: regraft's loader decoding every epoch;
- ``RAM cache``: regraft's loader with the decode cache in memory (epoch 1 includes the fill);
- ``disk cache``: the same with ``cache_ram=0`` (every image in the memory-mapped files);
- ``disk, next run``: a new dataset on the same disk cache (a later run: nothing decoded).

Usage:
    python bench/bench_data.py                      # 2000 images at 500x375, batch 32, workers 0 and 2
    python bench/bench_data.py --n 500 --no-write   # quick look, RESULTS.md untouched
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from regraft.data import DecodeCache, ImageDataset, build_transforms, discover, make_loader
from regraft.zoo import DataConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import append_text  # noqa: E402


def make_images(root: Path, *, n: int, width: int, height: int, classes: int = 10, seed: int = 0) -> Path:
    """``n`` JPEGs of smooth noise and shapes in ``classes`` folders (reused when already there)."""
    marker = root / ".complete"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = root / f"class_{i % classes:02d}"
        cls.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        grain = rng.normal(0, 6, (height, width, 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(cls / f"img_{i:05d}.jpg", quality=90)
    marker.touch()
    return root


class TutorialDataset(Dataset):
    """The reference pipeline of the PyTorch fine-tuning tutorials (ImageFolder-style)."""

    def __init__(self, samples, size: int) -> None:
        self.samples = samples
        self.tf = v2.Compose([
            v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.tf(img.convert("RGB")), label


def _cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of this process and of each of its children (DataLoader workers)."""
    import psutil

    me = psutil.Process()
    out = {me.pid: sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            out[child.pid] = sum(child.cpu_times()[:2])
    return out


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def time_epochs(make, epochs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per pass; ``make()`` builds the loader and its cost counts in epoch 1.

    CPU seconds add up this process (the cache-filling threads included) and the DataLoader
    workers: on a shared machine they measure the work done, where wall time also measures the
    neighbours.
    """
    times = []
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    loader = make()
    for _ in range(epochs):
        for _ in loader:
            pass
        cpu1, t1 = _cpu_seconds(), time.perf_counter()
        times.append((t1 - t0, _cpu_delta(cpu0, cpu1)))
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
    del loader
    return times


def run(args: argparse.Namespace) -> list[tuple[str, int, list[float]]]:
    w, h = (int(v) for v in args.image_size.split("x"))
    data = make_images(HERE / "data" / f"jpegs-{w}x{h}-{args.n}", n=args.n, width=w, height=h)
    splits = discover(data, val_fraction=0.1, seed=0)
    samples = splits.train + splits.val  # time every image
    tf = build_transforms(DataConfig(input_size=(3, args.size, args.size)), train=True, augment="light")
    rows = []
    for workers in args.workers:
        def loader(ds, workers=workers):
            return make_loader(ds, batch_size=args.batch_size, shuffle=True, seed=0, workers=workers)

        def tutorial(workers=workers):
            kw = {"persistent_workers": True} if workers else {}
            return DataLoader(TutorialDataset(samples, args.size), batch_size=args.batch_size, shuffle=True, num_workers=workers, **kw)

        with tempfile.TemporaryDirectory(prefix="regraft-bench-") as tmp:
            configs = [
                ("tutorial (reference)", tutorial),
                ("regraft, no cache", lambda: loader(ImageDataset(samples, tf))),
                ("regraft, RAM cache", lambda: loader(ImageDataset(samples, tf, cache=DecodeCache(cache_dir=tmp)))),
                ("regraft, disk cache", lambda: loader(ImageDataset(samples, tf, cache=DecodeCache(ram_bytes=0, cache_dir=tmp)))),
                ("regraft, disk cache, next run", lambda: loader(ImageDataset(samples, tf, cache=DecodeCache(ram_bytes=0, cache_dir=tmp)))),
            ]
            for name, make in configs:
                times = time_epochs(make, args.epochs)
                rows.append((name, workers, times))
                cells = "  ".join(f"{wall:6.2f}s wall {cpu:6.2f}s CPU" for wall, cpu in times)
                print(f"{name:30s} workers={workers}  {cells}", flush=True)
    return rows


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs ({model}), {platform.system()}, Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}"


def markdown(rows, args: argparse.Namespace, command: str, load: tuple[float, float]) -> str:
    epochs = args.epochs
    cols = " | ".join(f"epoch {e + 1} wall / CPU (s)" for e in range(epochs))
    lines = [
        "## Data loading: decode cache (`bench/bench_data.py`)",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {machine()}; load average {load[0]:.1f} before and {load[1]:.1f} after the run "
        "(a machine shared with other jobs: CPU seconds are the steadier measure)",
        f"- command: `{command}`",
        f"- data: {args.n} JPEGs at {args.image_size} (smooth noise + shapes, quality 90), training transform "
        f"at {args.size} px with light augmentation (RandomResizedCrop + flip), batch {args.batch_size}, no model: "
        "the time to iterate the DataLoader once. Epoch 1 of the cached loaders includes filling the cache. "
        "CPU = this process (cache threads included) + its DataLoader workers.",
        "",
        f"| loader | workers | {cols} | later epochs, no cache ÷ this (wall / CPU) |",
        "|" + "---|" * (epochs + 3),
    ]
    base = {wk: _later(t) for name, wk, t in rows if name == "regraft, no cache"}
    for name, workers, times in rows:
        later = _later(times)
        ratio = " / ".join(f"{b / t:.1f}x" if t > 0 else "n/a" for b, t in zip(base[workers], later, strict=True))
        cells = " | ".join(f"{wall:.2f} / {cpu:.2f}" for wall, cpu in times)
        lines.append(f"| {name} | {workers} | {cells} | {ratio} |")
    return "\n".join(lines) + "\n"


def _later(times: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean (wall, CPU) of the epochs after the first."""
    rest = times[1:] or times
    return sum(w for w, _ in rest) / len(rest), sum(c for _, c in rest) / len(rest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    p.add_argument("--image-size", default="500x375", help="WxH of the generated JPEGs (default 500x375)")
    p.add_argument("--size", type=int, default=224, help="training size (default 224)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="default 32, regraft's default")
    p.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 2], help="comma-separated worker counts (default 0,2)")
    p.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker gets; keeps the comparison per core
    load_before = os.getloadavg()[0]
    rows = run(args)
    command = "python bench/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, args, command.strip(), (load_before, os.getloadavg()[0]))
    append_text(text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
