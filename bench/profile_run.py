"""Where ``regraft train``'s wall time goes on a small task: python start, imports, discovery, decode,
model build, weights load, feature extraction, probe, fine-tuning, evaluation, report drawing.

The run is what a user types (``regraft train DATA --model tf_efficientnet_lite0 --weights W
--out RUN --seed 0``, defaults, an empty ``REGRAFT_CACHE_DIR``) in a fresh process, in-process
through ``regraft.cli.main.main`` with bench/_phases.py's :class:`PhaseTimer` hooked onto
regraft's public steps from outside (no regraft code is changed). The phases add up to the wall
time of the process up to the end of ``regraft train``. The task's test split is not handed over
(bench/small_data.py's view of it).

``--cprofile`` runs the same under cProfile (which slows Python-heavy parts, so its phase figures
are not comparable) and adds the functions with the most own time.

Usage:
    python bench/profile_run.py                       # photos task, one run, appended to RESULTS.md
    python bench/profile_run.py --task digits --repeats 3 --no-write
    python bench/profile_run.py --cprofile --no-write
"""

from __future__ import annotations

import time

T_SCRIPT = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # the checkout being measured

MODEL = "tf_efficientnet_lite0"


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): the interpreter's own start."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK") - (time.perf_counter() - T_SCRIPT))
    except (OSError, ValueError, IndexError):
        return 0.0


def child(data: str, weights: str, out: str, seed: int, result: str, *, cprofile: bool) -> int:
    """One profiled ``regraft train`` in this (fresh) process; the phase table to ``result``."""
    python_start = _process_age()
    from _phases import PhaseTimer

    timer = PhaseTimer()
    timer.start()
    timer.seconds["other"] += time.perf_counter() - T_SCRIPT  # this script's own start
    timer.install()
    from regraft.cli.main import main as cli

    argv = ["train", data, "--model", MODEL, "--weights", weights, "--out", out, "--seed", str(seed)]
    profiler = None
    if cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    rc = cli(argv)
    if profiler is not None:
        profiler.disable()
    timer.stop()
    head, rows = timer.table(python_start=python_start)
    payload = {"rc": rc, "head": head, "rows": rows, "missing": timer.missing, "argv": argv,
               "seconds": dict(timer.seconds) | {"python start": python_start},
               "cpu": dict(timer.cpu) | {"python start": python_start}, "calls": dict(timer.calls)}
    if profiler is not None:
        payload["top"] = _top_functions(profiler)
    summary = Path(out) / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        payload["run"] = {k: s.get(k) for k in ("strategy", "epochs", "probe_epochs", "best_epoch", "best_val_acc", "n_train", "n_val")}
    Path(result).write_text(json.dumps(payload))
    return rc


def _top_functions(profiler, n: int = 25) -> list[str]:
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(n)
    lines = buf.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return [ln.replace(str(HERE.parent), ".").rstrip() for ln in lines[start:] if ln.strip()]


def profile(task: str, *, seed: int, repeats: int, cprofile: bool) -> list[dict]:
    from small_data import task_root, views, weights_path

    visible, _ = views(task_root(task))
    results = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="regraft-profile-") as tmp:
            result = Path(tmp) / "result.json"
            env = dict(os.environ, REGRAFT_CACHE_DIR=str(Path(tmp) / "cache"))
            env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
            cmd = [sys.executable, __file__, "--child", str(visible), "--weights", weights_path(), "--out", str(Path(tmp) / "run"),
                   "--seed", str(seed), "--json", str(result)] + (["--cprofile"] if cprofile else [])
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0 or not result.is_file():
                raise SystemExit(f"profiled run failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
            payload = json.loads(result.read_text())
            payload["process_s"] = time.time() - t0
            results.append(payload)
            print(f"  run {len(results)}: {sum(payload['seconds'].values()):.1f} s", flush=True)
    return results


def render(results: list[dict]) -> list[str]:
    from _common import fmt, median, table

    phases = [p for p in _phase_order(results)]
    wall_totals = [sum(res["seconds"].values()) for res in results]
    cpu_totals = [sum(res["cpu"].values()) for res in results]
    rows = []
    for phase in phases:
        wall = median([res["seconds"].get(phase, 0.0) for res in results])
        cpu = median([res["cpu"].get(phase, 0.0) for res in results])
        thread = [float(next((r[-1] for r in res["rows"] if r[0] == phase and r[-1]), 0.0)) for res in results]
        rows.append([phase, fmt(wall, 2), f"{100 * wall / median(wall_totals):.0f}%", fmt(cpu, 2),
                     f"{100 * cpu / median(cpu_totals):.0f}%", str(results[0]["calls"].get(phase, "")),
                     fmt(median(thread), 2) if any(thread) else ""])
    rows.append(["total", fmt(median(wall_totals), 2), "100%", fmt(median(cpu_totals), 2), "100%", "", ""])
    head = ["phase", "wall s", "wall share", "CPU s (all threads)", "CPU share", "calls", "thread-s elsewhere"]
    body = table(head if len(results) == 1 else [f"{h} (median)" if " s" in h else h for h in head], rows)
    if len(results) > 1:
        body += ["", "wall s of each run: " + ", ".join(fmt(v, 1) for v in wall_totals)]
    run = results[0].get("run") or {}
    body += ["", f"The run: {json.dumps(run)}"]
    if results[0]["missing"]:
        body += ["", f"Hooks not found (their time is in `other`): {', '.join(results[0]['missing'])}"]
    if results[0].get("top"):
        body += ["", "<details><summary>cProfile, top functions by own time</summary>", "", *[f"    {ln}" for ln in results[0]["top"]],
                 "", "</details>"]
    return body


def _phase_order(results: list[dict]) -> list[str]:
    from _phases import PHASES

    seen = {p for res in results for p in res["seconds"]}
    return [p for p in PHASES if p in seen] + sorted(seen - set(PHASES))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="photos", help="a small-data suite task or a folder with train/ and test/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--wait-load", type=float, default=None)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.weights, args.out, args.seed, args.json, cprofile=args.cprofile)
    from _common import Section, append_results, command_line, wait_for_quiet

    load0 = wait_for_quiet(args.wait_load)
    results = profile(args.task, seed=args.seed, repeats=args.repeats, cprofile=args.cprofile)
    notes = [
        f"task `{args.task}` (bench/_tasks.py), train/ and val/ only; `regraft train DATA --model {MODEL} --weights W "
        f"--out RUN --seed {args.seed}` with its defaults, in-process in a fresh Python, empty REGRAFT_CACHE_DIR",
        "each second of the main thread is charged to the innermost hooked step running then (bench/_phases.py): nested "
        "steps are taken out of their callers, so the phases add up to the wall time; `imports` is every import that "
        "loaded a module, wherever it happened; `python start` is the interpreter's start before the script's first "
        "line; `decode` on the main thread is wall time, decoding threads' time is in the thread-s column; CPU s: the "
        "process's CPU seconds (all threads) while the phase ran, steadier than wall s on a shared machine",
        f"{args.repeats} run(s)" + ("; under cProfile (slower: compare shares, not seconds)" if args.cprofile else ""),
    ]
    append_results(Section("Profile: where `regraft train`'s wall time goes (`bench/profile_run.py`)",
                            command_line("profile_run.py", argv), load0, notes, render(results)), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
