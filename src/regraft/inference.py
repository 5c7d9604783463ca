"""Using a finished run: evaluate it on its validation split or any labelled folder, predict on images.

Example:
    >>> metrics = evaluate_run("runs/exp1")                       # doctest: +SKIP
    >>> predict("runs/exp1", ["cat.jpg"], topk=3)[0]["top"][0]     # doctest: +SKIP
    {'class': 'cat', 'prob': 0.97}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regraft.data.files import expand_paths, list_images
from regraft.errors import DataError, RunError
from regraft.runs import RunDir

__all__ = ["LoadedRun", "load_run", "build_model_from_card", "evaluate_run", "predict", "classification_metrics", "expected_calibration_error", "list_images", "expand_paths"]

log = logging.getLogger(__name__)


class LoadedRun:
    """A finished run loaded back: the model in eval mode, its preprocessing and class names."""

    def __init__(self, run: RunDir, model: nn.Module, card: dict[str, Any]) -> None:
        self.run = run
        self.model = model
        self.card = card
        self.classes: list[str] = list(card["classes"])

    @property
    def data_config(self):
        from regraft.zoo import DataConfig

        pre = self.card["preprocessing"]
        return DataConfig(
            input_size=tuple(pre["input_size"]),
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            interpolation=pre["interpolation"],
            crop_pct=float(pre["crop_pct"]),
        )

    def transform(self):
        """The evaluation transform (resize, centre crop, normalise) the model was trained with."""
        from regraft.data import build_transforms

        return build_transforms(self.data_config, train=False)

    def __iter__(self):  # model, transform, classes = rg.load_run(RUN)
        return iter((self.model, self.transform(), self.classes))


def build_model_from_card(card: dict[str, Any], *, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the architecture a run trained (zoo model, new head, surgery) without weights.

    ``model``: for runs of your own module, a fresh instance of it (the card cannot rebuild it).
    """
    from regraft import surgery, zoo

    arch = card["architecture"]
    if model is None:
        if arch["zoo"] not in zoo.ZOOS:
            raise RunError(
                f"this run trained a custom module ({arch['name']}); pass a fresh instance: load_run(RUN, model=MyNet())"
            )
        model = zoo.build(zoo.ModelRef(arch["zoo"], arch["name"]))
    surgery.replace_head(
        model,
        card["num_classes"],
        hidden=tuple(arch.get("head_hidden") or ()),
        dropout=float(arch.get("head_dropout") or 0.0),
    )
    ops = arch.get("surgery") or []
    if ops:
        surgery.apply(model, ops, input_size=tuple(card["preprocessing"]["input_size"]))
    if arch.get("frozen_bn"):
        from regraft.freezing import swap_frozen_bn

        swap_frozen_bn(model, arch["frozen_bn"])
    return model


def load_run(
    path: str | Path, *, device: str | torch.device = "cpu", weights: str = "model.safetensors", model: nn.Module | None = None
) -> LoadedRun:
    """Load a finished run: rebuild its model, load its best weights, put it in eval mode.

    Returns:
        A :class:`LoadedRun`; ``model, transform, classes = rg.load_run(RUN)`` also works.

    Raises:
        RunError: the folder is not a finished run.
    """
    from safetensors.torch import load_file

    run = RunDir(path)
    if not run.path.is_dir():
        raise RunError(f"run folder not found: {run.path}")
    card = run.read_json("model.json")
    model = build_model_from_card(card, model=model)
    wpath = run.path / weights
    if not wpath.is_file():
        raise RunError(f"{run.path} is not a finished run: {weights} is missing")
    state = load_file(str(wpath))
    model.load_state_dict(state, strict=True)
    _check_contract(run, model, card)
    model.to(device).eval()
    return LoadedRun(run, model, card)


def _check_contract(run: RunDir, model: nn.Module, card: dict[str, Any]) -> None:
    """The model contract for a loaded run: one logit per class its model.json names."""
    from regraft import surgery
    from regraft.errors import SurgeryError

    classes = card.get("classes")
    if not isinstance(classes, list) or len(classes) != card.get("num_classes"):
        raise RunError(f"{run.path}/model.json: 'classes' does not list num_classes={card.get('num_classes')} names; the run folder is damaged, train it again")
    try:
        surgery.check_output_width(model, num_classes=len(classes), input_size=tuple(card["preprocessing"]["input_size"]))
    except SurgeryError as exc:
        raise RunError(f"{run.path} cannot predict its {len(classes)} classes: {exc}; train it again with that fixed") from exc


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _run_samples(loaded: LoadedRun, data: str | None) -> tuple[list[tuple[str, int]], str]:
    """(path, label) pairs to evaluate: the run's own validation split, or every image under ``data``."""
    from regraft import data as rdata
    from regraft.config import Config

    if data is None:
        cfg = Config.from_yaml(loaded.run.path / "config.yaml")
        splits = rdata.discover(
            cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed,
            train_csv=cfg.train_csv, val_csv=cfg.val_csv, classes_file=cfg.classes_file,
        )
        if list(splits.classes) != loaded.classes:
            raise DataError(f"{cfg.data} now has classes {splits.classes}, the run was trained on {loaded.classes}; pass --data DIR")
        return [(str(p), int(y)) for p, y in splits.val], f"validation split of {cfg.data}"
    root = Path(data)
    for name in ("val", "valid", "test"):
        if (root / name).is_dir():
            root = root / name
            break
    if not root.is_dir():
        raise DataError(f"--data {data}: not a folder; pass a folder of class subfolders")
    index = {c: i for i, c in enumerate(loaded.classes)}
    samples = []
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in subdirs if d.name not in index]
    if unknown:
        raise DataError(f"--data {data}: class folder(s) {', '.join(unknown)} are not among the run's classes ({', '.join(loaded.classes)})")
    for d in subdirs:
        samples += [(str(p), index[d.name]) for p in list_images(d)]
    if not samples:
        raise DataError(f"--data {data}: no images in class subfolders of {root}")
    return samples, str(root)


class _Numerics:
    """The numerics a run was validated in (environment.json), where this device can run them.

    Evaluating and predicting in the same autocast dtype and memory format as training's
    validation makes ``regraft eval`` reproduce ``best_val_acc`` exactly.
    """

    def __init__(self, precision: str, channels_last: bool, device: torch.device) -> None:
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if self.dtype is torch.float16 and device.type != "cuda":
            self.dtype = None
        if device.type not in ("cpu", "cuda"):
            self.dtype = None
        self.channels_last = channels_last and device.type in ("cpu", "cuda")
        self.device = device

    @classmethod
    def for_run(cls, loaded: LoadedRun, device: torch.device) -> _Numerics:
        import json

        env_file = loaded.run.path / "environment.json"
        env = json.loads(env_file.read_text()) if env_file.is_file() else {}
        numerics = cls(env.get("precision", "fp32"), bool(env.get("channels_last")), device)
        if numerics.channels_last:
            loaded.model.to(memory_format=torch.channels_last)
        return numerics

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return model(x).float()


@torch.no_grad()
def _logits(model: torch.nn.Module, samples: Sequence[tuple[str, int]], transform, *, batch_size: int, skipped: list[str], run_model: _Numerics):
    from regraft.data import load_image

    outs, kept = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        tensors = []
        for path, label in chunk:
            try:
                tensors.append(transform(load_image(path)))
                kept.append(label)
            except Exception as exc:  # noqa: BLE001 - reported by name, never fatal
                log.warning("skipping %s: %s", path, exc)
                skipped.append(str(path))
        if tensors:
            outs.append(run_model(model, torch.stack(tensors)).cpu())
    logits = torch.cat(outs) if outs else torch.zeros(0, 1)
    return logits, torch.tensor(kept, dtype=torch.long)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy/precision/recall/F1, the confusion matrix and ECE."""
    k = len(classes)
    preds = logits.argmax(1).numpy() if len(logits) else np.zeros(0, dtype=int)
    y = targets.numpy()
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, preds), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"accuracy": float(recall), "precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    n = len(y)
    loss = float(torch.nn.functional.cross_entropy(logits, targets, reduction="mean")) if n else float("nan")
    return {
        "accuracy": float((preds == y).mean()) if n else 0.0,
        "loss": loss,
        "n_images": n,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(logits, targets) if n else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])) if per_class else 0.0,
    }


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, *, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width confidence bins (Guo et al., 2017)."""
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.float().mean() * (conf[mask].mean() - correct[mask].mean()).abs()
    return float(ece)


def evaluate_run(run: str | Path, *, data: str | None = None, batch_size: int = 64, device: str = "auto") -> dict[str, Any]:
    """Evaluate a finished run on its own validation split (reproducing ``best_val_acc``) or ``data``.

    Returns:
        ``accuracy``, ``loss``, ``per_class`` (accuracy, precision, recall, F1, support),
        ``confusion_matrix``, ``ece``, ``n_images``, ``classes``, ``data``, ``skipped``.
    """
    dev = _device(device)
    loaded = load_run(run, device=dev)
    samples, where = _run_samples(loaded, data)
    skipped: list[str] = []
    logits, targets = _logits(
        loaded.model, samples, loaded.transform(), batch_size=batch_size, skipped=skipped, run_model=_Numerics.for_run(loaded, dev),
    )
    metrics = classification_metrics(logits, targets, loaded.classes)
    metrics.update({"classes": loaded.classes, "data": where, "skipped": skipped})
    return metrics


def predict(run: str | Path, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 32, device: str = "auto") -> list[dict[str, Any]]:
    """Top-k classes with probabilities for images or folders of images.

    Returns:
        One dict per image: ``path`` and ``top`` (a list of ``{"class", "prob"}``), or ``error``.
    """
    dev = _device(device)
    loaded = load_run(run, device=dev)
    files = expand_paths(paths)
    transform = loaded.transform()
    run_model = _Numerics.for_run(loaded, dev)
    from regraft.data import load_image

    results: list[dict[str, Any]] = []
    k = max(1, min(topk, len(loaded.classes)))
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            chunk, tensors, ok = files[start : start + batch_size], [], []
            for f in chunk:
                try:
                    tensors.append(transform(load_image(f)))
                    ok.append(f)
                except Exception as exc:  # noqa: BLE001 - one bad file is reported, not fatal
                    results.append({"path": str(f), "error": f"cannot read image: {exc}"})
            if not tensors:
                continue
            probs = run_model(loaded.model, torch.stack(tensors)).softmax(1).cpu()
            top = probs.topk(k, dim=1)
            for f, values, indices in zip(ok, top.values, top.indices, strict=True):
                results.append({"path": str(f), "top": [{"class": loaded.classes[i], "prob": round(float(v), 6)} for v, i in zip(values, indices, strict=True)]})
    return results
