"""Generate small image folders for tests: classes told apart by colour, with noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A base colour per class name; unknown names get a colour from their hash.
_COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 60, 200),
    "yellow": (210, 200, 40),
    "gray": (128, 128, 128),
}


def class_colour(name: str) -> tuple[int, int, int]:
    if name in _COLOURS:
        return _COLOURS[name]
    rng = np.random.default_rng(abs(hash(name)) % (2**32))
    return tuple(int(v) for v in rng.integers(30, 226, size=3))


def make_image(colour, size: int, rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    base = np.array(colour, dtype=np.float32)
    noise = rng.normal(0, 25, size=(size, size, 3))
    # a random bright square so images are not flat colour
    arr = np.clip(base + noise, 0, 255)
    x, y = rng.integers(0, size // 2, size=2)
    arr[y : y + size // 4, x : x + size // 4] = rng.integers(0, 255, size=3)
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    return img.convert(mode) if mode != "RGB" else img


def make_photo(colour, rng: np.random.Generator, *, width: int = 300, height: int = 400) -> Image.Image:
    """A ``width`` x ``height`` photo-like image, larger than test inputs (JPEG draft decoding applies)."""
    return make_image(colour, max(width, height), rng).crop((0, 0, width, height))


def make_image_folder(
    root: Path,
    *,
    classes=("blue", "red"),
    per_class: int = 12,
    size: int = 32,
    split: bool = True,
    val_name: str = "val",
    val_per_class: int | None = None,
    seed: int = 0,
    ext: str = ".png",
    counts: dict[str, int] | None = None,
) -> Path:
    """Write ``root/{train,val}/<class>/*.png`` (or ``root/<class>/*`` when ``split=False``).

    ``counts`` gives some classes their own number of training images (an imbalanced folder);
    their validation share is half of it, at least 2.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    splits = {"train": per_class, val_name: val_per_class or max(per_class // 2, 2)} if split else {"": per_class}
    for split_name, n_split in splits.items():
        for cls in classes:
            n = n_split
            if counts and cls in counts:
                n = counts[cls] if split_name in ("train", "") else max(counts[cls] // 2, 2)
            d = root / split_name / cls if split_name else root / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(class_colour(cls), size, rng).save(d / f"{cls}_{i:03d}{ext}")
    return root


def make_multilabel_image(labels, names, size: int, rng: np.random.Generator) -> Image.Image:
    """A gray noisy image with one coloured patch per present label, each label in its own place."""
    arr = np.clip(rng.normal(110, 12, size=(size, size, 3)), 0, 255)
    cells = int(np.ceil(np.sqrt(len(names))))
    step = size // cells
    for j, name in enumerate(names):
        if name in labels:
            r, c = divmod(j, cells)
            arr[r * step + 1 : (r + 1) * step - 1, c * step + 1 : (c + 1) * step - 1] = class_colour(name)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def make_multilabel_data(
    root: Path, *, names=("red", "green", "blue"), n_train: int = 36, n_val: int = 18, size: int = 32, seed: int = 0,
    sep: str = ";", empty_every: int = 0,
) -> Path:
    """``root/images/*.png`` with overlapping labels and ``root/train.csv``, ``root/val.csv`` (``path,labels``).

    Each image carries a random non-empty subset of ``names`` (every ``empty_every``-th image none);
    the subsets cycle so every label has positives in both splits.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    subsets = [tuple(n for j, n in enumerate(names) if (k >> j) & 1) for k in range(1, 2 ** len(names))]
    for split, count in (("train", n_train), ("val", n_val)):
        lines = ["path,labels"]
        for i in range(count):
            labels = () if empty_every and i % empty_every == empty_every - 1 else subsets[(i + rng.integers(0, 2)) % len(subsets)]
            rel = f"images/{split}_{i:03d}.png"
            make_multilabel_image(labels, names, size, rng).save(root / rel)
            lines.append(f"{rel},{sep.join(labels)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def band_image(label: int, *, channels: int, depth: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(size, size, channels)`` uint8/uint16 array whose class shows only in its last band
    (mean 30% or 70% of full scale); the other bands are the same noise for every class."""
    top = 255 if depth == 8 else 65535
    arr = rng.normal(0.5, 0.12, size=(size, size, channels))
    arr[..., -1] = rng.normal(0.3 + 0.4 * label, 0.08, size=(size, size))
    x, y = rng.integers(0, size // 2, size=2)
    arr[y : y + size // 4, x : x + size // 4, :-1] = rng.random(max(channels - 1, 0))  # a patch in the other bands
    return np.clip(np.rint(arr * top), 0, top).astype(np.uint8 if depth == 8 else np.uint16)


def save_bands(arr: np.ndarray, path: Path) -> Path:
    """Write an ``(H, W, C)`` array as ``path``'s format: PNG (L, I;16, LA, RGB, RGBA), TIFF
    (tifffile, contiguous bands) or ``.npy``."""
    path = Path(path)
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig")
    else:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[-1]]
        image = Image.fromarray(arr[..., 0]) if arr.shape[-1] == 1 else Image.fromarray(arr, mode)
        image.save(path)
    return path


def make_band_folder(
    root: Path, *, channels: int, depth: int = 8, ext: str = ".png", classes=("dim", "bright"), per_class: int = 12,
    size: int = 32, val_per_class: int | None = None, seed: int = 0,
) -> Path:
    """``root/{train,val}/<class>/*`` of :func:`band_image` images (class ``i`` of two: the last
    band's level), saved as ``ext``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class or max(per_class // 2, 2))):
        for label, cls in enumerate(classes):
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                save_bands(band_image(label, channels=channels, depth=depth, size=size, rng=rng), d / f"{cls}_{i:03d}{ext}")
    return Path(root)
