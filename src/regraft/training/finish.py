"""The end of a run: the kept weights back in, one evaluation of them, and the files that say what happened.

``summary.json``'s figures are the kept row's (``metrics.csv`` marks it ``kept = 1``); the final
evaluation of the kept weights on the validation images, in the numerics of inference, feeds the
plots and ``val_predictions.csv`` and must agree with that row (it is what ``regraft eval``
reproduces). Plots are drawn last: a drawing failure is logged, never fatal to a finished run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from typing import Any

import torch
from torch import nn

from regraft.runs import RunDir
from regraft.training.loop import EvalResult, FitState, evaluate
from regraft.training.processes import Processes
from regraft.training.setup import DataSetup

__all__ = ["finish", "write_predictions"]

log = logging.getLogger(__name__)


def finish(
    *, run: RunDir, model: nn.Module, data_setup: DataSetup, state: FitState, procs: Processes,
    summary_fields: dict[str, Any], batch_transform: Any = None,
) -> dict[str, Any]:
    """Load the kept weights into ``model``, evaluate them, write metrics, summary, predictions and plots.

    Returns:
        The summary (also written to ``summary.json``).
    """
    from safetensors.torch import load_file

    procs.wait()
    best = run.path / "model.safetensors"
    if best.is_file():
        model.load_state_dict(load_file(str(best)))
    final = None
    if len(data_setup.val_dataset):
        final = evaluate(model, data_setup.val_loader, procs=procs, collect=True)
    kept = state.best_row or {}
    if final is not None and kept and not _agrees(final, kept):
        log.warning("the kept weights measure %.4f / %.5f on the validation images, their row said %.4f / %.5f",
                    final.accuracy, final.loss, float(kept["val_acc"]), float(kept["val_loss"]))
    summary = _summary(state, final, data_setup, model) | summary_fields
    if procs.is_main:
        rows = [dict(r, kept=int(i == state.best)) for i, r in enumerate(state.history)]
        run.write_metrics(rows)
        run.write_json("summary.json", summary)
        if final is not None:
            write_predictions(run, data_setup, final, world_size=procs.count)
        _draw(run, data_setup, final, world_size=procs.count, batch_transform=batch_transform)
    procs.wait()
    return summary


def _agrees(final: EvalResult, row: dict[str, Any]) -> bool:
    return abs(final.accuracy - float(row["val_acc"])) < 1e-9 and abs(final.loss - float(row["val_loss"])) < 1e-4


def _summary(state: FitState, final: EvalResult | None, data_setup: DataSetup, model: nn.Module) -> dict[str, Any]:
    kept = state.best_row or {}
    history = state.history
    last = history[-1] if history else {}
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = [r for r in history if r.get("lr") not in (None, "")]
    return {
        "epochs": state.epoch,
        "best_epoch": kept.get("epoch"),
        "best_stage": kept.get("stage"),
        "best_val_acc": kept.get("val_acc"),
        "best_val_loss": kept.get("val_loss"),
        "best_val_acc_std": kept.get("val_acc_std"),
        "final_val_acc": last.get("val_acc"),
        "final_val_loss": last.get("val_loss"),
        "validation": data_setup.regime,
        "train_seconds": round(state.train_seconds, 3),
        "images_per_sec": _mean([r["images_per_sec"] for r in trained]),
        "num_classes": len(data_setup.classes),
        "classes": data_setup.classes,
        "trainable_params": n_train,
        "total_params": n_total,
        "n_train": len(data_setup.train_dataset),
        "n_val": final.n if final is not None else 0,
        "stopped_early": bool(state.stop_reason),
        "stop_reason": state.stop_reason or None,
        "ema": _ema(state),
    }


def _ema(state: FitState) -> dict[str, Any] | None:
    """The best EMA evaluation and whether it beats the kept weights (``--weights ema`` selects them)."""
    from regraft.training.loop import better

    rows = [r for r in state.history if r.get("val_acc_ema") is not None]
    if not rows:
        return None
    best = rows[0]
    for r in rows[1:]:
        if better(float(r["val_acc_ema"]), float(r["val_loss_ema"]), float(best["val_acc_ema"]), float(best["val_loss_ema"])):
            best = r
    kept = state.best_row or {}
    beats = bool(kept) and better(float(best["val_acc_ema"]), float(best["val_loss_ema"]), float(kept["val_acc"]), float(kept["val_loss"]))
    return {"weights": "model_ema.safetensors", "best_epoch": best["epoch"], "best_val_acc": best["val_acc_ema"],
            "best_val_loss": best["val_loss_ema"], "beats_kept": beats}


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return round(sum(values) / len(values), 2) if values else None


def _row_order(final: EvalResult, data_setup: DataSetup, world_size: int, run: RunDir) -> list[int] | None:
    """The validation dataset index of each row of ``final``'s logits (None: ``0..n-1``)."""
    n = final.n
    if world_size > 1:  # gathered rank by rank, each rank's shard being i::world
        return [i for r in range(world_size) for i in range(r, n, world_size)]
    if n != len(data_setup.val_dataset):  # files that failed to decode were dropped
        from regraft.data.dataset import read_skip_log

        skipped = set(read_skip_log(run.path / "skipped_files.txt"))
        kept = [i for i, s in enumerate(data_setup.val_dataset.samples) if str(s.path) not in skipped]
        return kept if len(kept) == n else None
    return None


def write_predictions(run: RunDir, data_setup: DataSetup, final: EvalResult, *, world_size: int = 1) -> None:
    """``val_predictions.csv``: one row per validation image, in the validation order
    (``path,label,predicted,correct,p_label,p_predicted``), for paired comparisons of runs."""
    order = _row_order(final, data_setup, world_size, run)
    samples = data_setup.val_dataset.samples
    probs = torch.softmax(final.logits.float(), dim=1)
    classes = data_setup.classes
    rows = []
    for row, (p, target) in enumerate(zip(probs, final.targets.tolist(), strict=True)):
        index = order[row] if order is not None else row
        predicted = int(p.argmax())
        rows.append((index, str(samples[index].path), classes[target], classes[predicted], int(predicted == target),
                     f"{float(p[target]):.6g}", f"{float(p[predicted]):.6g}"))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "predicted", "correct", "p_label", "p_predicted"])
    writer.writerows(r[1:] for r in sorted(rows))
    run.write_text("val_predictions.csv", buf.getvalue())


def _draw(run: RunDir, data_setup: DataSetup, final: EvalResult | None, *, world_size: int = 1, batch_transform: Any = None) -> None:
    try:
        from regraft.report import draw_run

        indices = _row_order(final, data_setup, world_size, run) if final is not None else None
        dcfg = data_setup.data_config
        draw_run(
            run, classes=data_setup.classes, logits=final.logits if final is not None else None,
            targets=final.targets if final is not None else None, val_dataset=data_setup.val_dataset,
            train_dataset=data_setup.train_dataset, indices=indices, mean=dcfg.mean, std=dcfg.std,
            batch_transform=batch_transform,  # samples.png shows the batches as mixup/cutmix mixed them
        )
    except Exception as exc:  # noqa: BLE001 - the weights and metrics are already saved
        log.warning("could not draw the run's plots: %s", exc)
