"""What images that are not 8-bit RGB cost (docs/channels.md): decode-cache memory and time per
pixel format, the header pass ``--in-chans`` makes, and what 16 bits buy at the model's input.

Generates (in a temporary folder) ``--n`` images of 400x300 per format, then for each format:

- **fill**: seconds per image to decode and resize to the 224-px evaluation stage (256 px
  shorter side) into a RAM decode cache, and the cache's bytes per image;
- **epoch**: seconds per image of a cached epoch (random resized crop + flip + normalise, no
  model), from the cache's uint8 or uint16 pixels: the fastest of three epochs;
- **header pass**: seconds per image of :func:`regraft.data.inputs.detect_pixels`, the fastest of three;

The development machine is shared: the minimum of repeated passes is the figure least disturbed
by other processes.
- **precision**: the largest difference, in normalised input units, between the exact
  ``(v / 65535 - mean) / std`` of a 16-bit ramp and what reaches the model when the image is
  read at 8 bits or at 16 bits.

Usage:
    PYTHONPATH=src python bench/bench_channels.py            # 200 images per format
    PYTHONPATH=src python bench/bench_channels.py --n 50     # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from regraft.data import DecodeCache, ImageDataset, build_transforms, make_loader
from regraft.data.inputs import detect_pixels
from regraft.zoo import DataConfig

FORMATS = {  # name: (channels, bits, file type)
    "RGB JPEG (8-bit, no --in-chans)": (3, 8, ".jpg"),
    "gray PNG, 8-bit": (1, 8, ".png"),
    "gray PNG, 16-bit": (1, 16, ".png"),
    "4-band TIFF, 16-bit": (4, 16, ".tif"),
    "4-band .npy, 8-bit": (4, 8, ".npy"),
}


def _write(folder: Path, n: int, channels: int, bits: int, ext: str) -> list[str]:
    rng = np.random.default_rng(0)
    top = 255 if bits == 8 else 65535
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        yy, xx = np.mgrid[0:300, 0:400]
        base = (np.sin(xx / (17 + i % 5)) + np.cos(yy / 23)) * 0.25 + 0.5
        arr = np.clip(base[..., None] + rng.normal(0, 0.05, (300, 400, channels)), 0, 1)
        arr = np.rint(arr * top).astype(np.uint8 if bits == 8 else np.uint16)
        path = folder / f"{i:05d}{ext}"
        if ext == ".npy":
            np.save(path, arr)
        elif ext == ".tif":
            tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig")
        elif channels == 1:
            Image.fromarray(arr[..., 0]).save(path)
        else:
            Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    return paths


def _measure(paths: list[str], channels: int, bits: int, cache_dir: Path) -> dict[str, float]:
    header = float("nan")
    if channels != 3:
        header = min(_timed(lambda: detect_pixels(paths, channels=channels)) for _ in range(3)) / len(paths)
    dcfg = DataConfig(input_size=(channels, 224, 224), mean=(0.5,) * channels, std=(0.25,) * channels, bit_depth=bits)
    tf = build_transforms(dcfg, train=True, augment="light")
    cache = DecodeCache(ram_bytes="4G", cache_dir=cache_dir, threads=2)
    t0 = time.perf_counter()
    ds = ImageDataset([(p, 0) for p in paths], tf, cache=cache)
    fill = (time.perf_counter() - t0) / len(paths)
    loader = make_loader(ds, batch_size=32, shuffle=True, seed=0, workers=0)

    def one_epoch() -> None:
        for x, _ in loader:
            assert x.dtype == torch.float32 and x.shape[1] == channels

    epoch = min(_timed(one_epoch) for _ in range(3)) / len(paths)
    ram = cache.fill([p for p in paths], resize=tf.resize).ram_bytes / len(paths)
    return {"header": header, "fill": fill, "epoch": epoch, "ram": ram}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _precision(folder: Path) -> dict[int, float]:
    """Largest input error of a 16-bit ramp read at 8 and at 16 bits (mean 0.5, std 0.25)."""
    ramp = np.arange(224 * 224, dtype=np.uint32).reshape(224, 224) * 65535 // (224 * 224 - 1)
    path = folder / "ramp.png"
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    exact = (ramp / 65535.0 - 0.5) / 0.25
    out = {}
    for bits in (8, 16):
        tf = build_transforms(DataConfig(input_size=(1, 224, 224), mean=(0.5,), std=(0.25,), crop_pct=1.0, bit_depth=bits), train=False)
        out[bits] = float(np.abs(tf.load(str(path)).numpy()[0].astype(np.float64) - exact).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images per format (default 200)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="regraft-bench-chans-") as tmp:
        root = Path(tmp)
        print(f"{args.n} images of 400x300 per format; 224 px input (resize stage 256 px); batches of 32, no workers\n")
        print("| format | cache bytes / image | fill s / image | cached epoch s / image | header pass s / image |")
        print("|---|---|---|---|---|")
        for i, (name, (channels, bits, ext)) in enumerate(FORMATS.items()):
            paths = _write(root / f"f{i}", args.n, channels, bits, ext)
            m = _measure(paths, channels, bits, root / "cache")
            header = "—" if np.isnan(m["header"]) else f"{m['header'] * 1e3:.2f} ms"
            print(f"| {name} | {m['ram'] / 1024:.0f} KiB | {m['fill'] * 1e3:.2f} ms | {m['epoch'] * 1e3:.2f} ms | {header} |", flush=True)
        err = _precision(root)
        print(f"\n16-bit ramp, largest input error: read at 8 bits {err[8]:.2e}, at 16 bits {err[16]:.2e} (normalised units, std 0.25)")


if __name__ == "__main__":
    main()
