"""Image files -> batches of model inputs, through the one decode path of evaluation.

Files are decoded by :func:`regraft.data.views.read_eval_pixels` (the call the validation dataset
and the decode cache make) on a few threads, cut into :class:`~regraft.data.views.TTA` views and
normalised into one float batch per view with :meth:`ImageTransform.normalize`; so view 0 of a
batch is, bit for bit, the batch training's validation loader builds from the same files.
A file that cannot be decoded is reported with its reason and left out of its batch (as
validation's ``on_error="drop"`` does), never fatal.

Example:
    >>> for batch in image_batches(files, transform, batch_size=32):    # doctest: +SKIP
    ...     logits = INFERENCE_NUMERICS(model, batch.views[0])
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from regraft.data._system import cpu_count
from regraft.data.imageio import ImageDecodeError
from regraft.data.views import TTA, read_eval_pixels, views

__all__ = ["Batch", "image_batches", "forward_views", "mean_probs"]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One batch: ``views[v]`` is the ``(n, C, h, w)`` input of view ``v`` for the ``items`` decoded;
    ``failed`` holds ``(item, error)`` for the files that were not."""

    views: list[torch.Tensor]
    items: list[Any]
    failed: list[tuple[Any, ImageDecodeError]] = field(default_factory=list)


def _decode(path: str, resize: Any) -> np.ndarray | ImageDecodeError:
    try:
        return read_eval_pixels(path, resize)
    except ImageDecodeError as exc:
        return exc


def image_batches(
    items: Sequence[Any],
    transform: Any,
    *,
    batch_size: int,
    tta: TTA | str = TTA.NONE,
    path_of: Any = None,
    threads: int | None = None,
) -> Iterator[Batch]:
    """Decode ``items`` (paths, or anything ``path_of`` maps to a path) in order, ``batch_size`` at a time.

    Args:
        items: what to decode, in order (file paths, or ``(path, label)`` pairs with ``path_of``).
        transform: the run's evaluation :class:`~regraft.data.transforms.ImageTransform`.
        batch_size: items per batch (a batch is smaller only where files failed, and at the end).
        tta: which views to cut (view 0: the plain centre crop).
        path_of: ``item -> path`` (default: the item itself).
        threads: decoding threads (default: the CPUs this process may use, at most 8).

    Yields:
        :class:`Batch` objects; the next batch is decoded while the caller runs the model.
    """
    tta = TTA.parse(tta)
    path_of = path_of or (lambda item: item)
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, threads or min(8, cpu_count())), thread_name_prefix="regraft-eval") as pool:
        def submit(chunk: Sequence[Any]) -> list[Future]:
            return [pool.submit(_decode, str(path_of(item)), transform.resize) for item in chunk]

        pending = submit(chunks[0]) if chunks else []
        for index, chunk in enumerate(chunks):
            decoded = [f.result() for f in pending]
            pending = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
            yield _assemble(chunk, decoded, transform, tta)


def _assemble(chunk: Sequence[Any], decoded: list[Any], transform: Any, tta: TTA) -> Batch:
    kept = [(item, pixels) for item, pixels in zip(chunk, decoded, strict=True) if not isinstance(pixels, ImageDecodeError)]
    failed = [(item, error) for item, error in zip(chunk, decoded, strict=True) if isinstance(error, ImageDecodeError)]
    for _item, error in failed:
        log.warning("skipped %s: %s", error.path, error.reason)
    h, w = transform.size
    channels = transform.pixels.channels
    out = [torch.empty((len(kept), channels, h, w), dtype=torch.float32) for _ in range(tta.n_views)]
    for i, (_item, pixels) in enumerate(kept):
        for v, view in enumerate(views(pixels, transform.size, tta=tta)):
            chw = transform.tensor(np.ascontiguousarray(view)).permute(2, 0, 1)
            transform.normalize(chw, out=out[v][i])
    return Batch(out, [item for item, _ in kept], failed)


def forward_views(numerics: Any, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``(n, views, K)`` float32 logits on the CPU: one forward per view, each over the whole batch
    (view 0's forward is exactly validation's)."""
    if not batch.items:
        return torch.zeros(0, len(batch.views), 0)
    return torch.stack([numerics(model, x).cpu() for x in batch.views], dim=1)


def mean_probs(logits: torch.Tensor, *, multilabel: bool = False) -> torch.Tensor:
    """``(n, views, K)`` logits -> ``(n, K)`` float64 softmax probabilities averaged over the views
    (float64, as the ONNX runtime computes them; one view gives its plain softmax). Multi-label:
    each label's sigmoid, averaged over the views."""
    z = logits.double()
    return (torch.sigmoid(z) if multilabel else z.softmax(-1)).mean(1)
