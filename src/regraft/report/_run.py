"""Draw everything for a finished run: from logits, targets and datasets to PNGs and report.html.

This is the one place in ``report/`` that knows about tensors and datasets, and only by duck
typing: logits/targets are anything ``numpy.asarray`` takes (torch tensors are moved to the CPU
first); a dataset is anything with ``len`` and ``ds[i] -> (image, label)``, and when it has a
``samples`` list of ``(path, label)`` (like torchvision's ``ImageFolder``) the original file is
shown instead of the transformed tensor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regraft.errors import DataError
from regraft.report._samples import sample_grid
from regraft.report.grids import plot_samples, plot_top_losses
from regraft.report.html import write_html_report
from regraft.report.plots import plot_confusion, plot_curves
from regraft.runs import RunDir

__all__ = ["draw_run", "confusion_matrix", "to_image"]

log = logging.getLogger(__name__)
_THUMB = 160  # pixels: enough to recognise an image in a 2-inch grid cell


def draw_run(
    run: RunDir | str | Path,
    *,
    classes: Sequence[str],
    logits: Any = None,
    targets: Any = None,
    val_dataset: Any = None,
    train_dataset: Any = None,
    indices: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    top_n: int = 16,
    n_samples: int = 16,
    batch_transform: Callable[..., Any] | None = None,
    thresholds: Sequence[float] | None = None,
) -> list[Path]:
    """Write a run's plots (curves, confusion matrix, top losses, samples) and its report.html.

    Each figure is drawn independently: one that fails is logged as a warning and the rest, and
    the report, are still written. Figures whose inputs were not given are skipped.

    Args:
        run: the run folder (its ``metrics.csv`` and ``summary.json`` are read).
        classes: class names in label order.
        logits: (N, K) validation logits of the best weights.
        targets: (N,) validation labels.
        val_dataset: the validation dataset, for the top-loss images.
        train_dataset: the training dataset (with augmentation), for ``samples.png``.
        indices: the dataset index of each logits row, when it is not simply ``0..N-1``
            (e.g. gathered from several processes).
        mean, std: the normalisation, to show tensors in true colour (else each image is
            stretched to its own range).
        top_n: images in ``top_losses.png``.
        n_samples: images in ``samples.png``.
        batch_transform: the run's MixUp/CutMix transform (``data.mixup_cutmix``), when it has
            one: ``samples.png`` then shows the mixed images the model trains on, each titled
            with its soft label.
        thresholds: a multi-label run's per-label thresholds (``targets`` are then ``(N, L)``
            multi-hot rows): there is no confusion matrix, and ``top_losses.png`` shows the
            images with the highest mean binary cross-entropy, titled with their true and
            predicted label sets.

    Returns:
        The files written, report.html last.

    Raises:
        RunError: the run folder does not exist (from :func:`write_html_report`).
    """
    folder = Path(getattr(run, "path", run))
    norm = (mean, std)
    multilabel = thresholds is not None
    steps: list[tuple[str, Callable[[Path], Path | None]]] = [
        ("curves.png", lambda p: _curves(folder, p)),
        ("confusion_matrix.png", lambda p: None if multilabel else _confusion(logits, targets, classes, p)),
        ("top_losses.png", lambda p: _top_losses(logits, targets, classes, val_dataset, indices, norm, p, top_n, thresholds)),
        ("samples.png", lambda p: _samples(train_dataset, classes, norm, p, n_samples, batch_transform)),
    ]
    written: list[Path] = []
    for name, draw in steps:
        try:
            out = draw(folder / name)
        except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the others
            log.warning("could not draw %s: %s", name, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            continue
        if out is not None:
            written.append(out)
    written.append(write_html_report(folder))
    return written


def confusion_matrix(targets: Any, predictions: Any, *, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs as a ``num_classes``×``num_classes`` int64 array.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 1, 0], num_classes=2).tolist()
        [[1, 0], [1, 1]]
    """
    y = _numpy(targets).astype(np.int64).ravel()
    p = _numpy(predictions).astype(np.int64).ravel()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    ok = (y >= 0) & (y < num_classes) & (p >= 0) & (p < num_classes)
    np.add.at(cm, (y[ok], p[ok]), 1)
    return cm


def to_image(x: Any, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """An HWC uint8 array (gray or RGB) from a CHW/HWC tensor or array.

    Integer pixels are taken as 0-255, except uint16 and int32 ones (regraft's 16-bit crops), which
    are 0-65535; float ones are un-normalised with ``mean``/``std`` when given, else stretched to
    their own range. Images of more than 3 channels show their first three as RGB (R, G, B of
    RGBA or RGB+near-infrared), of 2 channels their first (docs/channels.md).
    """
    raw = _numpy(x)
    arr = raw.astype(np.float64)
    if arr.ndim == 3 and (
        (arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3)) or arr.shape[0] < min(arr.shape[1], arr.shape[2])
    ):
        arr = arr.transpose(1, 2, 0)
    if np.issubdtype(raw.dtype, np.integer):
        top = 65535.0 if raw.dtype in (np.uint16, np.int32) else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255)
        return _shown_channels(np.rint(arr) if top > 255.0 else arr).astype(np.uint8)
    if mean is not None and std is not None and arr.ndim == 3 and len(mean) == arr.shape[-1]:
        arr = np.clip(arr * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
    else:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return (_shown_channels(arr) * 255.0 + 0.5).astype(np.uint8)


def _shown_channels(arr: np.ndarray) -> np.ndarray:
    """HW or HWC with 3 channels: one channel as gray, 2 as their first, more as their first three."""
    if arr.ndim != 3:
        return arr
    if arr.shape[-1] in (1, 2):
        return arr[..., 0]
    return arr[..., :3]


# --------------------------------------------------------------------------------------- steps


def _curves(folder: Path, path: Path) -> Path | None:
    rows = RunDir(folder).read_metrics()
    summary = _summary(folder)
    return plot_curves(rows, path, title=_title(summary), summary=summary) if rows else None


def _confusion(logits: Any, targets: Any, classes: Sequence[str], path: Path) -> Path | None:
    if logits is None or targets is None:
        return None
    preds = _numpy(logits).argmax(axis=1) if len(_numpy(logits)) else np.zeros(0, dtype=np.int64)
    return plot_confusion(confusion_matrix(targets, preds, num_classes=len(classes)), classes, path)


def _top_losses(logits, targets, classes, dataset, indices, norm, path: Path, n: int, thresholds=None) -> Path | None:
    if logits is None or targets is None or dataset is None:
        return None
    z = _numpy(logits).astype(np.float64)
    n_rows = len(_numpy(targets))
    rows = list(indices) if indices is not None else list(range(n_rows))
    if indices is None and n_rows != len(dataset):
        log.warning("top_losses.png skipped: %d logits for %d images and no indices to match them", n_rows, len(dataset))
        return None
    if thresholds is not None:
        return _top_losses_multilabel(z, _numpy(targets).astype(np.float64), classes, dataset, rows, norm, path, n, thresholds)
    y = _numpy(targets).astype(np.int64).ravel()
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    preds = probs.argmax(axis=1)
    losses = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))
    wrong = np.flatnonzero(preds != y)
    worst = wrong[np.argsort(-losses[wrong], kind="stable")][:n]
    items = [
        (_dataset_image(dataset, rows[i], norm), classes[y[i]], classes[preds[i]], float(probs[i, preds[i]]), float(losses[i]))
        for i in worst
    ]
    return plot_top_losses(items, path, n=n)


def _top_losses_multilabel(z, y, classes, dataset, rows, norm, path: Path, n: int, thresholds) -> Path | None:
    """The images whose predicted label set is wrong, highest mean binary cross-entropy first."""
    p = 1.0 / (1.0 + np.exp(-z))
    predicted = p > np.asarray(thresholds, dtype=np.float64)
    truth = y > 0.5
    q = np.clip(p, 1e-12, 1 - 1e-12)
    losses = -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(axis=1)
    wrong = np.flatnonzero((predicted != truth).any(axis=1))
    worst = wrong[np.argsort(-losses[wrong], kind="stable")][:n]

    def names(mask: np.ndarray) -> str:
        return "+".join(c for c, on in zip(classes, mask, strict=True) if on) or "(none)"

    confidence = np.where(predicted, p, 1 - p)  # how sure each decision was
    items = [
        (_dataset_image(dataset, rows[i], norm), names(truth[i]), names(predicted[i]),
         float(confidence[i][predicted[i] != truth[i]].max()), float(losses[i]))
        for i in worst
    ]
    heading = "top losses: true labels / predicted labels / confidence of the worst wrong decision"
    return plot_top_losses(items, path, n=n, heading=heading, empty="no validation image with a wrong label set")


def _samples(dataset: Any, classes: Sequence[str], norm, path: Path, n: int, batch_transform: Any) -> Path | None:
    grid = sample_grid(dataset, classes, to_image=lambda x: to_image(x, mean=norm[0], std=norm[1]), n=n, batch_transform=batch_transform)
    if grid is None:
        return None
    images, titles, heading = grid
    return plot_samples(images, titles, path, title=heading)


# --------------------------------------------------------------------------------------- helpers


def _dataset_image(dataset: Any, index: int, norm: tuple[Any, Any]) -> np.ndarray:
    """The original file when the dataset lists paths, else its (transformed) tensor (also for
    runs of other channel counts than 1 and 3, whose files are not pictures Pillow can show)."""
    samples = getattr(dataset, "samples", None)
    pixels = getattr(getattr(dataset, "transform", None), "pixels", None)
    if samples is not None and getattr(pixels, "channels", 3) in (1, 3):
        entry = samples[index]
        file = entry[0] if isinstance(entry, (tuple, list)) else getattr(entry, "path", entry)
        if isinstance(file, (str, Path)):
            with contextlib.suppress(OSError, ValueError, DataError):
                return _thumbnail(Path(file))
    item = dataset[index]
    return to_image(item[0] if isinstance(item, (tuple, list)) else item, mean=norm[0], std=norm[1])


def _thumbnail(path: Path) -> np.ndarray:
    """The file upright in 8-bit RGB as regraft decodes it (16-bit images scaled, not clipped)."""
    from regraft.data.imageio import load_image

    im = load_image(path)
    im.thumbnail((_THUMB, _THUMB))
    return np.asarray(im)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "is_floating_point") and x.is_floating_point():
            x = x.double()
        return x.numpy()
    return np.asarray(x)


def _summary(folder: Path) -> dict[str, Any] | None:
    import json

    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _title(summary: dict[str, Any] | None) -> str | None:
    if not summary:
        return None
    return " · ".join(str(summary[k]) for k in ("model", "strategy") if summary.get(k)) or None
