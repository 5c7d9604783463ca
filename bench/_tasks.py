"""Small real image folders for the benchmarks, made from photographs that ship with scikit-image.

Two tasks, both written as ``ROOT/{train,val[,test]}/<class>/*.jpg`` (256 px squares, so that the
224 px crops the models see are not upsampled):

- ``textures``: :func:`regraft.demo.make_demo_data` as the demo makes it: crops of the brick,
  grass and gravel texture photographs, 40 training and 15 validation images per class, training
  crops from the top 65% of each photograph and validation crops from the bottom 30%.
- ``photos``: which of ten photographs a small crop comes from (astronaut, camera, chelsea,
  coffee, coins, hubble_deep_field, immunohistochemistry, moon, retina, rocket; four of them
  greyscale). Crops of 1/6 to 1/4 of the photograph's shorter side, flipped at random, from three
  horizontal bands that share no pixel: training from the top half, validation from the next
  quarter, test from the bottom quarter. The bands show different content (the astronaut's face
  above, his suit below), so validation and test are a real shift away from training. 24 training,
  10 validation and 10 test images per class.

Nothing here was tuned on any method's results: the task definitions were fixed before the first
benchmark ran.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
)
# (top, bottom) of each split's band, as fractions of the photograph's height
BANDS = {"train": (0.0, 0.5), "val": (0.5, 0.75), "test": (0.75, 1.0)}
SIZE = 256


def textures(root: Path, *, size: int = SIZE) -> Path:
    """The demo's three-texture task (train/val), made once under ``root``."""
    from regraft.demo import make_demo_data

    return _once(root, lambda tmp: make_demo_data(tmp, per_class=40, val_per_class=15, size=size, seed=0))


def photos(root: Path, *, per_split: dict[str, int] | None = None, size: int = SIZE, seed: int = 0) -> Path:
    """The ten-photograph provenance task (train/val/test), made once under ``root``."""
    counts = per_split or {"train": 24, "val": 10, "test": 10}
    return _once(root, lambda tmp: _write_photos(tmp, counts, size=size, seed=seed))


def many_crops(root: Path, *, n: int, size: int = SIZE, seed: int = 1) -> Path:
    """``n`` crops of the ten photographs in a flat class-folder layout (``root/train``, ``root/val``)
    for throughput and memory runs, where only the pixels' realism matters, not the split."""
    counts = [n // len(PHOTOS) + (1 if i < n % len(PHOTOS) else 0) for i in range(len(PHOTOS))]
    return _once(root, lambda tmp: _write_photos(tmp, {"train": counts, "val": [2] * len(PHOTOS)}, size=size, seed=seed, bands=False))


def _once(root: Path, make) -> Path:
    marker = root / ".complete"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    make(root)
    marker.touch()
    return root


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError:  # the GPU machine has no scikit-image: photograph-like noise instead
        return _stand_in(name)
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _write_photos(root: Path, counts: dict[str, int | list[int]], *, size: int, seed: int, bands: bool = True) -> Path:
    """``counts[split]``: images per class, or a list with one count per photograph."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(PHOTOS):
        photo = _photo(name)
        h, w = photo.shape[:2]
        for split, count in counts.items():
            n = count[k] if isinstance(count, list) else count
            top, bottom = BANDS[split] if bands else (0.0, 1.0)
            band = photo[int(h * top) : int(h * bottom)]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                crop = _crop(band, min(h, w), rng)
                Image.fromarray(crop).resize((size, size), Image.BICUBIC).save(folder / f"{name}_{i:04d}.jpg", quality=92)
    return root


def _stand_in(name: str) -> np.ndarray:
    """Smooth colour noise with grain, 512 px, one per name (only where scikit-image is missing)."""
    from PIL import Image

    rng = np.random.default_rng(PHOTOS.index(name))
    coarse = rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((512, 512), Image.BICUBIC), dtype=np.float32)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _crop(band: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    bh, bw = band.shape[:2]
    side = min(int(rng.integers(short // 6, short // 4 + 1)), bh, bw)
    y = int(rng.integers(0, bh - side + 1))
    x = int(rng.integers(0, bw - side + 1))
    crop = band[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)
