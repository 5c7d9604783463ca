"""The end of a run: the kept weights back in, one evaluation of them, and the files that say what happened.

``summary.json``'s figures are the kept row's (``metrics.csv`` marks it ``kept = 1``); the final
evaluation of the kept weights on the validation images, in the numerics of inference, feeds the
plots and ``val_predictions.csv`` and must agree with that row (it is what ``regraft eval``
reproduces). It also gives the per-class figures and, for multi-label runs, the thresholds that
``model.json`` keeps (:mod:`regraft.training.label_figures`). The figure names follow the task:
``best_val_acc`` (multiclass) or ``best_val_map`` (multi-label), ``primary`` names it. Plots
are drawn last: a drawing failure is logged, never fatal to a finished run.
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
from regraft.training.label_figures import label_figures, write_thresholds
from regraft.training.loop import EvalResult, FitState, better, evaluate
from regraft.training.processes import Processes
from regraft.training.setup import DataSetup

__all__ = ["finish", "write_predictions"]

log = logging.getLogger(__name__)


def finish(
    *, run: RunDir, model: nn.Module, data_setup: DataSetup, state: FitState, procs: Processes,
    summary_fields: dict[str, Any], batch_transform: Any = None,
    out_of_fold: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Load the kept weights into ``model``, evaluate them, write metrics, summary, predictions and plots.

    Args:
        out_of_fold: the cross-validated probe's ``(probabilities, targets)`` of the training
            images: the per-class figures and thresholds of a run without validation images.

    Returns:
        The summary (also written to ``summary.json``).
    """
    from safetensors.torch import load_file

    procs.wait()
    best = run.path / "model.safetensors"
    if best.is_file():
        model.load_state_dict(load_file(str(best)))
    task, final = data_setup.rules, None
    if len(data_setup.val_dataset):
        final = evaluate(model, data_setup.val_loader, procs=procs, collect=True, task=task)
    kept = state.best_row or {}
    if final is not None and kept and not _agrees(final, kept):
        log.warning("the kept weights measure %.4f / %.5f on the validation images, their row said %.4f / %.5f",
                    final.score, final.loss, float(kept[task.primary]), float(kept["val_loss"]))
    figures = label_figures(task, data_setup.classes, logits=final.logits if final is not None else None,
                            targets=final.targets if final is not None else None,
                            out_of_fold=out_of_fold if kept.get("stage") == "probe" else None)
    summary = _summary(state, final, data_setup, model) | figures.summary | summary_fields
    if procs.is_main:
        rows = [dict(r, kept=int(i == state.best)) for i, r in enumerate(state.history)]
        run.write_metrics(rows)
        run.write_json("summary.json", summary)
        write_thresholds(run, figures.thresholds)
        thresholds = figures.thresholds.values if figures.thresholds is not None else None
        if final is not None:
            write_predictions(run, data_setup, final, world_size=procs.count, thresholds=thresholds)
        _draw(run, data_setup, final, world_size=procs.count, batch_transform=batch_transform, thresholds=thresholds)
    procs.wait()
    return summary


def _agrees(final: EvalResult, row: dict[str, Any]) -> bool:
    return abs(final.score - float(row[final.primary])) < 1e-9 and abs(final.loss - float(row["val_loss"])) < 1e-4


def _summary(state: FitState, final: EvalResult | None, data_setup: DataSetup, model: nn.Module) -> dict[str, Any]:
    kept = state.best_row or {}
    history = state.history
    last = history[-1] if history else {}
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = [r for r in history if r.get("lr") not in (None, "")]
    key = data_setup.rules.primary  # val_acc | val_map
    others = {f"best_{k}": v for k, v in kept.items() if k.startswith("val_") and k not in (key, "val_loss")
              and not k.endswith(("_std", "_ema"))}
    return {
        "epochs": state.epoch,
        "best_epoch": kept.get("epoch"),
        "best_stage": kept.get("stage"),
        f"best_{key}": kept.get(key),
        "best_val_loss": kept.get("val_loss"),
        f"best_{key}_std": kept.get(f"{key}_std"),
        f"final_{key}": last.get(key),
        "final_val_loss": last.get("val_loss"),
        **others,
        "task": data_setup.task.value,
        "primary": key,
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
        "ema": _ema(state, key),
    }


def _ema(state: FitState, key: str) -> dict[str, Any] | None:
    """The best EMA evaluation and whether it beats the kept weights (``--weights ema`` selects them)."""
    ema = f"{key}_ema"
    rows = [r for r in state.history if r.get(ema) is not None]
    if not rows:
        return None
    best = rows[0]
    for r in rows[1:]:
        if better(float(r[ema]), float(r["val_loss_ema"]), float(best[ema]), float(best["val_loss_ema"])):
            best = r
    kept = state.best_row or {}
    beats = bool(kept) and better(float(best[ema]), float(best["val_loss_ema"]), float(kept[key]), float(kept["val_loss"]))
    return {"weights": "model_ema.safetensors", "best_epoch": best["epoch"], f"best_{key}": best[ema],
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


def write_predictions(run: RunDir, data_setup: DataSetup, final: EvalResult, *, world_size: int = 1,
                      thresholds: list[float] | None = None) -> None:
    """``val_predictions.csv``: one row per validation image, in the validation order, for paired
    comparisons of runs: ``path,label,predicted,correct,p_label,p_predicted`` (multi-label:
    ``path,labels,predicted,correct`` and one probability per label, decided at ``thresholds``)."""
    order = _row_order(final, data_setup, world_size, run)
    samples = data_setup.val_dataset.samples
    header, columns = data_setup.rules.prediction_columns(final.logits, final.targets, data_setup.classes,
                                                          thresholds=thresholds)
    rows = []
    for row, cells in enumerate(columns):
        index = order[row] if order is not None else row
        rows.append((index, str(samples[index].path), *cells))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", *header])
    writer.writerows(r[1:] for r in sorted(rows))
    run.write_text("val_predictions.csv", buf.getvalue())


def _draw(run: RunDir, data_setup: DataSetup, final: EvalResult | None, *, world_size: int = 1, batch_transform: Any = None,
          thresholds: list[float] | None = None) -> None:
    try:
        from regraft.report import draw_run

        indices = _row_order(final, data_setup, world_size, run) if final is not None else None
        dcfg = data_setup.data_config
        draw_run(
            run, classes=data_setup.classes, logits=final.logits if final is not None else None,
            targets=final.targets if final is not None else None, val_dataset=data_setup.val_dataset,
            train_dataset=data_setup.train_dataset, indices=indices, mean=dcfg.mean, std=dcfg.std,
            batch_transform=batch_transform,  # samples.png shows the batches as mixup/cutmix mixed them
            thresholds=thresholds,  # multi-label: the decisions of top_losses.png
        )
    except Exception as exc:  # noqa: BLE001 - the weights and metrics are already saved
        log.warning("could not draw the run's plots: %s", exc)
