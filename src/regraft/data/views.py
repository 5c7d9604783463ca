"""What evaluation feeds a model: the centre crop, test-time augmentation views, normalisation.

This is the one decode path of evaluation, written on numpy and Pillow only (no torch), so that
training's validation, ``regraft eval``, ``regraft predict`` and the torch-free ONNX runtime
(:mod:`regraft.export.runtime`) compute the same pixels and the same input floats:

1. :func:`read_eval_pixels`: the file's bytes through :func:`~regraft.data.imageio.decode_resized`
   (JPEG draft decoding included) to the resize stage of :func:`eval_resize`; the decode cache
   stores exactly these pixels;
2. :func:`center_crop` (or :func:`views` for test-time augmentation): torchvision's
   ``CenterCrop`` offsets, zero padding where a crop is larger than the image;
3. :func:`to_input`: ``x * scale + offset`` in float32 with :func:`normalize_affine`'s
   constants, the same two roundings torch's :meth:`ImageTransform.normalize` makes.

The pixels have the run's channels and bits (:class:`~regraft.data.pixels.PixelFormat`, carried
by the :class:`~regraft.data.imageio.ResizeSpec`): ``(H, W, C)`` uint8, or uint16 for 16-bit
runs, whose values are divided by 65535 rather than 255 in the one normalisation.

Test-time augmentation (:class:`TTA`): ``flip`` adds the mirrored centre crop (2 views);
``flip+crops`` takes the centre and four corner crops of the resized image, each also mirrored
(10 views, torchvision's ``TenCrop``). View 0 is always the plain centre crop.

Example:
    >>> import numpy as np
    >>> pixels = np.zeros((36, 48, 3), np.uint8)
    >>> [v.shape for v in views(pixels, (32, 32), tta=TTA.FLIP)]
    [(32, 32, 3), (32, 32, 3)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum

import numpy as np

from regraft.data.imageio import ResizeSpec, decode_resized, read_image_bytes
from regraft.data.pixels import RGB8, PixelFormat
from regraft.errors import ConfigError

__all__ = [
    "TTA", "eval_resize", "crop_box", "crop", "center_crop", "views", "normalize_affine", "to_input",
    "read_eval_pixels",
]


class TTA(str, Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """Test-time augmentation: which views of an image are averaged (softmax probabilities)."""

    NONE = "none"
    FLIP = "flip"
    FLIP_CROPS = "flip+crops"

    def __str__(self) -> str:
        return self.value

    @property
    def n_views(self) -> int:
        return {TTA.NONE: 1, TTA.FLIP: 2, TTA.FLIP_CROPS: 10}[self]

    @classmethod
    def parse(cls, value: str | TTA | None) -> TTA:
        """``"flip"`` -> ``TTA.FLIP``; None -> ``TTA.NONE``; ConfigError listing the choices otherwise."""
        if value is None:
            return cls.NONE
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"--tta must be one of {', '.join(t.value for t in cls)}; got '{value}'") from None


def eval_resize(input_size: Sequence[int], crop_pct: float, interpolation: str, *, pixels: PixelFormat = RGB8) -> ResizeSpec:
    """The resize stage of evaluation: ``pixels``' format, then the shorter side to
    ``floor(size / crop_pct)`` (square inputs), else exactly ``(h, w) / crop_pct``; timm's
    train-time ``random`` interpolation means bilinear.

    Raises:
        ConfigError: ``crop_pct`` outside (0, 1] or an unknown interpolation.
    """
    h, w = int(input_size[-2]), int(input_size[-1])
    pct = float(crop_pct)
    if not 0.0 < pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1]; got {pct}")
    interp = "bilinear" if interpolation == "random" else str(interpolation)
    if h == w:
        return ResizeSpec(shorter=int(h / pct), interpolation=interp, pixels=pixels)
    return ResizeSpec(exact=(int(h / pct), int(w / pct)), interpolation=interp, pixels=pixels)


def crop_box(height: int, width: int, size: Sequence[int]) -> tuple[int, int]:
    """``(top, left)`` of torchvision's ``CenterCrop(size)`` on a ``height x width`` image.

    Offsets round half to even (Python's ``round``, as torchvision does); a crop larger than
    the image gets a negative offset: it is padded with zeros, half on each side (the odd pixel
    after), as torchvision pads.
    """
    ch, cw = int(size[0]), int(size[1])
    top = int(round((height - ch) / 2.0)) if height >= ch else -((ch - height) // 2)
    left = int(round((width - cw) / 2.0)) if width >= cw else -((cw - width) // 2)
    return top, left


def crop(pixels: np.ndarray, top: int, left: int, size: Sequence[int]) -> np.ndarray:
    """The ``size`` window of an ``(H, W, C)`` array at ``(top, left)``; zeros outside the image."""
    ch, cw = int(size[0]), int(size[1])
    height, width = pixels.shape[:2]
    if top >= 0 and left >= 0 and top + ch <= height and left + cw <= width:
        return pixels[top : top + ch, left : left + cw]
    out = np.zeros((ch, cw, *pixels.shape[2:]), dtype=pixels.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ch, height), min(left + cw, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1]
    return out


def center_crop(pixels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """torchvision's ``CenterCrop(size)`` of an ``(H, W, C)`` array (a view when it fits)."""
    return crop(pixels, *crop_box(pixels.shape[0], pixels.shape[1], size), size)


def views(pixels: np.ndarray, size: Sequence[int], *, tta: TTA | str = TTA.NONE) -> list[np.ndarray]:
    """The ``(h, w, C)`` views of a resized image that :class:`TTA` ``tta`` averages; view 0 is the
    plain centre crop, each other crop is followed by its mirror image."""
    tta = TTA.parse(tta)
    ch, cw = int(size[0]), int(size[1])
    height, width = pixels.shape[:2]
    boxes = [crop_box(height, width, size)]
    if tta is TTA.FLIP_CROPS:
        bottom, right = max(height - ch, 0), max(width - cw, 0)
        boxes += [(0, 0), (0, right), (bottom, 0), (bottom, right)]
    out: list[np.ndarray] = []
    for top, left in boxes:
        view = crop(pixels, top, left, size)
        out.append(view)
        if tta is not TTA.NONE:
            out.append(view[:, ::-1])
    return out


def normalize_affine(mean: Sequence[float], std: Sequence[float], *, max_value: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)``, float32 ``(C,)``: ``(x / max_value - mean) / std == x * scale + offset``.

    ``max_value`` is the full scale of the pixels' dtype (255 for uint8, 65535 for uint16), so
    16-bit images keep their precision up to this one multiply-add. Computed in float64 and
    rounded once to float32, so numpy (here) and torch
    (:meth:`regraft.data.transforms.ImageTransform.normalize`) use identical constants.
    """
    scale = np.asarray([1.0 / (float(max_value) * float(s)) for s in std], dtype=np.float32)
    offset = np.asarray([-float(m) / float(s) for m, s in zip(mean, std, strict=True)], dtype=np.float32)
    return scale, offset


def to_input(view: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """An ``(h, w, C)`` uint8/uint16 view -> the ``(C, h, w)`` float32 model input ``x * scale + offset``."""
    chw = np.ascontiguousarray(view.transpose(2, 0, 1)).astype(np.float32)
    chw *= scale.reshape(-1, 1, 1)
    chw += offset.reshape(-1, 1, 1)
    return chw


def read_eval_pixels(path: str | os.PathLike, resize: ResizeSpec) -> np.ndarray:
    """Read and decode one file to the resize stage: an ``(H, W, C)`` array in ``resize.pixels``' format.

    The same call the decode cache and the uncached datasets make, so every evaluation path
    starts from identical pixels.

    Raises:
        ImageDecodeError: missing, empty, not an image, truncated or corrupt (names the path).
    """
    return decode_resized(read_image_bytes(path), name=str(path), resize=resize)
