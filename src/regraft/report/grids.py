"""Image grids: the most confidently wrong validation images, and augmented training samples.

Images are HWC ``uint8`` arrays (HW grayscale and float images in [0, 1] are accepted too), so
these functions know nothing about tensors or datasets; :func:`regraft.report.draw_run` turns a
dataset into such arrays.

Example:
    >>> import numpy as np
    >>> img = np.zeros((32, 32, 3), dtype=np.uint8)
    >>> plot_top_losses([(img, "cat", "dog", 0.97, 3.5)], "runs/exp1/top_losses.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regraft.report._figure import ReportError, png_figure, short_label

__all__ = ["plot_top_losses", "plot_samples", "soft_label", "TopLoss"]

# (image HWC uint8, true label, predicted label, probability of the prediction, loss)
TopLoss = tuple[Any, str, str, float, float]

_CELL_INCHES = 2.1


def plot_top_losses(items: Sequence[TopLoss], path: str | Path, *, n: int = 16, heading: str | None = None,
                    empty: str = "no misclassified validation images") -> Path:
    """Draw ``top_losses.png``: the ``n`` highest-loss images, each titled "true / pred / prob".

    With no items (nothing misclassified) the figure says so instead of failing.

    Args:
        items: ``(image, true_label, predicted_label, probability_of_predicted, loss)`` tuples,
            in any order; they are sorted by loss, highest first.
        path: where to write the PNG.
        n: how many images to show at most.
        heading: the figure's title (default: what the titles of a single-label run say).
        empty: what the figure says when there are no items.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: ``n`` < 1, an item is not a 5-tuple, or an image is not HW/HWC.
    """
    if n < 1:
        raise ReportError(f"n={n} top losses requested, expected at least 1; pass n=16 or similar")
    for item in items:
        if len(item) != 5:
            raise ReportError(
                f"a top-loss item has {len(item)} fields, expected 5: (image, true, predicted, probability, loss)"
            )
    chosen = sorted(items, key=lambda it: -float(it[4]))[:n]
    images = [_displayable(it[0]) for it in chosen]
    titles = [
        f"{short_label(t, limit=12)} / {short_label(p, limit=12)} / {float(prob):.2f}\nloss {float(loss):.2f}"
        for _, t, p, prob, loss in chosen
    ]
    heading = heading or "top losses: true / predicted / probability of prediction"
    return _grid(images, titles, path, heading=heading, empty=empty, title_color="#b22222")


def plot_samples(
    images: Sequence[Any],
    labels: Sequence[str | Sequence[float]],
    path: str | Path,
    *,
    title: str | None = None,
    classes: Sequence[str] | None = None,
) -> Path:
    """Draw ``samples.png``: a grid of (augmented) training images with their labels.

    A label is a class name, or, for a mixed image (MixUp/CutMix), its soft label: one weight
    per class, drawn as "62% cat + 38% dog" (``classes`` names the weights).

    Args:
        images: HWC ``uint8`` arrays (or HW, or float in [0, 1]).
        labels: one class name, or one sequence of per-class weights, per image.
        path: where to write the PNG.
        title: the heading; defaults to "training samples (after augmentation)".
        classes: class names in label order; needed for soft labels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: no images, a different number of labels, an image that is not HW/HWC, or
            a soft label without ``classes`` (or with another length).

    Example:
        >>> plot_samples([img, img], ["cat", [0.62, 0.38]], "samples.png", classes=["cat", "dog"])  # doctest: +SKIP
    """
    if len(images) == 0:
        raise ReportError("no sample images to draw; pass at least one image")
    if len(images) != len(labels):
        raise ReportError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    shown = [_displayable(im) for im in images]
    names = [_lines(lbl) if isinstance(lbl, str) else _soft(lbl, classes) for lbl in labels]
    return _grid(shown, names, path, heading=title or "training samples (after augmentation)", empty="", title_color="#222222")


def soft_label(weights: Sequence[float], classes: Sequence[str], *, at_least: float = 0.005) -> str:
    """A soft label as text, heaviest first: "62% cat + 38% dog"; one class alone is just its name.

    Example:
        >>> soft_label([0.38, 0.62, 0.0], ["dog", "cat", "fox"])
        '62% cat + 38% dog'
    """
    parts = sorted(((float(w), c) for w, c in zip(weights, classes, strict=True) if float(w) >= at_least), key=lambda p: -p[0])
    if len(parts) == 1 or (parts and parts[0][0] >= 1 - at_least):
        return short_label(parts[0][1], limit=22)
    return " + ".join(f"{w * 100:.0f}% {short_label(c, limit=12)}" for w, c in parts[:3])


def _lines(text: str) -> str:
    """Each line of a title cut to what a grid cell holds at 7.5 pt (about 36 characters)."""
    return "\n".join(short_label(line, limit=36) for line in text.split("\n"))


def _soft(label: Any, classes: Sequence[str] | None) -> str:
    weights = list(np.asarray(label, dtype=float).ravel())
    if classes is None or len(classes) != len(weights):
        got = "no classes" if classes is None else f"{len(classes)} classes"
        raise ReportError(f"a soft label has {len(weights)} weights but {got} were given; pass classes= with one name per weight")
    return soft_label(weights, classes)


def _displayable(image: Any) -> np.ndarray:
    """An HW or HWC uint8 array (channels 1, 3 or 4) from whatever image-like was given."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ReportError(f"image of shape {arr.shape} cannot be drawn; pass HW or HWC arrays (C = 1, 3 or 4), e.g. img.permute(1, 2, 0)")
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(float)
    if np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    return np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)


def _grid(images: list[np.ndarray], titles: list[str], path: str | Path, *, heading: str, empty: str, title_color: str) -> Path:
    count = len(images)
    ncols = max(1, min(count, math.ceil(math.sqrt(count)))) if count else 1
    nrows = max(1, math.ceil(count / ncols))
    figsize = (max(ncols * _CELL_INCHES, 4.0), nrows * (_CELL_INCHES + 0.35) + 0.4)
    with png_figure(path, figsize=figsize) as fig:
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, img, text in zip(axes, images, titles, strict=False):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(text, fontsize=7.5, color=title_color)
        if not count:
            axes[0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=11, transform=axes[0].transAxes)
        fig.suptitle(textwrap.fill(heading, width=max(30, int(figsize[0] * 13))), fontsize=10)  # ~13 characters an inch
    return Path(path)
