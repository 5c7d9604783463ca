"""Start-up: ``regraft --help`` wall time, and ``regraft train``'s time to its first batch.

- ``regraft --help`` and ``regraft train --help``: hyperfine when it is installed (``apt-get
  install hyperfine``), else the median of repeated runs; ``python -c pass`` and
  ``python -c "import torch"`` as references.
- Time to first batch: ``regraft train`` runs in a fresh process with a hook on its progress
  callbacks; the time from launching the process to the end of the first training step (the
  first probe step for lp-ft), with the time each announcement appeared. The plain tutorial loop
  (bench/_plain.py) is timed the same way for reference. The decode cache is given an empty
  folder, as on a first run.

Usage:
    python bench/startup.py
"""

from __future__ import annotations

import time

T_WALL = time.time()  # the worker's own start, before any import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, Section, append_results, command_line, fmt, median, table, wait_for_quiet  # noqa: E402

BIN = Path(sys.executable).parent
MILESTONES = ("data", "weights", "surgery", "feature cache", "linear probe on cached features")


def _hyperfine(commands: list[list[str]], runs: int) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hf.json"
        subprocess.run(["hyperfine", "--warmup", "2", "--runs", str(runs), "-N", "--export-json", str(out),
                        *map(shlex.join, commands)], check=True, capture_output=True)
        results = json.loads(out.read_text())["results"]
    return [(r["median"], r["stddev"] or 0.0) for r in results]


def _repeat(commands: list[list[str]], runs: int) -> list[tuple[float, float]]:
    import statistics

    out = []
    for cmd in commands:
        times = []
        for i in range(runs + 2):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            if i >= 2:  # two warm-up runs, as with hyperfine
                times.append(time.perf_counter() - t0)
        out.append((median(times), statistics.pstdev(times)))
    return out


def help_times(runs: int) -> tuple[list[list[str]], str]:
    regraft = str(BIN / "regraft")
    commands = [[regraft, "--help"], [regraft, "train", "--help"], [sys.executable, "-c", "pass"], [sys.executable, "-c", "import torch"]]
    tool = "hyperfine" if shutil.which("hyperfine") else "repeated subprocess runs"
    timings = _hyperfine(commands, runs) if tool == "hyperfine" else _repeat(commands, runs)
    names = ["`regraft --help`", "`regraft train --help`", "`python -c pass` (reference)", "`python -c 'import torch'` (reference)"]
    return [[n, f"{m * 1000:.0f} ± {s * 1000:.0f}"] for n, (m, s) in zip(names, timings, strict=True)], tool


# ------------------------------------------------------------------ time to first batch


def _first_batch_worker(out: Path, argv: list[str]) -> None:
    """Run ``argv`` through regraft's CLI (or the plain loop) and stop at the end of the first step."""
    events: list[tuple[str, float]] = []

    def done() -> None:
        events.append(("first step done", time.time()))
        out.write_text(json.dumps({"start": T_WALL, "events": events}))
        os._exit(0)

    if argv[0] == "plain":
        import _plain

        events.append(("torch, torchvision imported", time.time()))
        mean, std = _plain.norm_for(argv[2])
        loader, _, classes = _plain.loaders(argv[1], img=224, mean=mean, std=std, batch_size=32, workers=0)
        events.append(("data: ImageFolder", time.time()))
        model = _plain.build(argv[2], len(classes), weights=argv[3])
        events.append(("model built, weights loaded", time.time()))
        _plain.train_epoch(model, loader, _plain.sgd(model), _plain.LoopOptions(), on_step=lambda step: done())
        return
    import regraft.cli._progress as progress

    original = progress.make_progress

    def make_progress(quiet: bool = False):
        from regraft.training.loop import Callback

        class FirstStep(Callback):
            def on_message(self, text: str) -> None:
                # the milestones only (not the load report's or the plan's table lines), first time each
                name = text.split(":")[0]
                if name in MILESTONES and name not in {e[0] for e in events}:
                    events.append((name, time.time()))

            def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
                done()

        events.append(("torch imported, command parsed", time.time()))
        return [*original(quiet), FirstStep()]

    progress.make_progress = make_progress
    from regraft.cli.main import main

    main(argv)
    raise SystemExit("the run ended without a training step")


def first_batch(label: str, argv: list[str]) -> tuple[float, list[tuple[str, float]]]:
    with tempfile.TemporaryDirectory(prefix="regraft-startup-") as tmp:
        out = Path(tmp) / "events.json"
        argv = [a.replace("{tmp}", tmp) for a in argv]
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--first-batch-worker", str(out), "--", *argv], capture_output=True, text=True)
        if not out.is_file():
            raise SystemExit(f"{label}: no first step ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        data = json.loads(out.read_text())
    events = [("python started", data["start"] - t0)] + [(name, t - t0) for name, t in data["events"]]
    print(f"  {label}: first step done {events[-1][1]:.1f}s after launch", flush=True)
    return events[-1][1], events


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="hyperfine runs per --help command")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per time-to-first-batch job (default 3)")
    p.add_argument("--wait-load", type=float, default=None)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--first-batch-worker", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.first_batch_worker:
        _first_batch_worker(Path(args.first_batch_worker), [a for a in rest if a != "--"])
        return 0
    from _tasks import textures

    from regraft.demo import demo_weights_path

    load0 = wait_for_quiet(args.wait_load)
    help_rows, tool = help_times(args.runs)
    for row in help_rows:
        print(f"  {row[0]}: {row[1]} ms", flush=True)
    data, weights = str(textures(DATA / "task-textures")), str(demo_weights_path())
    common = [data, "--model", "tf_efficientnet_lite0", "--weights", weights, "--set", "cache_dir={tmp}/cache", "--out", "{tmp}/run", "-q"]
    jobs = [
        ("`regraft train DATA --model tf_efficientnet_lite0 --weights W` (lp-ft: first probe step)", ["train", *common]),
        ("the same with `--strategy full` (first training step)", ["train", *common, "--strategy", "full"]),
        ("plain tutorial loop (bench/_plain.py), same model and weights", ["plain", data, "tf_efficientnet_lite0", weights]),
    ]
    rows = []
    for label, job in jobs:
        runs = [first_batch(label, job) for _ in range(args.repeats)]
        totals = [total for total, _ in runs]
        events = runs[totals.index(median(totals))][1] if args.repeats % 2 else runs[0][1]
        steps = "; ".join(f"{name} {t:.1f}" for name, t in events)
        rows.append([label, fmt(median(totals), 1), " / ".join(f"{t:.1f}" for t in totals), steps])
    body = [*table(["command", "ms (median ± sd)"], help_rows), "",
            *table(["time to first batch", "s after launch (median)", "each run", "milestones of the median run (s after launch)"], rows)]
    notes = [
        f"`--help` timings: {tool}, {args.runs} runs after 2 warm-up runs, entry point {BIN / 'regraft'}",
        f"time to first batch: {args.repeats} fresh processes per job, the textures task (120 train / 45 val JPEGs at 256 px), 224 px, batch 32, no workers, an empty "
        "decode-cache folder; the lp-ft run's first step comes after caching the features (one forward pass over train + val)",
    ]
    append_results(Section("Start-up (`bench/startup.py`)", command_line("startup.py", argv), load0, notes, body), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
