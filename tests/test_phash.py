"""regraft.data.phash: the perceptual hash keeps copies close and tells photographs apart."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from regraft.data.phash import FLAT_DETAIL, fingerprint, hamming, hamming_matrix


def photo_like(seed: int, size: int = 160) -> Image.Image:
    """Smooth colour structure with grain, as photographs have (not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def crop(image: Image.Image, share: float) -> Image.Image:
    cut = int(image.width * share)
    return image.crop((cut, cut, image.width - cut, image.height - cut)).resize(image.size, Image.BICUBIC)


@pytest.mark.parametrize("seed", range(5))
def test_copies_stay_close_and_other_images_are_far(seed):
    image = photo_like(seed)
    base = fingerprint(image).hash
    assert hamming(base, fingerprint(image.resize((70, 70), Image.BILINEAR)).hash) <= 8
    assert hamming(base, fingerprint(jpeg(image, 30)).hash) <= 6
    assert hamming(base, fingerprint(image.convert("RGBA")).hash) == 0
    others = [hamming(base, fingerprint(photo_like(100 + i)).hash) for i in range(20)]
    assert min(others) >= 16 and 26 <= float(np.mean(others)) <= 38
    # a crop moves low frequencies: closer than other images on average, but not reliably close
    assert hamming(base, fingerprint(crop(image, 0.05)).hash) < float(np.mean(others))


def test_near_uniform_images_are_flat():
    dark = Image.fromarray(np.clip(np.random.default_rng(0).normal(12, 2, (64, 64, 3)), 0, 255).astype(np.uint8))
    assert fingerprint(dark).flat and fingerprint(dark).detail < FLAT_DETAIL
    assert fingerprint(Image.new("L", (40, 30), 255)).flat
    assert not fingerprint(photo_like(0)).flat


def test_hamming_matrix_matches_pairwise_hamming():
    hashes = [fingerprint(photo_like(i)).hash for i in range(6)] + [0, 2**64 - 1]
    matrix = hamming_matrix(np.array(hashes, dtype=np.uint64), np.array(hashes, dtype=np.uint64))
    assert matrix.shape == (8, 8) and matrix[6, 7] == 64
    for i, a in enumerate(hashes):
        for j, b in enumerate(hashes):
            assert matrix[i, j] == hamming(a, b)
