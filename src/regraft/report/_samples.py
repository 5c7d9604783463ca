"""What ``samples.png`` shows: training images after augmentation, and mixed when the run mixes.

The images are the dataset's own augmented crops (``ImageDataset.raw`` when there is one: the
uint8 crop before normalisation, true colours, a fixed seed per image). When the run trains with
MixUp/CutMix (``data.mixup_cutmix``), the crops go through that same batch transform and each
cell is titled with its soft label ("MixUp: 62% cat + 38% dog"), because that is what the model
is trained on. Every random number drawn here comes from forked, seeded generators: training's
streams are left as they were and the same run draws the same picture.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from regraft.report.grids import soft_label

__all__ = ["sample_grid", "preserved_rng"]

log = logging.getLogger(__name__)
_PLAIN = "training samples (after augmentation)"


def sample_grid(
    dataset: Any,
    classes: Sequence[str],
    *,
    to_image: Callable[[Any], np.ndarray],
    n: int,
    batch_transform: Callable[..., Any] | None = None,
) -> tuple[list[np.ndarray], list[str], str] | None:
    """``(images, titles, heading)`` for ``samples.png``, or None when the dataset gives no image.

    Args:
        dataset: the training dataset (``len`` and ``ds[i] -> (image, label)``).
        classes: class names in label order.
        to_image: turns one dataset image (tensor or array) into an HWC uint8 array.
        n: how many images.
        batch_transform: the run's ``(images, labels) -> (images, soft labels)`` mixing transform,
            or None. A torchvision ``RandomChoice`` of several (MixUp or CutMix) shows each kind
            on its own share of the grid.
    """
    if dataset is None or len(dataset) == 0:
        return None
    picks = sorted(np.random.default_rng(0).choice(len(dataset), size=min(n, len(dataset)), replace=False).tolist())
    images, labels = [], []
    with preserved_rng():  # augmentations draw random numbers; training's streams stay as they were
        for i in picks:
            item = _augmented(dataset, i)
            if item is None:  # an unreadable file the dataset drops
                continue
            images.append(to_image(item[0]))
            labels.append(_label(item[1]))
        if not images:
            return None
        if batch_transform is None:
            return images, [_title(y, classes) for y in labels], _PLAIN
        mixed = _mix(images, labels, classes, batch_transform)
    if mixed is None:
        return images, [_title(y, classes) for y in labels], _PLAIN
    return mixed


def _label(y: Any) -> int | tuple[int, ...]:
    """A class index, or (a multi-hot row of a multi-label run) the tuple of its labels."""
    if hasattr(y, "ndim") and getattr(y, "ndim", 0) >= 1:
        return tuple(int(i) for i in np.flatnonzero(np.asarray(y) > 0.5))
    return int(y)


def _title(y: int | tuple[int, ...], classes: Sequence[str]) -> str:
    if isinstance(y, tuple):
        return "+".join(classes[i] for i in y) or "(no label)"
    return classes[y]


def _mix(images: list[np.ndarray], labels: list[Any], classes: Sequence[str], transform: Callable[..., Any]):
    """The crops through ``transform`` two at a time (each pair draws its own mixing weight, as
    every training batch does), with soft-label titles. None when the crops cannot be batched."""
    import torch

    if len({im.shape for im in images}) != 1:
        log.warning("samples.png shows the crops unmixed: they differ in size (%s)", sorted({im.shape for im in images}))
        return None
    x = torch.from_numpy(np.stack([im if im.ndim == 3 else im[..., None] for im in images])).permute(0, 3, 1, 2).float() / 255.0
    if labels and isinstance(labels[0], tuple):  # multi-label: multi-hot rows, mixed as they are
        y = torch.zeros(len(labels), len(classes))
        for i, positives in enumerate(labels):
            y[i, list(positives)] = 1.0
    else:
        y = torch.tensor(labels, dtype=torch.long)
    kinds = _kinds(transform)
    shares = np.array_split(np.arange(len(images)), len(kinds))
    out, titles = [], []
    torch.manual_seed(0)  # inside preserved_rng: a fixed picture, training's generator untouched
    for kind, share in zip(kinds, shares, strict=True):
        name = _name(kind)
        for pair in np.array_split(share, max(1, len(share) // 2)):
            xb, yb = kind(x[pair], y[pair])
            if yb.ndim == 1:  # a transform that left labels hard
                yb = torch.nn.functional.one_hot(yb, len(classes)).float()
            for img, weights in zip(xb, yb, strict=True):
                out.append((img.clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy() * 255.0 + 0.5).astype(np.uint8))
                titles.append(f"{name}\n{soft_label(weights.tolist(), classes)}")
    names = " or ".join(dict.fromkeys(_name(k) for k in kinds))
    return out, titles, f"training samples after augmentation and {names} (titles: the soft labels trained on)"


def _name(transform: Callable[..., Any]) -> str:
    """"MixUp", "CutMix" (torchvision's classes), or a function's own name."""
    return getattr(transform, "__name__", None) or type(transform).__name__


def _kinds(transform: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The transforms a torchvision ``RandomChoice`` picks from; else the transform itself."""
    choice = sys.modules.get("torchvision.transforms.v2")
    if choice is not None and isinstance(transform, choice.RandomChoice):
        return list(transform.transforms)
    return [transform]


def _augmented(dataset: Any, index: int) -> Any:
    """``(image, label)`` after augmentation: regraft's ``ImageDataset.raw`` gives the uint8 crop
    before normalisation (true colours), with a fixed seed per image (the same picture each time)."""
    raw = getattr(dataset, "raw", None)
    if callable(raw):
        with contextlib.suppress(TypeError):  # raw() needs regraft's own transforms
            return raw((index, index))
    return dataset[index]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) random states restored on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")
    ctx = torch.random.fork_rng(devices=[]) if torch is not None else contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
