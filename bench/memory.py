"""Peak resident memory: ``regraft train`` against the plain loop, and the caches past their RAM budget.

Each job runs in a fresh process (no DataLoader workers, so one process holds everything). Its
memory is sampled every 20 ms from ``/proc/PID/status``: ``VmRSS`` (all resident pages),
``RssAnon`` (the process's own memory: tensors, Python objects, the RAM caches) and ``RssFile``
(file pages mapped in: shared libraries, and the caches' memory-mapped spill files, which the
kernel can drop at any time); the peak RSS the kernel recorded (``ru_maxrss`` from ``wait4``)
is the headline figure.

1. The same job both ways: ResNet-18 (random weights), 224 px, batch 32, SGD, one epoch over
   the same JPEG folder: the tutorial loop (bench/_plain.py), ``regraft train --strategy full``
   with the decode cache (the default), and without it.
2. The caches past their budget in a default run: ``regraft train`` with its defaults (lp-ft: the decode cache,
   and the feature cache for the linear probe) on EfficientNet-Lite0 with its ImageNet weights,
   one fine-tuning epoch, on a folder whose decoded pixels are larger than ``--cache-ram``:
   without the decode cache, with the default budget (everything in RAM), and with a budget of a
   third of the decoded pixels (the rest memory-mapped from disk, the features too).
3. The caches alone: the same three settings with ``--strategy head`` on 2000 images, where
   training runs on the cached features and the caches, not the activations, are what grows.

Usage:
    python bench/memory.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, Section, append_results, command_line, fmt, table, wait_for_quiet  # noqa: E402

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
FIELDS = ("VmRSS", "RssAnon", "RssFile")


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in FIELDS:
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_memory(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd``; peak bytes of each field, ``ru_maxrss`` and wall seconds."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.PIPE)
    peaks = dict.fromkeys(FIELDS, 0)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        for key, value in _status(proc.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return {**peaks, "maxrss": usage.ru_maxrss * 1024, "wall": time.perf_counter() - t0}


def _mib(n: float) -> str:
    return fmt(n / 2**20, 0)


def _third_of_pixels(n_images: int) -> tuple[int, str]:
    """Bytes of ``n_images`` decoded 256 px crops, and a --cache-ram budget of a third of that."""
    decoded = n_images * 256 * 256 * 3
    return decoded, f"{max(1, decoded // 3 // 2**20)}M"


def same_job(folder: Path, tmp: Path) -> list[tuple[str, dict]]:
    job = ["--model", "resnet18", "--epochs", "1", "--batch-size", "32", "--img-size", "224", "--workers", "0"]
    regraft = [str(BIN / "regraft"), "train", str(folder), *job, "--weights", "none", "--strategy", "full", "--optimizer", "sgd",
               "--lr", "1e-3", "--weight-decay", "1e-4", "--overwrite", "-q", "--set", f"cache_dir={tmp / 'cache'}", "--out"]
    jobs = [
        ("plain tutorial loop (bench/_plain.py)", [sys.executable, str(HERE / "_plain.py"), str(folder), *job]),
        ("`regraft train --strategy full` (decode cache on, the default; auto numerics: bf16 + channels_last on AMX)", [*regraft, str(tmp / "run-a")]),
        ("`regraft train --strategy full --precision fp32 --no-channels-last` (the plain loop's numerics)",
         [*regraft, str(tmp / "run-e"), "--precision", "fp32", "--no-channels-last"]),
        ("`regraft train --strategy full --no-decode-cache`", [*regraft, str(tmp / "run-b"), "--no-decode-cache"]),
        ("plain tutorial loop, again (drift check)", [sys.executable, str(HERE / "_plain.py"), str(folder), *job]),
    ]
    return _run_all(jobs)


def over_budget(folder: Path, tmp: Path, budget: str, weights: str) -> list[tuple[str, dict]]:
    base = [str(BIN / "regraft"), "train", str(folder), "--model", "tf_efficientnet_lite0", "--weights", weights, "--epochs", "1",
            "--workers", "0", "--overwrite", "-q"]
    jobs = [
        ("defaults, `--no-decode-cache`", [*base, "--out", str(tmp / "run-c"), "--no-decode-cache", "--set", f"cache_dir={tmp / 'c'}"]),
        ("defaults (caches in RAM: default budget)", [*base, "--out", str(tmp / "run-d"), "--set", f"cache_dir={tmp / 'd'}"]),
        (f"defaults, `--cache-ram {budget}` (past the budget: memory-mapped)",
         [*base, "--out", str(tmp / "run-e"), "--cache-ram", budget, "--set", f"cache_dir={tmp / 'e'}"]),
    ]
    return _run_all(jobs)


def caches_alone(folder: Path, tmp: Path, budget: str, weights: str) -> list[tuple[str, dict]]:
    """Strategy head: training runs on cached features, so the caches are what the memory holds."""
    base = [str(BIN / "regraft"), "train", str(folder), "--model", "tf_efficientnet_lite0", "--weights", weights, "--strategy", "head",
            "--epochs", "1", "--workers", "0", "--overwrite", "-q"]
    jobs = [
        ("`--strategy head --no-decode-cache`", [*base, "--out", str(tmp / "run-f"), "--no-decode-cache", "--set", f"cache_dir={tmp / 'f'}"]),
        ("`--strategy head` (default budget: both caches in RAM)", [*base, "--out", str(tmp / "run-g"), "--set", f"cache_dir={tmp / 'g'}"]),
        (f"`--strategy head --cache-ram {budget}` (past the budget)",
         [*base, "--out", str(tmp / "run-h"), "--cache-ram", budget, "--set", f"cache_dir={tmp / 'h'}"]),
    ]
    return _run_all(jobs)


def _run_all(jobs: list[tuple[str, list[str]]]) -> list[tuple[str, dict]]:
    out = []
    for name, cmd in jobs:
        m = peak_memory(cmd)
        print(f"  {name}: peak RSS {_mib(m['maxrss'])} MiB (anon {_mib(m['RssAnon'])}, file {_mib(m['RssFile'])}) in {m['wall']:.0f}s",
              flush=True)
        out.append((name, m))
    return out


def _rows(results: list[tuple[str, dict]], base: dict) -> list[list[str]]:
    return [[name, _mib(m["maxrss"]), _mib(m["RssAnon"]), _mib(m["RssFile"]), f"{m['maxrss'] / base['maxrss']:.2f}", fmt(m["wall"], 0)]
            for name, m in results]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="JPEGs in part 1's folder (default 256: 8 batches)")
    p.add_argument("--big", type=int, default=320, help="JPEGs in part 2's folder (default 320)")
    p.add_argument("--huge", type=int, default=2000, help="JPEGs in part 3's folder (default 2000)")
    p.add_argument("--part", default="1,2,3")
    p.add_argument("--wait-load", type=float, default=None)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from _tasks import many_crops

    from regraft.demo import demo_weights_path

    load0 = wait_for_quiet(args.wait_load)
    head = ["job", "peak RSS MiB (ru_maxrss)", "peak RssAnon MiB", "peak RssFile MiB", "÷ first row", "wall s"]
    body: list[str] = []
    notes = ["one process per job, no DataLoader workers; RssAnon is the process's own memory, RssFile the mapped files "
             "(libraries, and the caches' spill files, which the kernel reclaims under pressure)"]
    with tempfile.TemporaryDirectory(prefix="regraft-mem-") as tmp_name:
        tmp = Path(tmp_name)
        if "1" in args.part:
            folder = many_crops(DATA / f"crops-{args.images}", n=args.images)
            res = same_job(folder, tmp)
            body += ["**The same job** (ResNet-18, random weights, 224 px, batch 32, SGD, 1 epoch, "
                     f"{args.images} JPEGs at 256 px):", "", *table(head, _rows(res, res[0][1])), ""]
        if "2" in args.part:
            folder = many_crops(DATA / f"crops-{args.big}", n=args.big, seed=2)
            decoded, budget = _third_of_pixels(args.big)
            res = over_budget(folder, tmp, budget, str(demo_weights_path()))
            body += [f"**Caches past their budget** (`regraft train` defaults: lp-ft, EfficientNet-Lite0 with ImageNet weights, "
                     f"224 px, batch 32, `--epochs 1`; {args.big} JPEGs at 256 px = {decoded / 2**20:.0f} MiB of decoded pixels; "
                     f"`--cache-ram {budget}`):", "", *table(head, _rows(res, res[0][1])), ""]
        if "3" in args.part:
            folder = many_crops(DATA / f"crops-{args.huge}", n=args.huge, seed=3)
            decoded, budget = _third_of_pixels(args.huge)
            res = caches_alone(folder, tmp, budget, str(demo_weights_path()))
            body += [f"**The caches alone** (`--strategy head`: training runs on cached features, so the caches are what grows; "
                     f"EfficientNet-Lite0, 224 px, `--epochs 1`; {args.huge} JPEGs at 256 px = {decoded / 2**20:.0f} MiB of decoded "
                     f"pixels + {args.huge * 1280 * 4 / 2**20:.0f} MiB of features; `--cache-ram {budget}`):", "",
                     *table(head, _rows(res, res[0][1]))]
    append_results(Section("Memory: peak RSS (`bench/memory.py`)", command_line("memory.py", argv), load0, notes, body),
                   write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
