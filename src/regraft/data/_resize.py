"""The resize stage: how a file's pixels are cut to at most 4:1 and resized, plane by plane.

:class:`ResizeSpec` names the pixel format and the size; :func:`resize_planes` applies it to the
planes :mod:`regraft.data.pixels` conforms an image to (one RGB image, or one L / I;16 image per
band), all cut and resized alike with Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from regraft.data.pixels import RGB8, PixelFormat
from regraft.errors import ConfigError

__all__ = ["ResizeSpec", "MAX_ASPECT", "capped", "resize_planes", "stack"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
MAX_ASPECT = 4.0  # longer side / shorter side kept by the resize stage (see resize_image)


@dataclass(frozen=True)
class ResizeSpec:
    """How a file becomes the resize stage: ``pixels`` (channels and bits), then the shorter side
    to ``shorter`` or exactly ``(h, w)`` with ``interpolation``.

    ``key`` names the spec in the decode cache folder, so two sizes or formats never share entries.
    """

    shorter: int | None = None
    exact: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    pixels: PixelFormat = field(default=RGB8)

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(
                f"interpolation must be one of {', '.join(_RESAMPLE)}; got '{self.interpolation}'"
            )
        if (self.shorter is None) == (self.exact is None):
            raise ValueError("ResizeSpec needs exactly one of shorter= or exact=")

    @property
    def key(self) -> str:
        size = f"s{self.shorter}" if self.shorter is not None else "{}x{}".format(*self.exact)
        return f"{size}-{self.interpolation}" + (f"-{self.pixels.key}" if self.pixels.key else "")

    def target(self, width: int, height: int) -> tuple[int, int]:
        """Output ``(width, height)`` for an upright image; torchvision ``Resize(int)`` rounding."""
        if self.exact is not None:
            return self.exact[1], self.exact[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shorter, int(self.shorter * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_planes(planes: list[Image.Image], resize: ResizeSpec, *, source_size: tuple[int, int] | None = None) -> np.ndarray:
    """The planes cut to at most :data:`MAX_ASPECT` : 1 around their centre and resized per ``resize``:
    an ``(H, W, C)`` array (``source_size``: the full-size upright ``(width, height)`` of a draft-decoded image)."""
    first = planes[0]
    width, height = source_size or first.size
    if (first.width > first.height) != (width > height) and width != height:
        width, height = height, width  # the orientation tag was only seen after decoding (PNG eXIf)
    cw, ch = capped(width, height, resize)
    box = None
    if (cw, ch) != (width, height):
        keep_w, keep_h = first.width * cw / width, first.height * ch / height
        left, top = (first.width - keep_w) / 2, (first.height - keep_h) / 2
        box = (round(left), round(top), round(left + keep_w), round(top + keep_h))
    target = resize.target(cw, ch)
    out = []
    for plane in planes:
        plane = plane.crop(box) if box is not None else plane
        out.append(plane.resize(target, resample=_RESAMPLE[resize.interpolation]) if plane.size != target else plane)
    return stack(out)


def stack(planes: list[Image.Image]) -> np.ndarray:
    """Planes as one ``(H, W, C)`` array (an RGB plane is already three channels)."""
    if len(planes) == 1 and planes[0].mode == "RGB":
        return np.array(planes[0], dtype=np.uint8)
    return np.stack([np.asarray(p) for p in planes], axis=-1)


def capped(width: int, height: int, resize: ResizeSpec) -> tuple[int, int]:
    """``(width, height)`` cropped to at most MAX_ASPECT : 1 (only for shorter-side resizing)."""
    if resize.shorter is None:
        return width, height
    if width > MAX_ASPECT * height:
        return int(height * MAX_ASPECT), height
    if height > MAX_ASPECT * width:
        return width, int(width * MAX_ASPECT)
    return width, height
