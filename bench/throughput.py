"""Training and inference images/s: regraft against the tutorials' plain PyTorch loop.

Same model (random weights: speed does not depend on them), batch, input size, optimizer (SGD,
momentum 0.9, weight decay 1e-4, head at 10x LR), worker count and JPEG folder on both sides.
Every contestant is built once, then all of them run short rounds in turn (bench/_bench_loops.py):
the shared machine's drift hits every side alike. Both loops read the loss every step, as the
tutorials do.

Rows, per model:

- ``train, from JPEGs``: regraft's pipeline (the typed steps ``regraft.training.run.train``
  runs before training: decode cache on, ``strategies.plan`` strategy full, then ``loop.fit``)
  against ``ImageFolder`` + ``transforms`` + ``DataLoader`` + the tutorial loop;
- ``train, in memory``: the same resident batches through ``loop.fit`` with a plan from
  ``strategies.plan`` and through the tutorial loop (what the training machinery itself costs);
- ``ceiling`` (GPU, or ``--ceiling``): forward + backward + step on one resident batch, nothing
  read back (the most the model can do);
- inference: ``loop.evaluate`` (the validation pass) against ``model.eval()`` +
  ``torch.no_grad()`` in memory, and ``regraft eval``'s batch loop against ``ImageFolder`` from JPEGs.

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
from _common import (  # noqa: E402
    DATA,
    Section,
    append_results,
    command_line,
    fmt,
    load,
    median,
    table,
    wait_for_quiet,
)


@dataclass
class Options:
    models: list[str]
    batch: int
    rounds: int
    steps: int
    warmup: int
    infer_steps: int
    img: int
    workers: int
    device: torch.device
    bf16: bool
    channels_last: bool
    ceiling: bool

    @property
    def images(self) -> int:
        """JPEGs needed: every round starts a new epoch, so the longest round's batches."""
        return self.batch * max(self.warmup, 1 + self.steps, 1 + self.infer_steps)


def options(args: argparse.Namespace) -> Options:
    from regraft.data import default_workers

    gpu = args.gpu
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if gpu and device.type != "cuda" and not args.smoke:
        raise SystemExit("--gpu needs a CUDA GPU (add --smoke to run the GPU path on this CPU at 64 px)")
    batch = args.batch_size or (128 if gpu else 16)
    rounds, steps, warmup = args.rounds or (5 if gpu else 3), args.steps or (10 if gpu else 6), args.warmup or (10 if gpu else 2)
    infer_steps = args.infer_steps or (10 if gpu else 3)
    if args.smoke:
        batch, rounds, steps, warmup, infer_steps = min(batch, 4), 2, 2, 1, 1
    img = args.img_size or (64 if args.smoke else 224)
    workers = args.workers if args.workers is not None else default_workers(10_000, batch_size=batch)
    models = args.models.split(",") if args.models else (["resnet50"] if gpu else ["resnet18", "tf_efficientnet_lite0"])
    bf16 = args.bf16 if args.bf16 is not None else gpu
    channels_last = args.channels_last if args.channels_last is not None else gpu
    return Options(models, batch, rounds, steps, warmup, infer_steps, img, workers, device, bf16, channels_last, args.ceiling or gpu)


Row = tuple[str, str, list[loops.Rate]]  # (what, side, one Rate per round)


def _rounds(label: str, contestants: list[tuple[str, object]], o: Options, method: str, steps: int) -> list[Row]:
    """Round-robin: each round runs every contestant once, in alternating order (ABBA ...)."""
    results: dict[str, list[loops.Rate]] = {side: [] for side, _ in contestants}
    for r in range(o.rounds):
        order = contestants if r % 2 == 0 else contestants[::-1]
        for side, c in order:
            results[side].append(getattr(c, method)(steps))
    for side, rates in results.items():
        total = sum(rates[1:], rates[0])
        print(f"    {label:24s} {side:36s} {total.describe()}", flush=True)
    return [(label, side, rates) for side, rates in results.items()]


def measure(model_name: str, o: Options, folder: Path, tmp: Path) -> list[Row]:
    s = loops.Setting(model_name, o.batch, o.img, o.device, o.bf16, o.channels_last, o.workers, folder, tmp)
    batches = loops.memory_batches(s, n_distinct=4)
    print(f"  {model_name}: building the contestants", flush=True)
    folder_pair = [("plain", loops.PlainTrain(s)), ("regraft", loops.RegraftTrain(s))]
    memory_pair = [("plain", loops.PlainTrain(s, batches)), ("regraft", loops.RegraftTrain(s, batches))]
    train_memory = memory_pair + ([("ceiling (fwd+bwd, resident batch)", loops.Ceiling(s, batches))] if o.ceiling else [])
    for _, c in folder_pair + train_memory:  # warm-up: untimed
        c.round(max(1, o.warmup - 1))
    rows = _rounds("train, from JPEGs", folder_pair, o, "round", o.steps)
    rows += _rounds("train, in memory", train_memory, o, "round", o.steps)
    rows += _rounds("inference, in memory", memory_pair, o, "infer", o.infer_steps)
    rows += _rounds("inference, from JPEGs", folder_pair, o, "infer", o.infer_steps)
    return rows


def report(results: dict[str, list[Row]]) -> list[str]:
    head = ["model", "what", "loop", "images/s", "CPU s / image", "regraft ÷ plain, images/s: all rounds (median round; range)"]
    rows = []
    for model_name, entries in results.items():
        plain = {what: rates for what, side, rates in entries if side == "plain"}
        regraft = {what: rates for what, side, rates in entries if side == "regraft"}
        for what, side, rates in entries:
            total = sum(rates[1:], rates[0])
            ratio = ""
            if side == "regraft" and what in plain:
                per_round = [a.rate / b.rate for a, b in zip(rates, plain[what], strict=True)]
                ratio = (f"**{total.rate / sum(plain[what][1:], plain[what][0]).rate:.3f}** "
                         f"({median(per_round):.3f}; {min(per_round):.2f}–{max(per_round):.2f})")
            elif side.startswith("ceiling"):
                reg = sum(regraft[what][1:], regraft[what][0])
                ratio = f"regraft ÷ ceiling: **{reg.rate / total.rate:.3f}**"
            rows.append([model_name, what, side, fmt(total.rate, 2), fmt(total.cpu_per_image, 3), ratio])
    return table(head, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the GPU benchmark: ResNet-50, bf16, channels_last, batch 128, ceiling row")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (64 px, 2 steps): checks the path runs, figures mean nothing")
    p.add_argument("--models", help="comma-separated (default resnet18,tf_efficientnet_lite0; resnet50 with --gpu)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rounds", type=int, help="rounds of every contestant in turn (default 3 CPU, 5 GPU)")
    p.add_argument("--steps", type=int, help="timed training steps per round, after one untimed (default 6 CPU, 10 GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps before the first round (default 2 CPU, 10 GPU)")
    p.add_argument("--infer-steps", type=int, help="timed inference batches per round (default 3 CPU, 10 GPU)")
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
    n = o.images
    from _tasks import many_crops

    folder = many_crops(DATA / f"crops-{n}", n=n)
    print(f"{n} JPEGs in {folder}; device {o.device}, batch {o.batch}, {o.img} px, {o.warmup} warm-up steps, {o.rounds} rounds of "
          f"1 + {o.steps} training steps and 1 + {o.infer_steps} inference batches, workers {o.workers}, bf16 {o.bf16}, "
          f"channels_last {o.channels_last}; load {load0:.1f}", flush=True)
    results = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regraft-bench-") as tmp:
        for m in o.models:
            results[m] = measure(m, o, folder, Path(tmp))
    notes = [
        f"device {o.device}; batch {o.batch}; {o.img} px; DataLoader workers {o.workers} on both sides; bf16 {o.bf16}; "
        f"channels_last {o.channels_last}; random weights; SGD momentum 0.9, weight decay 1e-4, head at 10x LR on both sides",
        f"timing: every contestant is built once, warmed up ({o.warmup} steps), then all run {o.rounds} rounds in turn "
        f"(alternating order, so that the shared machine's drift hits both sides); a round = 1 untimed + {o.steps} timed "
        f"training steps (a new epoch), or 1 untimed + {o.infer_steps} timed inference batches",
        "regraft from JPEGs: the typed steps `regraft.training.run.train` runs before training (bench/_regraft_setup.py: discovery, "
        "decode cache filled before the first step, loaders, `strategies.plan` strategy full, the stage), then one "
        "`loop.fit` epoch per round; inference from JPEGs: `inference.images.image_batches` + the numerics of inference, the batch "
        "loop of `regraft eval`; regraft in memory: `loop.fit` / `loop.evaluate` on resident batches with a plan from `strategies.plan`",
        "plain: ImageFolder + torchvision transforms (RandomResizedCrop + flip; eval: resize + centre crop) + DataLoader + "
        f"the tutorial loop (bench/_plain.py); data: {n} JPEG crops (256 px) of ten scikit-image photographs",
        "CPU s / image: CPU seconds of the process and its workers per image (includes OpenMP threads spinning while "
        "they wait for a core: on a shared machine neither measure is clean; the ratio column uses images/s)",
        f"whole run {time.perf_counter() - t0:.0f} s" + ("; SMOKE RUN: figures mean nothing" if args.smoke else ""),
    ]
    if o.device.type != "cuda" and not args.gpu:
        notes.append("GPU (ResNet-50, bf16, channels_last, `--gpu`): not measured: no GPU lent to this task")
    title = "Throughput: regraft vs the plain loop" + (" (GPU)" if o.device.type == "cuda" else " (CPU)") + (" — smoke" if args.smoke else "")
    append_results(Section(title, command_line("throughput.py", argv), load0, notes, report(results)),
                   write=not args.no_write and not args.smoke)
    print(f"load now {load():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
