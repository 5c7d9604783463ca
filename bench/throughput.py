"""Training and inference images/s: regraft against the tutorials' plain PyTorch loop.

Same model (random weights: speed does not depend on them), batch, input size, optimizer (SGD,
momentum 0.9, weight decay 1e-4, head at 10x LR), worker count and JPEG folder on both sides.
Steps after the warm-up are timed from the end of the warm-up's last step to the end of the last
timed step (both loops read the loss every step, as the tutorials do).

Rows, per model:

- ``from JPEGs``: regraft's real pipeline (``regraft.train.train``, strategy ``full``, decode
  cache on) against ``ImageFolder`` + ``transforms`` + ``DataLoader`` + the tutorial loop;
- ``in memory``: the same batches, already decoded and on the device, through
  ``regraft.engine.fit`` with a plan from ``regraft.strategies.plan`` against the tutorial loop
  (what the training machinery itself costs);
- ``ceiling`` (GPU, or ``--ceiling``): forward + backward + step on one resident batch, no loss
  read-back (the most the model can do);
- inference: ``regraft.engine.evaluate`` (the validation pass) against ``model.eval()`` +
  ``torch.no_grad()``, in memory and from JPEGs.

Usage:
    python bench/throughput.py                       # CPU: resnet18 and tf_efficientnet_lite0 at 224 px
    python bench/throughput.py --gpu                 # ResNet-50, bf16, channels_last, batch 128 (needs a GPU)
    python bench/throughput.py --gpu --smoke         # the GPU path at 64 px for a few steps (runs on a CPU)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_loops as loops  # noqa: E402
from _common import DATA, Section, append_results, command_line, fmt, load, table, wait_for_quiet  # noqa: E402


@dataclass
class Options:
    models: list[str]
    batch: int
    steps: int
    warmup: int
    img: int
    workers: int
    device: torch.device
    bf16: bool
    channels_last: bool
    ceiling: bool
    infer_batches: int


def options(args: argparse.Namespace) -> Options:
    from regraft.data import default_workers

    gpu = args.gpu
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if gpu and device.type != "cuda" and not args.smoke:
        raise SystemExit("--gpu needs a CUDA GPU (add --smoke to run the GPU path on this CPU at 64 px)")
    batch = args.batch_size or (128 if gpu else 16)
    steps, warmup = args.steps or (50 if gpu else 20), args.warmup or (10 if gpu else 3)
    if args.smoke:
        batch, steps, warmup = min(batch, 4), 2, 1
    img = args.img_size or (64 if args.smoke else 224)
    n = batch * (steps + warmup)
    workers = args.workers if args.workers is not None else default_workers(n, batch_size=batch)
    models = args.models.split(",") if args.models else (["resnet50"] if gpu else ["resnet18", "tf_efficientnet_lite0"])
    bf16 = args.bf16 if args.bf16 is not None else gpu
    channels_last = args.channels_last if args.channels_last is not None else gpu
    return Options(models, batch, steps, warmup, img, workers, device, bf16, channels_last, args.ceiling or gpu,
                   args.infer_batches or (20 if gpu else 8) if not args.smoke else 2)


def measure(model_name: str, o: Options, folder: Path, tmp: Path) -> list[tuple[str, str, loops.Rate]]:
    """Every row for one model, alternating plain and regraft so that load drifts hit both."""
    rows: list[tuple[str, str, loops.Rate]] = []
    kw = dict(batch=o.batch, steps=o.steps, warmup=o.warmup, img=o.img, device=o.device, bf16=o.bf16, channels_last=o.channels_last)
    say = lambda what, r: print(f"  {model_name:24s} {what:34s} {r.describe()}", flush=True)  # noqa: E731
    for side, fn in (("plain", loops.plain_folder_train), ("regraft", loops.regraft_folder_train)):
        r = fn(model_name, folder, workers=o.workers, tmp=tmp, **kw)
        rows.append(("train, from JPEGs", side, r))
        say(f"train from JPEGs, {side}", r)
    batches = loops.memory_batches(folder, n_distinct=min(8, o.steps + o.warmup), batch=o.batch, img=o.img, device=o.device, model_name=model_name)
    for side, fn in (("regraft", loops.regraft_memory_train), ("plain", loops.plain_memory_train)):
        r = fn(model_name, batches, **kw)
        rows.append(("train, in memory", side, r))
        say(f"train in memory, {side}", r)
    if o.ceiling:
        r = loops.ceiling_train(model_name, batches, **kw)
        rows.append(("train, in memory", "ceiling (fwd+bwd, resident batch)", r))
        say("train ceiling", r)
    ikw = dict(kw, steps=o.infer_batches, warmup=max(1, o.warmup // 2))
    for side, fn in (("plain", loops.plain_memory_infer), ("regraft", loops.regraft_memory_infer)):
        r = fn(model_name, batches, **ikw)
        rows.append(("inference, in memory", side, r))
        say(f"inference in memory, {side}", r)
    for side, fn in (("regraft", loops.regraft_folder_infer), ("plain", loops.plain_folder_infer)):
        r = fn(model_name, folder, workers=o.workers, tmp=tmp, **ikw)
        rows.append(("inference, from JPEGs", side, r))
        say(f"inference from JPEGs, {side}", r)
    return rows


def report(results: dict[str, list[tuple[str, str, loops.Rate]]], o: Options) -> list[str]:
    body = []
    head = ["model", "what", "loop", "images/s", "CPU s / image", "regraft ÷ plain (images/s)"]
    rows = []
    for model_name, entries in results.items():
        plain = {what: r for what, side, r in entries if side == "plain"}
        for what, side, r in entries:
            ratio = ""
            if side == "regraft" and what in plain:
                ratio = f"{r.rate / plain[what].rate:.3f}"
            elif side.startswith("ceiling"):
                ratio = f"(regraft in memory ÷ ceiling: {_regraft(entries, 'train, in memory') / r.rate:.3f})"
            rows.append([model_name, what, side, fmt(r.rate, 2), fmt(r.cpu_per_image, 3), ratio])
    body += table(head, rows)
    return body


def _regraft(entries, what: str) -> float:
    return next(r.rate for w, side, r in entries if w == what and side == "regraft")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the GPU benchmark: ResNet-50, bf16, channels_last, batch 128, ceiling row")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (64 px, 2 steps): checks the path runs, figures mean nothing")
    p.add_argument("--models", help="comma-separated (default resnet18,tf_efficientnet_lite0; resnet50 with --gpu)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="timed training steps (default 20 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3 CPU, 10 GPU)")
    p.add_argument("--infer-batches", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers on both sides (default: regraft's choice for this machine)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--ceiling", action="store_true")
    p.add_argument("--wait-load", type=float, default=None, help="wait (up to 3 min) for the 1-min load average to drop under this")
    p.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    o = options(args)
    load0 = wait_for_quiet(args.wait_load)
    n = o.batch * (o.steps + o.warmup)
    from _tasks import many_crops

    folder = many_crops(DATA / f"crops-{n}", n=n)
    print(f"{n} JPEGs in {folder}; device {o.device}, batch {o.batch}, {o.img} px, {o.warmup} warm-up + {o.steps} timed steps, "
          f"workers {o.workers}, bf16 {o.bf16}, channels_last {o.channels_last}; load {load0:.1f}", flush=True)
    results = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regraft-bench-") as tmp:
        for m in o.models:
            results[m] = measure(m, o, folder, Path(tmp))
    notes = [
        f"device {o.device}; batch {o.batch}; {o.img} px; {o.warmup} warm-up steps, then {o.steps} timed training steps and "
        f"{o.infer_batches} timed inference batches; DataLoader workers {o.workers} on both sides; bf16 {o.bf16}; "
        f"channels_last {o.channels_last}; random weights; SGD momentum 0.9, weight decay 1e-4, head at 10x LR on both sides",
        f"data: {n} JPEG crops (256 px) of ten scikit-image photographs; regraft: decode cache on (filled before the first step), "
        "light augmentation (RandomResizedCrop + flip) as in the tutorial's transforms",
        "CPU s / image: CPU seconds of the process and its workers per image; on a shared machine the steadier measure",
        f"whole run {time.perf_counter() - t0:.0f} s" + ("; SMOKE RUN: figures mean nothing" if args.smoke else ""),
    ]
    if o.device.type != "cuda" and not args.gpu:
        notes.append("GPU (ResNet-50, bf16, channels_last, `--gpu`): not measured: no GPU lent to this task")
    title = "Throughput: regraft vs the plain loop" + (" (GPU)" if o.device.type == "cuda" else " (CPU)") + (" — smoke" if args.smoke else "")
    append_results(Section(title, command_line("throughput.py", argv), load0, notes, report(results, o)),
                   write=not args.no_write and not args.smoke)
    print(f"load now {load():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
