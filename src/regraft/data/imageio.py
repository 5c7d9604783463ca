"""Decoding images that real folders contain: any mode to RGB, EXIF orientation, clear errors.

Every failure is an :class:`ImageDecodeError` that names the file and says what is wrong with
it (``kind``: missing, unreadable, not-regular, empty, not-image, truncated, corrupt, too-large),
so that training can skip the file and ``regraft scan`` can list it. Bytes are read only through
:func:`regraft.data.files.read_file_bytes`: regular files (after symlinks) under the size cap.

Conversions to RGB, decided once here:

- EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo stands upright.
- Transparency (RGBA, LA, palette with a transparent colour) is composited on **white**: the
  colour under fully transparent pixels is arbitrary (often black) and would otherwise leak in.
- 16-bit images (``I;16``, ``I``) are scaled by 1/257 (65535 -> 255), not clipped; float images
  (``F``) in [0, 1] are scaled by 255.
- CMYK, palette, grayscale, bilevel and the rest go through Pillow's ``convert("RGB")``.

Example:
    >>> img = load_image("photo.jpg")        # doctest: +SKIP
    >>> img.mode
    'RGB'
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from regraft.data.files import FileRefused, open_image_file, read_file_bytes
from regraft.errors import ConfigError, DataError

__all__ = ["ImageDecodeError", "ResizeSpec", "read_image_bytes", "probe_image", "decode_image", "load_image", "decode_resized", "resize_image", "to_rgb", "MAX_ASPECT"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
MAX_ASPECT = 4.0  # longer side / shorter side kept by the resize stage (see resize_image)


class ImageDecodeError(DataError):
    """A file could not be turned into an RGB image; ``path``, ``kind`` and ``reason`` say why."""

    def __init__(self, path: str, kind: str, reason: str) -> None:
        self.path, self.kind, self.reason = str(path), kind, reason
        super().__init__(f"cannot decode {path}: {reason}; remove or replace the file")


@dataclass(frozen=True)
class ResizeSpec:
    """How images are resized before cropping: shorter side to ``shorter`` or exactly ``(h, w)``.

    ``key`` names the spec in the decode cache folder, so two sizes never share entries.
    """

    shorter: int | None = None
    exact: tuple[int, int] | None = None
    interpolation: str = "bilinear"

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
        return f"{size}-{self.interpolation}"

    def target(self, width: int, height: int) -> tuple[int, int]:
        """Output ``(width, height)`` for an upright image; torchvision ``Resize(int)`` rounding."""
        if self.exact is not None:
            return self.exact[1], self.exact[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shorter, int(self.shorter * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file: a regular file (after symlinks) within the size cap.

    Raises:
        ImageDecodeError: the file is missing, unreadable, not a regular file (FIFO, device,
            socket), larger than the cap (checked before reading) or empty.
    """
    try:
        data = read_file_bytes(path)
    except FileRefused as exc:
        raise ImageDecodeError(path, exc.kind, exc.reason) from None
    except OSError as exc:
        raise ImageDecodeError(path, "unreadable", f"cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise ImageDecodeError(path, "empty", "empty file (0 bytes)")
    return data


def probe_image(path: str | os.PathLike) -> tuple[int, int, str, str]:
    """``(width, height, mode, format)`` from the file's header, without decoding the pixels.

    Cheap (reads only the header), so it catches missing, empty and non-image files but not
    truncated ones; :func:`load_image` catches those.

    Raises:
        ImageDecodeError: missing, unreadable, empty or not an image.
    """
    try:
        fh = open_image_file(path)  # a FIFO or device is refused here, never opened for reading
    except FileRefused as exc:
        raise ImageDecodeError(path, exc.kind, exc.reason) from None
    try:
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ImageDecodeError(path, "empty", "empty file (0 bytes)")
            with Image.open(fh) as img:
                return img.width, img.height, img.mode, img.format or "?"
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, "too-large", f"image too large to decode safely ({_short(exc)})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not-image", "not an image (or a format Pillow cannot read)") from None
    except OSError as exc:
        raise ImageDecodeError(path, "unreadable", f"cannot read the file ({_short(exc)})") from None
    except Exception as exc:
        raise ImageDecodeError(path, "corrupt", f"corrupt image header ({_short(exc)})") from None


def decode_image(data: bytes, *, name: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` to an upright RGB image.

    Args:
        data: the file's bytes.
        name: the path, for error messages.
        draft: for JPEGs, let the decoder scale down by 1/2, 1/4 or 1/8 while keeping at least
            this ``(width, height)`` (much faster for large photos); None decodes at full size.

    Returns:
        A loaded RGB ``PIL.Image``.

    Raises:
        ImageDecodeError: not an image, truncated, corrupt or too large.
    """
    img = _open_loaded(data, name=name, draft=draft)
    with contextlib.suppress(Exception):  # a broken EXIF block must not cost the image: keep it unrotated
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read and decode one image file to upright RGB (see the module doc for conversions).

    Raises:
        ImageDecodeError: missing, empty, not an image, truncated or corrupt (names the path).
    """
    return decode_image(read_image_bytes(path), name=str(path))


def decode_resized(data: bytes, *, name: str, resize: ResizeSpec) -> np.ndarray:
    """Decode ``data`` and resize it per ``resize``: an ``(H, W, 3)`` uint8 array.

    The target size is computed from the full-size upright dimensions, so the result does not
    depend on the JPEG draft scale the decoder picked. The cached and uncached paths both come
    through here, which is why they give identical pixels.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    probe = _open(data, name=name)
    width, height = probe.size
    if _orientation(probe) in (5, 6, 7, 8):
        width, height = height, width
    tw, th = resize.target(*_capped(width, height, resize))
    img = decode_image(data, name=name, draft=(max(tw, th), max(tw, th)))
    return resize_image(img, resize, source_size=(width, height))


def resize_image(img: Image.Image, resize: ResizeSpec, *, source_size: tuple[int, int] | None = None) -> np.ndarray:
    """Resize an upright RGB image per ``resize``: an ``(H, W, 3)`` uint8 array.

    Images longer than :data:`MAX_ASPECT` times their shorter side (banners, panoramas) are first
    cropped to that ratio around their centre, so that one of them cannot become a 256 x 50000
    array; the centre crop of evaluation is unaffected.

    Args:
        img: the decoded image (possibly draft-scaled).
        resize: the resize stage.
        source_size: ``(width, height)`` of the full-size upright image when ``img`` was decoded
            at a reduced scale (the target is computed from it, so the scale does not matter).
    """
    width, height = source_size or img.size
    if (img.width > img.height) != (width > height) and width != height:
        width, height = height, width  # the orientation tag was only seen after decoding (PNG eXIf)
    cw, ch = _capped(width, height, resize)
    if (cw, ch) != (width, height):
        keep_w, keep_h = img.width * cw / width, img.height * ch / height
        left, top = (img.width - keep_w) / 2, (img.height - keep_h) / 2
        img = img.crop((round(left), round(top), round(left + keep_w), round(top + keep_h)))
    target = resize.target(cw, ch)
    if img.size != target:
        img = img.resize(target, resample=_RESAMPLE[resize.interpolation])
    return np.array(img, dtype=np.uint8)


def _capped(width: int, height: int, resize: ResizeSpec) -> tuple[int, int]:
    """``(width, height)`` cropped to at most MAX_ASPECT : 1 (only for shorter-side resizing)."""
    if resize.shorter is None:
        return width, height
    if width > MAX_ASPECT * height:
        return int(height * MAX_ASPECT), height
    if height > MAX_ASPECT * width:
        return width, int(width * MAX_ASPECT)
    return width, height


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB (see the module doc for the rules)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = Image.fromarray(_wide_to_uint8(np.asarray(img), img.mode), "L")
    elif img.mode in ("RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit and float pixel values to 0..255 (scaled, never clipped at 255)."""
    values = arr.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif lo < 0.0 or hi > 65535.0:  # unknown range: stretch what is there
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else values * 0.0
    elif mode.startswith("I;16") or hi > 255.0:
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _open(data: bytes, *, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not-image", "not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, "too-large", f"image too large to decode safely ({exc})") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageDecodeError(name, "corrupt", f"corrupt image header ({_short(exc)})") from None


def _open_loaded(data: bytes, *, name: str, draft: tuple[int, int] | None) -> Image.Image:
    img = _open(data, name=name)
    try:
        if draft is not None and img.format == "JPEG":
            img.draft(None, draft)
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, "too-large", f"image too large to decode safely ({exc})") from None
    except Exception as exc:
        text = _short(exc)
        kind = "truncated" if "truncat" in text.lower() or isinstance(exc, EOFError) else "corrupt"
        reason = "truncated file" if kind == "truncated" else "corrupt image data"
        raise ImageDecodeError(name, kind, f"{reason} ({text})") from None
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]
