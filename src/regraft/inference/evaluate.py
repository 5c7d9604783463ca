"""Using a finished run: evaluate it on its validation split or any labelled folder, predict on images.

Both run in :data:`~regraft.inference.numerics.INFERENCE_NUMERICS` (fp32, channels_last) unless
``precision`` says otherwise, through the one decode path of :mod:`regraft.data.views`. On the
run's own validation split, ``evaluate_run`` also batches as training's validation did (the
run's ``batch_size``, in order), so it reproduces ``summary.json``'s ``best_val_acc`` exactly
and ``best_val_loss`` to rounding.

With ``tta`` (``flip`` or ``flip+crops``) each image is seen in several views and the views'
softmax probabilities are averaged; the plain figures (view 0) are reported beside the TTA ones.

A multi-label run (``model.json``'s ``task``) is scored by mAP, F1 and the per-label table at its
``thresholds``; ``predict`` lists every label above its threshold (:mod:`regraft.tasks`).

Example:
    >>> metrics = evaluate_run("runs/exp1", tta="flip")            # doctest: +SKIP
    >>> metrics["accuracy"], metrics["tta"]["accuracy"]            # doctest: +SKIP
    >>> predict("runs/exp1", ["cat.jpg"], topk=3)[0]["top"][0]     # doctest: +SKIP
    {'class': 'cat', 'prob': 0.97}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from regraft.data.files import expand_paths, list_images
from regraft.data.views import TTA
from regraft.errors import DataError, RegraftError, RunError
from regraft.inference.images import forward_views, image_batches, mean_probs
from regraft.inference.loading import LoadedRun, WeightsChoice, load_run, read_run_json
from regraft.inference.metrics import classification_metrics, multilabel_metrics
from regraft.inference.numerics import INFERENCE_NUMERICS, Numerics, Precision
from regraft.tasks import Task, above_thresholds, read_thresholds, rules

__all__ = ["evaluate_run", "predict", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when a GPU is visible, else the CPU; ``cpu``/``cuda``/``cuda:1`` as given.

    Raises:
        ConfigError: a device torch does not know, or CUDA asked for without a GPU.
    """
    from regraft.errors import ConfigError

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N; got '{device}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device auto or cpu")
    return dev


def _numerics(precision: str | Precision) -> Numerics:
    p = Precision.parse(precision)
    return INFERENCE_NUMERICS if p is Precision.FP32 else Numerics(precision=p.value, channels_last=INFERENCE_NUMERICS.channels_last)


def _loaded(run: str | Path | LoadedRun, *, device: torch.device, weights: str) -> LoadedRun:
    if isinstance(run, LoadedRun):
        if WeightsChoice.parse(weights) is not run.weights:
            raise RunError(f"the loaded run holds its {run.weights} weights; load it with load_run(RUN, weights='{weights}')")
        run.model.to(device).eval()
        return run
    return load_run(run, device=device, weights=weights)


def _task(loaded: LoadedRun) -> Task:
    return Task.parse(loaded.card.get("task"))


def _run_samples(loaded: LoadedRun, data: str | None) -> tuple[list[tuple[str, Any]], str, int | None]:
    """``(samples, where, batch size)``: the run's own validation split (with its batch size), or
    every image under ``data`` (batch size None)."""
    if data is None:
        return _own_split(loaded)
    root = Path(data)
    for name in ("val", "valid", "test"):
        if (root / name).is_dir():
            root = root / name
            break
    if not root.is_dir():
        raise DataError(f"--data {data}: not a folder; pass a folder of class subfolders")
    if _task(loaded).multilabel:
        return _label_folders(loaded, root, data)
    index = {c: i for i, c in enumerate(loaded.classes)}
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in subdirs if d.name not in index]
    if unknown:
        raise DataError(f"--data {data}: class folder(s) {', '.join(unknown)} are not among the run's classes ({', '.join(loaded.classes)})")
    samples = [(str(p), index[d.name]) for d in subdirs for p in list_images(d)]
    if not samples:
        raise DataError(f"--data {data}: no images in class subfolders of {root}")
    return samples, str(root), None


def _label_folders(loaded: LoadedRun, root: Path, data: str) -> tuple[list[tuple[str, Any]], str, int | None]:
    """A multi-label run's ``--data``: label folders, copies of one image in several merged (docs/data.md)."""
    from regraft.data.discovery import label_folders

    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d for d in subdirs if d not in loaded.classes]
    if unknown:
        raise DataError(f"--data {data}: label folder(s) {', '.join(unknown)} are not among the run's labels ({', '.join(loaded.classes)})")
    samples = label_folders(root, loaded.classes)
    if not samples:
        raise DataError(f"--data {data}: no images in label subfolders of {root}")
    return [(s.path, s.label) for s in samples], str(root), None


def _own_split(loaded: LoadedRun) -> tuple[list[tuple[str, Any]], str, int | None]:
    from regraft import data as rdata
    from regraft.config import Config

    path = loaded.run.path / "config.yaml"
    if not path.is_file():
        raise RunError(f"{loaded.run.path} has no config.yaml, so its validation split is unknown; pass --data DIR")
    try:
        cfg = Config.from_yaml(path)
    except RegraftError as exc:
        raise RunError(f"{path} is damaged ({exc}); pass --data DIR, or restore the file") from None
    except Exception as exc:  # noqa: BLE001 - YAML and decoding errors of an untrusted file
        raise RunError(f"{path} is damaged ({' '.join(str(exc).split())[:160]}); pass --data DIR, or restore the file") from None
    if not cfg.data or not Path(cfg.data).exists():
        raise DataError(f"the run's data folder {cfg.data} is not there any more; pass --data DIR")
    splits = rdata.discover(
        cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed,
        train_csv=cfg.train_csv, val_csv=cfg.val_csv, classes_file=cfg.classes_file,
        multilabel=_task(loaded).multilabel, label_sep=cfg.label_sep,
    )
    if list(splits.classes) != loaded.classes:
        raise DataError(f"{cfg.data} now has classes {list(splits.classes)}, the run was trained on {loaded.classes}; pass --data DIR")
    if not splits.val:
        raise DataError(f"the run's data {cfg.data} has no validation images; pass --data DIR")
    return [(str(p), y) for p, y in splits.val], f"validation split of {cfg.data}", int(cfg.batch_size)


def evaluate_run(
    run: str | Path | LoadedRun,
    *,
    data: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    weights: str = "best",
    precision: str = "fp32",
    tta: str | TTA = TTA.NONE,
) -> dict[str, Any]:
    """Evaluate a finished run on its own validation split (reproducing ``best_val_acc``) or ``data``.

    Args:
        run: a run folder, or a :class:`LoadedRun` (e.g. ``load_run(RUN, model=MyNet())``).
        data: a folder of class subfolders (its ``val``/``valid``/``test`` subfolder when it has
            one); None = the run's validation split.
        batch_size: images per forward pass; None = the run's own (on its split) or 64.
        device: ``auto``, ``cpu``, ``cuda``.
        weights: ``best`` or ``ema``.
        precision: ``fp32`` (the numerics validation used) or ``bf16``/``fp16`` autocast.
        tta: ``none``, ``flip`` or ``flip+crops``; the TTA figures go under ``"tta"``.

    Returns:
        ``task``; ``accuracy``, ``loss``, ``per_class`` (accuracy, precision, recall, F1, support),
        ``confusion_matrix``, ``ece``, ``macro_f1``, ``balanced_accuracy`` (multi-label runs:
        ``map``, ``loss``, ``f1_macro``, ``f1_micro``, ``exact_match``, ``per_label``,
        ``thresholds``, see :func:`~regraft.inference.metrics.multilabel_metrics`), ``n_images``,
        ``classes``, ``data``, ``skipped``, ``weights``, ``precision``, ``batch_size``,
        ``summary`` (the run's ``summary.json`` figures, when evaluated on its own split) and
        ``tta`` (None, or the same metrics with ``views``, ``n_views`` and ``changed``: images
        whose top-1, or label set, it changed).

    Raises:
        RunError, DataError, ConfigError: as the message says.
    """
    dev = resolve_device(device)
    numerics, tta = _numerics(precision), TTA.parse(tta)
    loaded = _loaded(run, device=dev, weights=weights)
    numerics.prepare(loaded.model)
    samples, where, own_batch = _run_samples(loaded, data)
    bs = _batch_size(batch_size or own_batch or 64)
    logits, targets, sizes, skipped = [], [], [], []
    for batch in image_batches(samples, loaded.transform(), batch_size=bs, tta=tta, path_of=lambda s: s[0]):
        skipped += [str(item[0]) for item, _ in batch.failed]
        if batch.items:
            logits.append(forward_views(numerics, loaded.model, batch))
            targets += [label for _, label in batch.items]
            sizes.append(len(batch.items))
    if not logits:
        raise DataError(f"none of the {len(samples)} images in {where} could be decoded (e.g. {skipped[0]}); run 'regraft scan' on it")
    views, task = torch.cat(logits), _task(loaded)
    y = rules(task).targets(targets, len(loaded.classes))
    metrics = _metrics(views[:, 0], y, loaded, sizes)
    metrics.update({
        "task": task.value, "classes": loaded.classes, "data": where, "skipped": skipped, "weights": str(loaded.weights),
        "precision": numerics.precision, "batch_size": bs, "summary": _summary(loaded) if data is None else None, "tta": None,
    })
    if tta is not TTA.NONE:
        p = mean_probs(views, multilabel=task.multilabel)
        # log-probabilities (their cross-entropy is the NLL); multi-label: the logit of the averaged sigmoids
        combined = (p.log() - (1 - p).log()).float() if task.multilabel else p.log().float()
        metrics["tta"] = _metrics(combined, y, loaded, sizes) | {
            "views": tta.value, "n_views": tta.n_views, "changed": _changed(combined, views[:, 0], loaded) if len(y) else 0,
        }
    return metrics


def _metrics(logits: torch.Tensor, y: torch.Tensor, loaded: LoadedRun, sizes: list[int]) -> dict[str, Any]:
    thresholds = read_thresholds(loaded.card)
    if thresholds is not None:
        return multilabel_metrics(logits, y, loaded.classes, thresholds=thresholds, batches=sizes)
    return classification_metrics(logits, y, loaded.classes, batches=sizes)


def _changed(combined: torch.Tensor, plain: torch.Tensor, loaded: LoadedRun) -> int:
    """Images whose decision TTA changed: the top-1 class, or the set of labels above their thresholds."""
    thresholds = read_thresholds(loaded.card)
    if thresholds is None:
        return int((combined.argmax(1) != plain.argmax(1)).sum())
    limits = torch.tensor(thresholds, dtype=torch.float64)
    decide = lambda z: torch.sigmoid(z.double()) > limits  # noqa: E731
    return int((decide(combined) != decide(plain)).any(dim=1).sum())


def _batch_size(value: int) -> int:
    from regraft.errors import ConfigError

    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--batch-size must be a positive integer; got {value!r}")
    return value


def _summary(loaded: LoadedRun) -> dict[str, Any] | None:
    """The figures ``summary.json`` holds for the kept weights (None when it is absent or unreadable)."""
    try:
        summary = read_run_json(loaded.run, "summary.json")
    except RunError:
        return None
    if not isinstance(summary, dict):
        return None
    primary = str(summary.get("primary") or "val_acc")
    keys = (f"best_{primary}", "best_val_loss") if loaded.weights is WeightsChoice.BEST else ()
    return {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float))} or None


def predict(
    run: str | Path | LoadedRun,
    paths: Sequence[str | Path],
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    weights: str = "best",
    precision: str = "fp32",
    tta: str | TTA = TTA.NONE,
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for images or folders of images.

    Args:
        run: a run folder, or a :class:`LoadedRun`.
        paths: image files or folders of images.
        topk: classes per image (at most the number of classes).
        batch_size: images per forward pass.
        device, weights, precision, tta: as for :func:`evaluate_run`.

    Returns:
        One dict per image, in input order: ``path`` and ``top`` (a list of ``{"class", "prob"}``;
        with ``tta`` also ``plain``, the top-1 without it), or ``path`` and ``error``. A
        multi-label run adds ``labels``: every label above its threshold, ``{"class", "prob",
        "threshold"}``, most probable first (``top`` then ranks the labels' sigmoids; ``plain``
        is the labels above their thresholds without TTA).

    Raises:
        DataError: a path does not exist or no image is found; RunError, ConfigError.
    """
    from regraft.errors import ConfigError

    if not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"--topk must be at least 1; got {topk!r}")
    dev = resolve_device(device)
    numerics, tta = _numerics(precision), TTA.parse(tta)
    loaded = _loaded(run, device=dev, weights=weights)  # the run first: it is the first thing named
    files = expand_paths(paths)
    numerics.prepare(loaded.model)
    k = min(topk, len(loaded.classes))
    thresholds = read_thresholds(loaded.card)
    multilabel = thresholds is not None
    results: dict[int, dict[str, Any]] = {}
    for batch in image_batches(list(enumerate(files)), loaded.transform(), batch_size=_batch_size(batch_size), tta=tta, path_of=lambda s: s[1]):
        for (i, f), error in batch.failed:
            results[i] = {"path": str(f), "error": f"cannot read image: {error.reason}"}
        if not batch.items:
            continue
        views = forward_views(numerics, loaded.model, batch)
        probs = mean_probs(views, multilabel=multilabel)
        plain = mean_probs(views[:, :1], multilabel=multilabel)
        for row, (i, f) in enumerate(batch.items):
            results[i] = {"path": str(f), "top": _top(probs[row], loaded.classes, k)}
            if multilabel:
                results[i]["labels"] = above_thresholds(probs[row].tolist(), loaded.classes, thresholds)
            if tta is not TTA.NONE:
                results[i]["plain"] = (above_thresholds(plain[row].tolist(), loaded.classes, thresholds) if multilabel
                                       else _top(plain[row], loaded.classes, 1)[0])
    return [results[i] for i in range(len(files))]


def _top(probs: torch.Tensor, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, ties broken by class order (as the ONNX runtime does)."""
    order = sorted(range(len(classes)), key=lambda j: (-float(probs[j]), j))[:k]
    return [{"class": classes[j], "prob": round(float(probs[j]), 6)} for j in order]
