"""What a run writes when it starts: ``model.json`` (the model card), the config, the environment,
the load report and the freeze audit; and the lines it announces before the first step."""

from __future__ import annotations

import datetime as _dt
import math
import platform
from collections.abc import Callable
from typing import Any

import torch

from regraft import zoo
from regraft.config import Config
from regraft.data.pixels import PixelFormat
from regraft.runs import RunDir
from regraft.tasks import Task
from regraft.tasks.decide import DEFAULT_THRESHOLD

__all__ = ["CARD_FORMAT", "model_card", "environment_info", "write_run_start", "announce"]

CARD_FORMAT = "regraft-run/1"


def model_card(
    cfg: Config, *, ref: zoo.ModelRef, head: str, classes: list[str], data_config: zoo.DataConfig, strategy: str,
    frozen_bn: list[str] | None = None,
) -> dict[str, Any]:
    """``model.json``: what a run's weights are, enough to rebuild and preprocess without the config.

    ``task`` says how outputs become predictions; a multi-label card also lists one decision
    threshold per label (0.5 until the run chooses them on validation, when it finishes).
    """
    pre = data_config.to_dict()
    pre["resize"] = int(math.floor(data_config.input_size[-1] / data_config.crop_pct))
    # how images are read: eval, predict and every export read them the same way (docs/channels.md)
    pre["channels"] = int(data_config.input_size[0])
    pre["mode"] = PixelFormat(pre["channels"], data_config.bit_depth).mode
    task = Task.parse(cfg.task)
    decisions = {"thresholds": [DEFAULT_THRESHOLD] * len(classes), "thresholds_source": "default"} if task.multilabel else {}
    return {
        "format": CARD_FORMAT,
        "architecture": {
            "zoo": ref.zoo,
            "name": ref.name,
            "head": head,
            "head_hidden": list(cfg.head_hidden),
            "head_dropout": cfg.head_dropout,
            "surgery": list(cfg.surgery),
            # FrozenBatchNorm2d has no num_batches_tracked: a rebuilt model must swap the same layers
            "frozen_bn": list(frozen_bn or []),
        },
        "num_classes": len(classes),
        "classes": classes,
        "task": task.value,
        **decisions,
        "preprocessing": pre,
        "weights": cfg.weights,
        "strategy": strategy,
    }


def environment_info() -> dict[str, Any]:
    """Versions and the machine, for ``environment.json``."""
    import accelerate
    import timm
    import torchvision

    from regraft._version import __version__

    return {
        "regraft": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def write_run_start(
    run: RunDir, cfg: Config, *, card: dict[str, Any], numerics: dict[str, Any], load_report: Any, audit: list[dict[str, Any]],
    surgery_diff: Any = None,
) -> None:
    """The run's first files, written before the first step (main process only)."""
    run.write_text("config.yaml", cfg.to_yaml())
    run.write_json("model.json", card)
    # precision / channels_last: what the training steps ran in; evaluation is always fp32
    run.write_json("environment.json", environment_info() | {"seed": cfg.seed, **numerics, "evaluation": "fp32"})
    run.write_json("load_report.json", load_report.to_dict() if load_report is not None else {"source": "none", "coverage": 0.0})
    run.write_json("freeze_audit.json", audit)
    if surgery_diff is not None:
        run.write_json("surgery.json", surgery_diff.to_dict())


def announce(notify: Callable[[str], None], *, load_report: Any, surgery_diff: Any, plan: Any, numerics_line: str) -> None:
    """Tell the user what was loaded and what trains, before the first step."""
    if load_report is not None:
        for line in load_report.format_lines():
            notify(line)
    if surgery_diff is not None:
        for line in surgery_diff.format_lines():
            notify(line)
    if plan is not None:
        for line in plan.describe().splitlines():
            notify(line)
    notify(numerics_line)
