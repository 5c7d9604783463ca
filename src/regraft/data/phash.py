"""Perceptual fingerprints: 64-bit DCT hashes of an image and its centre, and how much detail it has.

The hash is the classic perceptual hash (Zauner 2010; the ``phash`` of the imagehash package):
the image in grey at 32×32, its 2-D DCT, and one bit per coefficient of the 8×8 lowest
frequencies, set when the coefficient is above their median. A resized or re-encoded copy keeps
its hash to within a few bits; a different photograph differs in about half of them. Written
here on numpy and Pillow because imagehash is not installed (and not worth a dependency for
twenty lines); the DCT is one matrix product, so no scipy either.

A crop moves the low frequencies: cutting 6-12% off each side moved the hash by 8 to 26 bits on
bench/deep_scan.py's photographs, as far as some unrelated ones. So each fingerprint also holds
the hashes of the image's central 90% and 80%, and :meth:`Fingerprint.distance` takes the
smallest distance between one image whole and the other's centre (or both whole): the same
crops then moved 0 to 8 bits.

``detail`` is the standard deviation of the 32×32 grey thumbnail (0-255). Near-uniform images
(blank, dark or overexposed patches) have almost none, and their hashes are decided by noise,
so near-duplicate search leaves them out (:data:`FLAT_DETAIL`).

Example:
    >>> from PIL import Image
    >>> img = Image.effect_noise((64, 48), 60)
    >>> a, b = fingerprint(img), fingerprint(img.resize((40, 30)))
    >>> hamming(a.hash, b.hash) <= 8
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Fingerprint", "fingerprint", "hamming", "hamming_matrix", "distance_matrix", "FLAT_DETAIL", "HASH_BITS"]

HASH_BITS = 64
FLAT_DETAIL = 4.0  # grey-level standard deviation below which an image counts as near-uniform
CENTRES = (0.9, 0.8)  # the central shares of the image hashed besides the whole
_SIDE = 32
_KEEP = 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m * np.sqrt(2.0 / n)


_DCT = _dct_matrix(_SIDE)


@dataclass(frozen=True)
class Fingerprint:
    """``hash``: the whole image's 64-bit perceptual hash; ``centre``: its central 90% and 80%'s;
    ``detail``: grey-level standard deviation of the whole (0-255)."""

    hash: int
    detail: float
    centre: tuple[int, ...] = ()

    @property
    def flat(self) -> bool:
        """Near-uniform: too little detail for the hash to mean anything."""
        return self.detail < FLAT_DETAIL

    @property
    def hashes(self) -> tuple[int, ...]:
        return (self.hash, *self.centre)

    def distance(self, other: Fingerprint) -> int:
        """Bits apart: the least over both whole, and one whole against the other's centre."""
        best = hamming(self.hash, other.hash)
        for mine, theirs in zip(self.centre, other.centre, strict=False):
            best = min(best, hamming(mine, other.hash), hamming(self.hash, theirs))
        return best


def fingerprint(image: Image.Image) -> Fingerprint:
    """The perceptual hashes (whole, central 90% and 80%) and detail of an image (any mode)."""
    grey = image.convert("L")
    whole, detail = _hash(grey)
    centre = []
    for share in CENTRES:
        dx, dy = round(grey.width * (1 - share) / 2), round(grey.height * (1 - share) / 2)
        centre.append(_hash(grey.crop((dx, dy, grey.width - dx, grey.height - dy)))[0])
    return Fingerprint(whole, detail, tuple(centre))


def _hash(grey: Image.Image) -> tuple[int, float]:
    pixels = np.asarray(grey.resize((_SIDE, _SIDE), Image.Resampling.BOX, reducing_gap=None), dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_KEEP, :_KEEP]
    bits = np.packbits(low.reshape(-1) > np.median(low))
    return int.from_bytes(bits.tobytes(), "big"), float(pixels.std())


def hamming(a: int, b: int) -> int:
    """Bits in which two hashes differ (0 = same, about 32 = unrelated images)."""
    return bin(a ^ b).count("1")


def hamming_matrix(hashes_a: np.ndarray, hashes_b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` bit differences between two arrays of uint64 hashes."""
    x = np.bitwise_xor(np.asarray(hashes_a, dtype=np.uint64)[:, None], np.asarray(hashes_b, dtype=np.uint64)[None, :])
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1, dtype=np.int64)


def distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:meth:`Fingerprint.distance` between all rows of two ``(n, 3)`` uint64 arrays of :attr:`Fingerprint.hashes`."""
    best = hamming_matrix(a[:, 0], b[:, 0])
    for j in range(1, min(a.shape[1], b.shape[1])):
        np.minimum(best, hamming_matrix(a[:, j], b[:, 0]), out=best)
        np.minimum(best, hamming_matrix(a[:, 0], b[:, j]), out=best)
    return best
