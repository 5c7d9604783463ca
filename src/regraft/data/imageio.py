"""Decoding the files real folders contain: images, ``.npy`` arrays and multi-band TIFFs, upright
and in a run's pixel format, with clear errors.

Every failure is an :class:`ImageDecodeError` that names the file and says what is wrong with
it (``kind``: missing, unreadable, not-regular, empty, not-image, truncated, corrupt, too-large,
unsupported, channels), so that training can skip the file and ``regraft scan`` can list it.
Bytes are read only through :func:`regraft.data.files.read_file_bytes`: regular files (after
symlinks) under the size cap.

What the pixels become is :mod:`regraft.data.pixels`'s job (a :class:`PixelFormat`: channels
and bits); this module finds the source in the bytes and resizes it:

- Pillow decodes images; EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone
  photo stands upright. Without ``--in-chans`` every image becomes 8-bit RGB (transparency on
  white, 16-bit scaled by 1/257, CMYK/palette/gray converted), as :func:`load_image` returns.
- ``.npy`` files are arrays (``numpy.load`` without pickles).
- A TIFF whose first page Pillow reads as stored is an image like any other; one it would read
  wrongly (more bands than Pillow's modes, more than 8 bits per band in a colour mode, an array
  tifffile stored as pages) is read with tifffile when it is installed and refused otherwise.

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

from regraft.data import pixels as px
from regraft.data._resize import MAX_ASPECT, ResizeSpec, capped, resize_planes, stack
from regraft.data.files import FileRefused, open_image_file, read_file_bytes
from regraft.data.pixels import RGB8, PixelFormat, to_rgb
from regraft.errors import DataError

__all__ = [
    "ImageDecodeError", "ResizeSpec", "SourceInfo", "read_image_bytes", "probe_image", "probe_source", "inspect_bytes", "header_info", "decode_image",
    "load_image", "load_pixels", "decode_resized", "resize_image", "to_rgb", "MAX_ASPECT",
]



class ImageDecodeError(DataError):
    """A file could not be turned into the pixels asked for; ``path``, ``kind`` and ``reason`` say why."""

    def __init__(self, path: str, kind: str, reason: str) -> None:
        self.path, self.kind, self.reason = str(path), kind, reason
        if kind == "channels":  # the file is fine; it does not fit the model
            super().__init__(f"cannot use {path}: {reason}")
        else:
            super().__init__(f"cannot decode {path}: {reason}; remove or replace the file")


@dataclass(frozen=True)
class SourceInfo:
    """What a file's header says: size, mode (an array's dtype and shape), format, bits, bands.

    ``bands`` is an image's own band count (:func:`regraft.data.pixels.image_bands`); ``shape``
    is an array's shape (None for images).
    """

    width: int
    height: int
    mode: str
    format: str
    depth: int
    bands: int
    shape: tuple[int, ...] | None = None

    def channel_problem(self, channels: int) -> str | None:
        """Why this file cannot give ``channels`` channels (None when it can), read from the header."""
        if self.shape is not None:
            if px.array_bands(self.shape, channels) is None:
                return f"an array of shape {self.shape} has no axis of {channels} channels"
            return None
        if channels in (1, 3) or self.bands == channels:
            return None
        return f"it has {self.bands} channel{'s' if self.bands != 1 else ''} ({self.mode}), not {channels}"


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
    info = probe_source(path)
    return info.width, info.height, info.mode, info.format


def probe_source(path: str | os.PathLike) -> SourceInfo:
    """:class:`SourceInfo` from the file's header (a TIFF Pillow misreads: from tifffile's).

    Raises:
        ImageDecodeError: missing, unreadable, empty, not an image or array, or a TIFF that
            needs tifffile where it is not installed.
    """
    try:
        fh = open_image_file(path)  # a FIFO or device is refused here, never opened for reading
    except FileRefused as exc:
        raise ImageDecodeError(path, exc.kind, exc.reason) from None
    try:
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ImageDecodeError(path, "empty", "empty file (0 bytes)")
            head = fh.read(4096)
            if px.is_npy(head):
                shape, dtype = _pix(path, px.npy_shape, head)
                return _array_info(shape, dtype, "NPY")
            fh.seek(0)
            with Image.open(fh) as img:
                if img.format == "TIFF" and not px.pillow_faithful(img):
                    return _tiff_info(path, read_image_bytes(path))
                return SourceInfo(img.width, img.height, img.mode, img.format or "?", px.mode_depth(img.mode), px.image_bands(img))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, "too-large", f"image too large to decode safely ({_short(exc)})") from None
    except UnidentifiedImageError:
        if px.is_tiff(head):  # a TIFF Pillow cannot open at all (e.g. 4 bands of 8 bits): its tags tell
            return _tiff_info(path, read_image_bytes(path))
        raise ImageDecodeError(path, "not-image", "not an image (or a format Pillow cannot read)") from None
    except OSError as exc:
        raise ImageDecodeError(path, "unreadable", f"cannot read the file ({_short(exc)})") from None
    except Exception as exc:
        raise ImageDecodeError(path, "corrupt", f"corrupt image header ({_short(exc)})") from None


def _array_info(shape: tuple[int, ...], dtype: np.dtype, fmt: str) -> SourceInfo:
    if len(shape) == 3 and shape[0] < shape[-1]:  # for display: the smallest end axis holds the bands
        h, w = shape[1], shape[2]
    else:
        h, w = (shape + (0, 0))[:2]
    depth = 16 if np.dtype(dtype).itemsize == 2 else 8
    bands = 1 if len(shape) == 2 else min(shape[0], shape[-1]) if len(shape) == 3 else 0
    return SourceInfo(int(w), int(h), px.describe_array(shape, dtype), fmt, depth, int(bands), tuple(shape))


def _tiff_info(path: str | os.PathLike, data: bytes) -> SourceInfo:
    shape, dtype = _pix(path, px.tiff_shape, data)  # the tags only, nothing decoded
    return _array_info(shape, dtype, "TIFF")


def inspect_bytes(data: bytes, *, name: str) -> SourceInfo:
    """:class:`SourceInfo` of ``data`` after decoding every byte (``regraft scan``'s check; JPEGs
    at 1/8 scale), so truncated files are found too.

    Raises:
        ImageDecodeError: as :func:`decode_resized`, except for channel counts (no format asked).
    """
    source = _open_source(data, name=name)
    info = _source_info(source, data)
    if not isinstance(source, np.ndarray):
        _load(source, name=name, draft=(64, 64))
    return info


def header_info(data: bytes, *, name: str) -> SourceInfo:
    """:class:`SourceInfo` of ``data`` from its header alone (arrays: read whole), nothing decoded:
    for a caller that decodes the image anyway (the deep scan's perceptual hash).

    Raises:
        ImageDecodeError: not an image or array, or a header Pillow cannot parse.
    """
    return _source_info(_open_source(data, name=name), data)


def _source_info(source: Image.Image | np.ndarray, data: bytes) -> SourceInfo:
    if isinstance(source, np.ndarray):
        return _array_info(tuple(source.shape), source.dtype, "NPY" if px.is_npy(data) else "TIFF")
    return SourceInfo(source.width, source.height, source.mode, source.format or "?", px.mode_depth(source.mode), px.image_bands(source))


def decode_image(data: bytes, *, name: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` to an upright 8-bit RGB image (what a run without ``--in-chans`` sees).

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
    source = _decoded(data, name=name, draft=draft)
    if isinstance(source, np.ndarray):
        return _pix(name, px.conform_array, source, RGB8)[0]
    return to_rgb(source)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read and decode one image file to upright RGB (see the module doc for conversions).

    Raises:
        ImageDecodeError: missing, empty, not an image, truncated or corrupt (names the path).
    """
    return decode_image(read_image_bytes(path), name=str(path))


def load_pixels(path: str | os.PathLike, pixels: PixelFormat = RGB8) -> np.ndarray:
    """One file at full size in ``pixels``' format: an ``(H, W, C)`` uint8 or uint16 array.

    Raises:
        ImageDecodeError: as :func:`decode_resized`.
    """
    source = _decoded(read_image_bytes(path), name=str(path), draft=None)
    return stack(_conformed(source, pixels, name=str(path)))


def decode_resized(data: bytes, *, name: str, resize: ResizeSpec) -> np.ndarray:
    """Decode ``data`` to ``resize.pixels`` and resize it: an ``(H, W, C)`` uint8/uint16 array.

    The target size is computed from the full-size upright dimensions, so the result does not
    depend on the JPEG draft scale the decoder picked. The cached and uncached paths both come
    through here, which is why they give identical pixels.

    Raises:
        ImageDecodeError: not an image, truncated, corrupt, too large, an unsupported array or
            TIFF (``unsupported``), or one that does not fit the channel count (``channels``).
    """
    probe = _open_source(data, name=name)
    if isinstance(probe, np.ndarray):
        return resize_planes(_conformed(probe, resize.pixels, name=name), resize)
    width, height = probe.size
    if _orientation(probe) in (5, 6, 7, 8):
        width, height = height, width
    tw, th = resize.target(*capped(width, height, resize))
    img = _decoded(data, name=name, draft=(max(tw, th), max(tw, th)))
    return resize_planes(_conformed(img, resize.pixels, name=name), resize, source_size=(width, height))


def resize_image(img: Image.Image | np.ndarray, resize: ResizeSpec, *, source_size: tuple[int, int] | None = None) -> np.ndarray:
    """An upright image (any mode) or array in ``resize.pixels``' format, resized: ``(H, W, C)``.

    Images longer than :data:`MAX_ASPECT` times their shorter side (banners, panoramas) are first
    cropped to that ratio around their centre, so that one of them cannot become a 256 x 50000
    array; the centre crop of evaluation is unaffected.

    Args:
        img: the decoded image (possibly draft-scaled), or an array (see :mod:`regraft.data.pixels`).
        resize: the pixel format and the resize stage.
        source_size: ``(width, height)`` of the full-size upright image when ``img`` was decoded
            at a reduced scale (the target is computed from it, so the scale does not matter).

    Raises:
        ImageDecodeError: the image does not fit ``resize.pixels`` (``name`` ``<image>``).
    """
    return resize_planes(_conformed(img, resize.pixels, name="<image>"), resize, source_size=source_size)


def _conformed(source: Image.Image | np.ndarray, pixels: PixelFormat, *, name: str) -> list[Image.Image]:
    if isinstance(source, np.ndarray):
        return _pix(name, px.conform_array, source, pixels)
    return _pix(name, px.conform_image, source, pixels)


def _pix(name: str | os.PathLike, fn, *args, **kwargs):
    """``fn(*args)`` with a :class:`~regraft.data.pixels.PixelError` named after the file."""
    try:
        return fn(*args, **kwargs)
    except px.PixelError as exc:
        raise ImageDecodeError(str(name), exc.kind, exc.reason) from None


def _open(data: bytes, *, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not-image", "not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, "too-large", f"image too large to decode safely ({exc})") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageDecodeError(name, "corrupt", f"corrupt image header ({_short(exc)})") from None


def _open_source(data: bytes, *, name: str) -> Image.Image | np.ndarray:
    """The file's image (opened, not decoded) or, for ``.npy`` files and the TIFFs Pillow would
    misread, its array (read whole)."""
    if px.is_npy(data):
        return _pix(name, px.read_npy, data)
    try:
        img = _open(data, name=name)
    except ImageDecodeError as exc:
        if px.is_tiff(data) and exc.kind in ("not-image", "corrupt"):
            return _pix(name, px.read_tiff, data, why="a TIFF")
        raise
    if img.format == "TIFF" and not px.pillow_faithful(img):
        samples, bits = img.tag_v2.get(277, 1), img.tag_v2.get(258, (1,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return _pix(name, px.read_tiff, data, why=f"a TIFF with {samples} band(s) of {max(bits)} bits")
    return img


def _decoded(data: bytes, *, name: str, draft: tuple[int, int] | None) -> Image.Image | np.ndarray:
    """The upright, loaded image (EXIF orientation applied), or the file's array."""
    source = _open_source(data, name=name)
    if isinstance(source, np.ndarray):
        return source
    img = _load(source, name=name, draft=draft)
    with contextlib.suppress(Exception):  # a broken EXIF block must not cost the image: keep it unrotated
        img = ImageOps.exif_transpose(img)
    return img


def _load(img: Image.Image, *, name: str, draft: tuple[int, int] | None) -> Image.Image:
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
