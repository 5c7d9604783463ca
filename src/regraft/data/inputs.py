"""What a run's inputs are when it asks for ``in_chans``: the pixel format its files call for and
the per-channel mean/std it normalises with.

- **The pixel format** (:func:`detect_pixels`): every file's header is read (cheap, threads).
  The run keeps 16 bits when any image holds more than 8 (8-bit images then read times 257,
  exactly); a file whose channels cannot give ``in_chans`` stops the run with one line naming
  it, before any weight is loaded.
- **Mean and std** (:func:`input_config`), in this order: the recipe's ``mean``/``std``; the
  weights' own when the channel count is theirs; for one channel the mean of their three
  values (the gray of an RGB statistic); otherwise measured on the training images
  (:func:`channel_stats`: at most :data:`STATS_IMAGES` of them, a seeded sample, each at the
  evaluation resize, every pixel counted). ``mean_std_from`` in the data config (and so in
  ``model.json``) says which.

Example:
    >>> dcfg = input_config(zoo.data_config("resnet18"), channels=4, paths=paths, seed=0)   # doctest: +SKIP
    >>> dcfg.input_size[0], dcfg.mean_std_from                                               # doctest: +SKIP
    (4, 'data: 120 of 120 training images')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from regraft import zoo
from regraft.data._system import cpu_count
from regraft.data.imageio import ImageDecodeError, SourceInfo, probe_source
from regraft.data.pixels import PixelFormat
from regraft.data.views import eval_resize, read_eval_pixels
from regraft.errors import DataError

__all__ = ["input_config", "detect_pixels", "channel_stats", "STATS_IMAGES"]

log = logging.getLogger(__name__)

STATS_IMAGES = 500  # images measured for mean/std (a seeded sample beyond that)


def _threads(threads: int | None) -> int:
    return max(1, threads or min(8, cpu_count()))


def _probe(path: str) -> SourceInfo | None:
    try:
        return probe_source(path)
    except ImageDecodeError:
        return None  # unreadable files are check_readable's to report; training skips them


def detect_pixels(paths: Sequence[str], *, channels: int, threads: int | None = None) -> PixelFormat:
    """The pixel format ``paths`` call for with ``channels`` channels: 16 bits if any file holds
    more than 8, else 8.

    Raises:
        DataError: files whose channels cannot give ``channels`` (how many, and the first one).
    """
    with ThreadPoolExecutor(_threads(threads), thread_name_prefix="regraft-probe") as pool:
        infos = list(pool.map(_probe, paths))
    wrong = [(p, i.channel_problem(channels)) for p, i in zip(paths, infos, strict=True) if i is not None and i.channel_problem(channels)]
    if wrong:
        path, why = wrong[0]
        raise DataError(
            f"{len(wrong)} of {len(paths)} images cannot be read as {channels} channel{'s' if channels != 1 else ''} "
            f"(e.g. {path}: {why}); remove them, or set --in-chans to their channel count (docs/channels.md)"
        )
    depth = 16 if any(i is not None and i.depth == 16 for i in infos) else 8
    return PixelFormat(channels, depth)


def channel_stats(
    paths: Sequence[str], *, data_config: zoo.DataConfig, pixels: PixelFormat, seed: int = 0,
    limit: int = STATS_IMAGES, threads: int | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std (in 0-1 units) of training images at the evaluation resize.

    Args:
        paths: the training images.
        data_config: their size, crop and interpolation; pixels: their channels and bits.
        seed: picks the sample when there are more than ``limit`` images.
        limit: how many images are measured at most.

    Returns:
        ``(mean, std, images measured)``; sums are kept in float64, every pixel counts once.

    Raises:
        DataError: none of the sampled images decodes.
    """
    order = np.arange(len(paths))
    if len(paths) > limit:
        order = np.sort(np.random.default_rng(seed).choice(len(paths), size=limit, replace=False))
    resize = eval_resize(data_config.input_size, data_config.crop_pct, data_config.interpolation, pixels=pixels)
    sums = np.zeros((3, pixels.channels), dtype=np.float64)  # pixel count, sum, sum of squares

    def measure(index: int) -> np.ndarray | None:
        try:
            x = read_eval_pixels(paths[int(index)], resize).reshape(-1, pixels.channels).astype(np.float64) / pixels.max_value
        except ImageDecodeError:
            return None
        return np.stack([np.full(pixels.channels, float(len(x))), x.sum(0), np.square(x).sum(0)])

    with ThreadPoolExecutor(_threads(threads), thread_name_prefix="regraft-stats") as pool:
        parts = [p for p in pool.map(measure, order) if p is not None]
    if not parts:
        raise DataError(f"none of {len(order)} training images decodes, so their mean and std cannot be measured; run 'regraft scan'")
    for part in parts:
        sums += part
    mean = sums[1] / sums[0]
    std = np.sqrt(np.maximum(sums[2] / sums[0] - np.square(mean), 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel: leave its scale alone
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), len(parts)


def input_config(
    data_config: zoo.DataConfig, *, channels: int, paths: Sequence[str], seed: int = 0,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, threads: int | None = None,
    stats_paths: Sequence[str] | None = None,
) -> zoo.DataConfig:
    """The run's data config for ``channels`` input channels (see the module doc).

    Args:
        data_config: the weights' preprocessing (size, crop, interpolation, their mean/std).
        channels: the model's input channels (``in_chans``).
        paths: every image the run reads (their headers decide the bits and are checked).
        seed: the sample of images measured for mean/std.
        mean, std: the recipe's values (both or either), which win.
        stats_paths: the images mean/std are measured on (default ``paths``): the training set.

    Returns:
        A :class:`~regraft.zoo.DataConfig` with ``input_size[0] == channels``, the ``bit_depth``
        and ``mean_std_from``.

    Raises:
        DataError: a file cannot give ``channels`` channels, or no training image decodes.
        ConfigError: ``channels`` outside 1-256.
    """
    pixels = detect_pixels(paths, channels=channels, threads=threads)
    have = int(data_config.input_size[0])
    if channels == have:
        base_mean, base_std, source = tuple(data_config.mean), tuple(data_config.std), data_config.mean_std_from
    elif channels == 1 and have == 3:
        base_mean, base_std = (float(np.mean(data_config.mean)),), (float(np.mean(data_config.std)),)
        source = f"{data_config.mean_std_from}: the mean of the 3 RGB values"
    else:
        sized = data_config.with_channels(channels, bit_depth=pixels.depth, mean=(0.0,) * channels, std=(1.0,) * channels,
                                          mean_std_from="")
        base_mean, base_std, used = channel_stats(list(stats_paths if stats_paths is not None else paths), data_config=sized,
                                                  pixels=pixels, seed=seed, threads=threads)
        total = len(stats_paths if stats_paths is not None else paths)
        source = f"data: {used} of {total} training images"
    if mean is not None or std is not None:
        source = "config" if mean is not None and std is not None else f"config and {source}"
    out = data_config.with_channels(
        channels, bit_depth=pixels.depth, mean=mean if mean is not None else base_mean,
        std=std if std is not None else base_std, mean_std_from=source,
    )
    log.info("inputs: %s; mean %s, std %s from %s", pixels.describe(), _short(out.mean), _short(out.std), source)
    return out


def _short(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
