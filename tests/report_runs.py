"""Fake finished runs for the report tests, written to the metrics.csv contract (docs/report.md).

Each builder returns ``(rows, summary)`` with realistic shapes: lp-ft (one probe row at epoch 0,
fine-tune epochs, a WiSE-FT row at the last epoch), staged unfreezing, a plain run, an older run
whose stages each counted from 1 without a ``kept`` column, one epoch, 100 epochs, and a
cross-validated probe. :func:`write_run` lays one out as a run folder, predictions included.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from regraft.runs import RunDir

CLASSES = ["cat", "dog", "fox"]


def _row(epoch, stage, val_acc, val_loss, *, train_acc=None, train_loss=None, lr=1e-4, kept=0, **extra):
    return {
        "epoch": epoch, "stage": stage, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "images_per_sec": 850.0 if lr else None,
        "epoch_seconds": 3.1, "kept": kept, **extra,
    }  # fmt: skip


def _summary(rows, *, strategy, model="resnet18", **extra):
    kept = next(r for r in rows if r["kept"])
    return {
        "model": model, "strategy": strategy, "weights": "DEFAULT" if strategy != "scratch" else "none",
        "epochs": int(max(r["epoch"] for r in rows)), "best_epoch": kept["epoch"], "best_stage": kept["stage"],
        "best_val_acc": kept["val_acc"], "best_val_loss": kept["val_loss"], "final_val_acc": rows[-1]["val_acc"],
        "train_seconds": 42.0, "images_per_sec": 850.0, "trainable_params": 11_178_051, "total_params": 11_178_051,
        "validation": "holdout", "n_val": 100, "classes": CLASSES, "num_classes": 3, **extra,
    }  # fmt: skip


def lpft(*, kept_wise: bool = False) -> tuple[list[dict], dict]:
    """Probe at epoch 0, fine-tune epochs 1..5, a WiSE-FT mix at epoch 5; kept: epoch 3 (or the mix, then best)."""
    accs = [0.93, 0.95, 0.97, 0.96, 0.96]
    rows = [_row(0, "probe", 0.90, 0.36, train_acc=0.94, train_loss=0.25, lr=None)]
    rows += [_row(e, "fine-tune", accs[e - 1], 0.3 - 0.03 * e, train_acc=0.9 + 0.02 * e, train_loss=0.3 - 0.04 * e,
                  kept=int(e == 3 and not kept_wise)) for e in range(1, 6)]  # fmt: skip
    rows.append(_row(5, "wise-ft", 0.98 if kept_wise else 0.955, 0.12, lr=None, kept=int(kept_wise)))
    return rows, _summary(rows, strategy="lp-ft")


def gradual() -> tuple[list[dict], dict]:
    """Staged unfreezing: head (1-2), +layer4 (3-4), +layer3 (5-6), all (7-10)."""
    stages = ["head"] * 2 + ["+layer4"] * 2 + ["+layer3"] * 2 + ["all"] * 4
    rows = [
        _row(e, stages[e - 1], 0.6 + 0.035 * e - (0.02 if e == 9 else 0), 1.0 - 0.07 * e,
             train_acc=0.55 + 0.04 * e, train_loss=1.1 - 0.08 * e, lr=1e-3 / e, kept=int(e == 8))
        for e in range(1, 11)
    ]  # fmt: skip
    return rows, _summary(rows, strategy="gradual")


def plain(*, epochs: int = 8, strategy: str = "full", top: float = 0.94, seed: int = 0) -> tuple[list[dict], dict]:
    """One stage ``train``; validation noisy, kept = its best epoch."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(1, epochs + 1):
        acc = float(np.clip(top - 0.45 * math.exp(-e / max(epochs / 5, 1)) + rng.normal(0, 0.01), 0, 1))
        loss = float(0.15 + 0.9 * math.exp(-e / max(epochs / 5, 1)) + abs(rng.normal(0, 0.02)))
        rows.append(_row(e, "train", round(acc, 4), round(loss, 4), train_acc=min(acc + 0.03, 1.0), train_loss=loss * 0.8, lr=1e-3))
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -i))
    rows[best]["kept"] = 1
    return rows, _summary(rows, strategy=strategy)


def old_lpft() -> tuple[list[dict], dict]:
    """An older lp-ft run: the probe's epochs 1..4, then the fine-tune's 1..5 again, no ``kept``
    column; the probe kept its lowest-loss epoch (3, 95%) and ``best_epoch: 0`` says so."""
    probe = [(0.85, 0.50), (0.92, 0.30), (0.95, 0.21), (1.00, 0.24)]
    rows = [{"epoch": e, "stage": "probe", "train_loss": 0.4 - 0.05 * e, "train_acc": 0.8 + 0.04 * e,
             "val_loss": vl, "val_acc": va, "lr": 1e-3} for e, (va, vl) in enumerate(probe, 1)]  # fmt: skip
    rows += [{"epoch": e, "stage": "finetune", "train_loss": 0.2 - 0.02 * e, "train_acc": 0.9 + 0.01 * e,
              "val_loss": 0.25 + 0.02 * e, "val_acc": 0.94 - 0.005 * e, "lr": 1e-4} for e in range(1, 6)]  # fmt: skip
    summary = {"model": "resnet18", "strategy": "lp-ft", "weights": "DEFAULT", "epochs": 5, "best_epoch": 0,
               "best_val_acc": 0.95, "best_val_loss": 0.21, "final_val_acc": 0.915, "classes": CLASSES}  # fmt: skip
    return rows, summary


def one_epoch() -> tuple[list[dict], dict]:
    rows = [_row(1, "train", 0.71, 0.62, train_acc=0.55, train_loss=0.95, lr=1e-3, kept=1)]
    return rows, _summary(rows, strategy="full")


def cross_validated() -> tuple[list[dict], dict]:
    """A small-data lp-ft: the probe's validation figure is a 5-fold estimate; then 3 epochs."""
    rows = [_row(0, "probe", 0.94, 0.2, train_acc=0.99, train_loss=0.05, lr=None, kept=1)]
    rows += [_row(e, "fine-tune", 0.93 - 0.01 * e, 0.22 + 0.01 * e, train_acc=0.99, train_loss=0.04, lr=1e-4) for e in (1, 2, 3)]
    return rows, _summary(rows, strategy="lp-ft", validation="cv5", val_acc_std=0.021)


def predictions(correct: list[bool], *, n_classes: int = 3, seed: int = 0) -> list[dict]:
    """``val_predictions.csv`` rows with the given correctness, same paths for every run."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ok in enumerate(correct):
        label = i % n_classes
        pred = label if ok else (label + 1) % n_classes
        p = float(rng.uniform(0.5, 1.0))
        out.append({"path": f"val/{CLASSES[label]}/{i:04d}.jpg", "label": CLASSES[label], "predicted": CLASSES[pred],
                    "correct": int(ok), "p_label": p if ok else 1 - p, "p_predicted": p})  # fmt: skip
    return out


def write_run(folder: Path, rows: list[dict], summary: dict, *, preds: list[dict] | None = None) -> Path:
    run = RunDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.write_metrics(rows)
    run.write_json("summary.json", summary)
    run.write_text("config.yaml", f"model: {summary['model']}\nstrategy: {summary['strategy']}\n")
    if preds is not None:
        with (folder / "val_predictions.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(preds[0]))
            writer.writeheader()
            writer.writerows(preds)
    return folder
