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

The small-data suite (``bench/small_data.py``) adds three tasks and runs four, each written as
``ROOT/{train[,val],test}/<class>/*``; the suite hands a contestant only ``train`` and ``val`` and
keeps ``test`` apart (regraft's discovery would otherwise take ``test/`` for a validation split):

- ``texture-crops``: brick, grass or gravel (scikit-image's three texture photographs, greyscale),
  from crops of 1/8 to 1/4 of the photograph's side, turned by a multiple of 90 degrees, flipped
  at random and with random gain and offset (so that brightness is no cue), from three bands
  that share no pixel (train top half, val the next quarter, test the bottom quarter); 30 / 10 /
  30 per class, 128 px.
- ``photos`` as above.
- ``digits``: scikit-learn's bundled handwritten digits (``load_digits``, 8x8, 16 grey levels),
  ten classes, upsampled to 64 px and each moved by a random affine transform (rotation up to 12
  degrees, scale 0.9 to 1.1, shift up to 3 px) so that no two images are pixel-exact upsamples
  of a grid; 20 training and 40 test images per class and NO validation split: the many-class,
  ~20-images-per-class task, where a method must find its own validation (regraft's split or
  cross-validation, the others an 80/20 split of train).
- ``faces``: scikit-image's ``lfw_subset`` (25 px greyscale crops from Labeled Faces in the Wild:
  100 faces and 100 background patches of the same photographs), upsampled to 64 px; 30 / 20 /
  50 per class.

Offline checks (scikit-image 0.26, scikit-learn 1.9): ``skimage.data``'s ``brain``, ``cells3d``,
``eagle``, ``human_mitosis``, ``kidney``, ``lily``, ``nickel_solidification``,
``palisades_of_vogt``, ``protein_transport``, ``skin`` and ``vortex`` need the network and are not
used, nor scikit-learn's ``fetch_*`` data sets (Olivetti faces, LFW people); everything above
ships inside the two packages.

Nothing here was tuned on any method's results: the task definitions (classes, crop sizes,
counts, bands, seeds) were fixed before the first contestant ran, and a task is made the same
way, bit for bit, from its seed.
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


def texture_crops(root: Path, *, seed: int = 0) -> Path:
    """Brick, grass or gravel from small jittered crops (train/val/test, 30 / 10 / 30 per class)."""
    return _once(root, lambda tmp: _write_textures(tmp, {"train": 30, "val": 10, "test": 30}, size=128, seed=seed))


def digits(root: Path, *, seed: int = 0) -> Path:
    """scikit-learn's digits at 64 px, 20 training and 40 test images per class, no validation split."""
    return _once(root, lambda tmp: _write_digits(tmp, {"train": 20, "test": 40}, size=64, seed=seed))


def faces(root: Path, *, seed: int = 0) -> Path:
    """Face or background patch (scikit-image's ``lfw_subset``) at 64 px, 30 / 20 / 50 per class."""
    return _once(root, lambda tmp: _write_faces(tmp, {"train": 30, "val": 20, "test": 50}, size=64, seed=seed))


# the small-data suite, in the order it runs; the version in each folder name changes with the definition
SUITE = {
    "texture-crops": lambda data: texture_crops(data / "suite-texture-crops-v1"),
    "photos": lambda data: photos(data / "task-photos"),
    "digits": lambda data: digits(data / "suite-digits-v1"),
    "faces": lambda data: faces(data / "suite-faces-v1"),
}


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


def _save(img: np.ndarray, path: Path, *, size: int) -> None:
    from PIL import Image

    pil = Image.fromarray(img)
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.resize((size, size), Image.BICUBIC).save(path, quality=92)


def _write_textures(root: Path, counts: dict[str, int], *, size: int, seed: int) -> None:
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in ("brick", "grass", "gravel"):
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        for split, n in counts.items():
            top, bottom = BANDS[split]
            band = photo[int(h * top) : int(h * bottom)]
            for i in range(n):
                side = min(int(rng.integers(min(h, w) // 8, min(h, w) // 4 + 1)), band.shape[0])
                y, x = int(rng.integers(0, band.shape[0] - side + 1)), int(rng.integers(0, w - side + 1))
                crop = np.rot90(band[y : y + side, x : x + side], int(rng.integers(0, 4)))
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                jittered = crop.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-20, 20)
                _save(np.clip(jittered, 0, 255).astype(np.uint8), root / split / name / f"{name}_{i:03d}.jpg", size=size)


def _write_digits(root: Path, counts: dict[str, int], *, size: int, seed: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        picks = rng.permutation(np.flatnonzero(bunch.target == label))
        start = 0
        for split, n in counts.items():
            for i, idx in enumerate(picks[start : start + n]):
                grey = Image.fromarray((bunch.images[idx] * 255 / 16).astype(np.uint8)).resize((size, size), Image.BICUBIC)
                moved = grey.rotate(
                    float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=0,
                    translate=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))),
                )
                scale = float(rng.uniform(0.9, 1.1))
                side = int(round(size / scale))
                box = ((size - side) // 2, (size - side) // 2, (size - side) // 2 + side, (size - side) // 2 + side)
                out = moved.transform((size, size), Image.EXTENT, box, resample=Image.BILINEAR, fillcolor=0)
                _save(np.asarray(out), root / split / str(label) / f"digit{label}_{i:03d}.png", size=size)
            start += n


def _write_faces(root: Path, counts: dict[str, int], *, size: int, seed: int) -> None:
    import skimage.data

    images = skimage.data.lfw_subset()  # 100 faces, then 100 background patches, floats in [0, 1]
    rng = np.random.default_rng(seed)
    for name, block in (("face", images[:100]), ("background", images[100:])):
        order = rng.permutation(len(block))
        start = 0
        for split, n in counts.items():
            for i, idx in enumerate(order[start : start + n]):
                _save((block[idx] * 255).round().astype(np.uint8), root / split / name / f"{name}_{i:03d}.png", size=size)
            start += n
