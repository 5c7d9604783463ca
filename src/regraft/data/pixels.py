"""How an image becomes an array of C channels: a run's pixel format and the rules that conform
any decoded image or array to it. numpy and Pillow only (tifffile when it is installed), so the
torch-free ONNX runtime reads images exactly as training does.

A :class:`PixelFormat` is the channel count and the bits per channel kept until normalisation
(8: uint8, 16: uint16). The rules, decided once here:

- **3 channels, 8 bits** (every run without ``--in-chans``): RGB as always
  (:func:`to_rgb`: transparency on white, 16-bit scaled by 1/257, CMYK/palette/gray converted).
- **1 channel**: grayscale images as they are (``L``; ``I;16`` keeps its 16 bits); any other
  image (RGB, RGBA, palette, CMYK) goes through :func:`to_rgb` and then Pillow's luminance
  ``L = 0.299 R + 0.587 G + 0.114 B`` (a gray image stored as RGB comes back exactly).
- **3 channels, 16 bits**: 16-bit grayscale is repeated in the three channels; 8-bit images
  are RGB as above, times 257.
- **Any other count N**: an image's own bands, raw (RGBA is R, G, B, A with the alpha as the
  4th band, not composited; CMYK is C, M, Y, K; LA is 2 bands); arrays (``.npy``, multi-band
  TIFFs) with N bands. A different count is refused (``kind = "channels"``).
- **Depth**: 8-bit values go to a 16-bit format times 257 (exactly ``v / 255 == 257 v / 65535``);
  16-bit values to an 8-bit format divided by 257, rounded. 32-bit integer (``I``) and float
  (``F``) images are read as 16-bit when their values fit 0-65535 (float: 0-1), else stretched.
- **Arrays**: uint8 or uint16, ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``: the band axis is the
  last or the first one, whichever holds the run's channel count (a 1-band array in an RGB run
  is repeated, as a gray image is). Other dtypes are refused (``kind = "unsupported"``).

Example:
    >>> fmt = PixelFormat(channels=1, depth=16)
    >>> fmt.mode, fmt.dtype.name, fmt.max_value
    ('I;16', 'uint16', 65535.0)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from regraft.errors import ConfigError

__all__ = [
    "PixelFormat", "RGB8", "PixelError", "to_rgb", "conform_image", "conform_array", "read_npy", "npy_shape",
    "read_tiff", "is_npy", "is_tiff", "pillow_faithful", "image_bands", "mode_depth", "array_bands", "describe_array",
    "wide_to_depth", "tiff_shape", "MAX_CHANNELS",
]

MAX_CHANNELS = 256
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_BAND_MODES = {"RGBa": "RGBA", "La": "LA", "PA": "RGBA"}  # Pillow conversions that give the plain bands
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class PixelError(Exception):
    """An image or array that cannot be conformed to a :class:`PixelFormat` (no path: the caller adds it)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason
        super().__init__(reason)


@dataclass(frozen=True)
class PixelFormat:
    """The channels of a model's input and the bits per channel kept until normalisation.

    Raises:
        ConfigError: ``channels`` outside 1-256 or ``depth`` other than 8 and 16.
    """

    channels: int = 3
    depth: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or not 1 <= self.channels <= MAX_CHANNELS:
            raise ConfigError(f"in_chans must be between 1 and {MAX_CHANNELS}; got {self.channels!r}")
        if self.depth not in (8, 16):
            raise ConfigError(f"bit_depth must be 8 or 16; got {self.depth!r}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.depth == 8 else np.uint16)

    @property
    def max_value(self) -> float:
        """What a full-scale pixel holds: normalisation divides by this (255 or 65535)."""
        return 255.0 if self.depth == 8 else 65535.0

    @property
    def mode(self) -> str:
        """The name ``model.json`` records: ``L``, ``I;16``, ``RGB``, ``RGB;16``, ``bands``, ``bands;16``."""
        base = {1: "L", 3: "RGB"}.get(self.channels, "bands")
        if self.depth == 8:
            return base
        return "I;16" if self.channels == 1 else f"{base};16"

    @property
    def key(self) -> str:
        """A name for the decode cache folder; empty for 8-bit RGB (whose folders predate formats)."""
        return "" if self == RGB8 else f"c{self.channels}-{self.depth}bit"

    def describe(self) -> str:
        return f"{self.channels} channel{'s' if self.channels != 1 else ''} at {self.depth} bits ({self.mode})"


RGB8 = PixelFormat()


def is_npy(data: bytes) -> bool:
    """Whether ``data`` starts like a ``.npy`` file (its magic string)."""
    return data[:6] == b"\x93NUMPY"


def is_tiff(data: bytes) -> bool:
    """Whether ``data`` starts like a TIFF (classic or BigTIFF, either byte order)."""
    return data[:4] in _TIFF_MAGIC


def mode_depth(mode: str) -> int:
    """Bits per channel a Pillow mode holds, as regraft keeps them: 16 for ``I;16``/``I``/``F``, else 8."""
    return 16 if mode in WIDE_MODES else 8


def image_bands(img: Image.Image) -> int:
    """How many bands an image gives a run of another channel count than 1 or 3 (palette: 3, or 4 with transparency)."""
    if img.mode == "P":
        return 4 if "transparency" in img.info else 3
    if img.mode == "PA":
        return 4
    return len(img.getbands())


def array_bands(shape: tuple[int, ...], channels: int) -> int | None:
    """The bands an array of ``shape`` gives a run of ``channels``, or None when it fits nowhere."""
    if len(shape) == 2:
        return 1 if channels in (1, 3) else None
    if len(shape) != 3:
        return None
    if channels in (shape[-1], shape[0]):
        return channels
    if channels == 3 and 1 in (shape[-1], shape[0]):
        return 1
    return None


def pillow_faithful(img: Image.Image) -> bool:
    """Whether Pillow reads this TIFF's first page as stored: as many bands as samples, no bits dropped.

    Pillow reads a 4-band 16-bit TIFF as 8-bit RGBA and a 2-band one as a strip of gray; such
    files are read with tifffile instead (or refused without it). So is an array that tifffile
    stored as pages (its description holds the array's shape), whose first page is a slice.
    """
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return True
    samples = int(tags.get(277, 1))
    bits = tags.get(258, (1,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    have = {"I": 32, "F": 32, "1": 1}.get(img.mode, 16 if img.mode.startswith("I;16") else 8)
    description = str(tags.get(270, ""))
    shaped = description.startswith('{"shape":') and getattr(img, "n_frames", 1) > 1
    return samples == len(img.getbands()) and max(int(b) for b in bits) <= have and not shaped


# ----------------------------------------------------------------------------- images


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB (see the module doc for the rules)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in WIDE_MODES:
        img = Image.fromarray(wide_to_depth(np.asarray(img), img.mode, 8))  # uint8 (H, W): L
    elif img.mode in ("RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def wide_to_depth(arr: np.ndarray, mode: str, depth: int) -> np.ndarray:
    """16-bit, 32-bit and float pixel values to ``depth`` bits (scaled, never clipped at the top).

    ``I;16`` is 16-bit whatever its values (a dark image stays dark); an ``I`` image within
    0-255 is taken as 8-bit data, within 0-65535 as 16-bit; ``F`` within 0-1 is scaled to full
    range; anything else is stretched from its own minimum to its maximum.
    """
    values = arr.astype(np.float64)
    top = 255.0 if depth == 8 else 65535.0
    out_type = np.uint8 if depth == 8 else np.uint16
    if values.size == 0:
        return values.astype(out_type)
    lo, hi = float(values.min()), float(values.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * top
    elif lo < 0.0 or hi > 65535.0:  # unknown range: stretch what is there
        values = (values - lo) * (top / (hi - lo)) if hi > lo else values * 0.0
    elif mode.startswith("I;16") or hi > 255.0:
        values = values / 257.0 if depth == 8 else values
    elif depth == 16:
        values = values * 257.0
    return np.clip(np.rint(values), 0, top).astype(out_type)


def _gray(img: Image.Image, depth: int) -> Image.Image:
    if img.mode in WIDE_MODES:
        return Image.fromarray(wide_to_depth(np.asarray(img), img.mode, depth))
    gray = img if img.mode == "L" else to_rgb(img).convert("L")
    return gray if depth == 8 else Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)


def conform_image(img: Image.Image, fmt: PixelFormat) -> list[Image.Image]:
    """A decoded, upright image as ``fmt``'s planes: one RGB or L image, or one L / I;16 image per band.

    Raises:
        PixelError: ``kind="channels"``: the image's bands are not ``fmt.channels`` (other
            counts than 1 and 3 take an image's own bands).
    """
    if fmt == RGB8:
        return [to_rgb(img)]
    if fmt.channels == 1:
        return [_gray(img, fmt.depth)]
    if fmt.channels == 3:
        if img.mode in WIDE_MODES:
            return [_gray(img, 16)] * 3
        return _planes(np.asarray(to_rgb(img)), fmt)
    bands = image_bands(img)
    if bands != fmt.channels:
        raise PixelError("channels", f"it has {bands} channel{'s' if bands != 1 else ''} ({img.mode}) but the model takes "
                                     f"{fmt.channels}; {_FIX}")
    if img.mode in _BAND_MODES or img.mode == "P":
        img = img.convert(_BAND_MODES.get(img.mode, "RGBA" if bands == 4 else "RGB"))
    return _planes(np.asarray(img), fmt)


_FIX = "use images with that many channels (docs/channels.md)"


# ----------------------------------------------------------------------------- arrays


def conform_array(arr: np.ndarray, fmt: PixelFormat) -> list[Image.Image]:
    """An array (from ``.npy`` or tifffile) as ``fmt``'s planes (see the module doc for the rules).

    Raises:
        PixelError: ``unsupported`` (a dtype other than uint8/uint16, or not 2-D/3-D) or
            ``channels`` (no axis holds ``fmt.channels`` bands).
    """
    if arr.dtype.kind != "u" or arr.dtype.itemsize not in (1, 2):
        raise PixelError("unsupported", f"a {arr.dtype} array; regraft reads uint8 and uint16 arrays: scale the values to "
                                        "0-255 or 0-65535 and save it with that dtype")
    bands = array_bands(arr.shape, fmt.channels)
    if bands is None:
        if arr.ndim not in (2, 3) or min(arr.shape) == 0:
            raise PixelError("unsupported", f"an array of shape {tuple(arr.shape)}; regraft reads (H, W), (H, W, C) and (C, H, W) arrays")
        raise PixelError("channels", f"an array of shape {tuple(arr.shape)}: neither its first nor its last axis holds the "
                                     f"model's {fmt.channels} channels; {_FIX}")
    hwc = arr[..., None] if arr.ndim == 2 else (arr if arr.shape[-1] == bands else np.moveaxis(arr, 0, -1))
    hwc = hwc.astype(hwc.dtype.newbyteorder("="), copy=False)
    if hwc.shape[-1] == 1 and fmt.channels == 3:
        hwc = np.repeat(hwc, 3, axis=-1)
    return _planes(hwc, fmt)


def _planes(hwc: np.ndarray, fmt: PixelFormat) -> list[Image.Image]:
    """``(H, W, C)`` uint8/uint16 values as ``fmt``'s planes, at its depth: 8 bits times 257
    (exact), 16 bits divided by 257 and rounded."""
    if hwc.dtype != fmt.dtype:
        hwc = hwc.astype(np.uint16) * 257 if fmt.depth == 16 else np.rint(hwc / 257.0).astype(np.uint8)
    if fmt == RGB8:
        return [Image.fromarray(np.ascontiguousarray(hwc))]  # uint8 (H, W, 3): RGB
    return [Image.fromarray(np.ascontiguousarray(hwc[..., i])) for i in range(hwc.shape[-1])]  # L or I;16


def npy_shape(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from a ``.npy`` header, without reading the values.

    Raises:
        PixelError: ``corrupt`` header.
    """
    try:
        fh = io.BytesIO(data)
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)  # the header alone
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError and others on bad headers
        raise PixelError("corrupt", f"corrupt .npy header ({exc})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def read_npy(data: bytes) -> np.ndarray:
    """The array in a ``.npy`` file's bytes (never unpickled).

    Raises:
        PixelError: ``unsupported`` (object arrays) or ``truncated``/``corrupt``.
    """
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        text = str(exc)
        if "pickle" in text.lower() or "object" in text.lower():
            raise PixelError("unsupported", "a .npy file of Python objects; regraft reads uint8 and uint16 arrays") from None
        kind = "truncated" if "size" in text.lower() or "reshape" in text.lower() else "corrupt"
        raise PixelError(kind, f"{'truncated' if kind == 'truncated' else 'corrupt'} .npy file ({text[:120]})") from None
    except Exception as exc:  # noqa: BLE001 - EOFError, OSError on a cut file
        raise PixelError("truncated", f"truncated .npy file ({exc})") from None


def read_tiff(data: bytes, *, why: str) -> np.ndarray:
    """A TIFF that Pillow cannot read as stored, with tifffile: its first series (an array stored
    as pages comes back whole; of a stack of multi-band pages, the first).

    Args:
        why: what Pillow would get wrong, for the message when tifffile is missing.

    Raises:
        PixelError: ``unsupported`` without tifffile; ``corrupt`` when tifffile cannot read it.
    """
    try:
        import tifffile
    except ImportError:
        raise PixelError("unsupported", f"{why}, which Pillow cannot read as stored; install tifffile (pip install tifffile) "
                                        "to read it") from None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            arr = series.asarray()
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on malformed files
        raise PixelError("corrupt", f"corrupt TIFF ({' '.join(str(exc).split())[:120]})") from None
    while arr.ndim > 3:  # a stack of multi-band images: the first, as Pillow takes the first page
        arr = arr[0]
    return arr


def tiff_shape(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of the array :func:`read_tiff` would return, from the TIFF's tags only.

    Raises:
        PixelError: as :func:`read_tiff`.
    """
    try:
        import tifffile
    except ImportError:
        raise PixelError("unsupported", "a TIFF which Pillow cannot read as stored; install tifffile (pip install tifffile) "
                                        "to read it") from None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            shape, dtype = tuple(int(v) for v in series.shape), np.dtype(series.dtype)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on malformed files
        raise PixelError("corrupt", f"corrupt TIFF ({' '.join(str(exc).split())[:120]})") from None
    return shape[-3:], dtype


def describe_array(shape: tuple[int, ...], dtype: Any) -> str:
    """``uint16 (64, 64, 4)``: how ``regraft scan`` lists an array's mode."""
    return f"{np.dtype(dtype).name} {tuple(shape)}"
