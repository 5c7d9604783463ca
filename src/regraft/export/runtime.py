"""Running an exported ONNX classifier without torch: onnxruntime, numpy and Pillow only.

The preprocessing is read from the ``model.json`` written beside the ``.onnx`` file and repeats
what the run's evaluation transform does: shorter side resized to ``resize`` with the named
interpolation (torchvision's ``Resize(int)`` rounding), centre crop to the input size (zero
padding when the crop is larger, as torchvision pads), scale to [0, 1], normalise by mean/std.
Nothing here imports torch, so a deployment needs only ``pip install 'regraft[export]'``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from regraft.errors import ExportError, MissingDependencyError

__all__ = ["OnnxClassifier", "load_onnx", "predict_onnx", "require", "sidecar_path"]

log = logging.getLogger(__name__)

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def require(*modules: str, purpose: str) -> None:
    """Import ``modules`` or raise :class:`MissingDependencyError` naming the extra to install."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingDependencyError(
                f"{purpose} needs the {name} package, which cannot be imported ({exc}); "
                "install it with: pip install 'regraft[export]'"
            ) from exc


def sidecar_path(model_file: str | Path) -> Path:
    """The ``model.json`` that describes an exported file: ``<stem>.json`` beside it."""
    p = Path(model_file)
    return p.with_name(f"{p.stem}.json")


def _find_sidecar(model_file: Path) -> Path:
    for candidate in (sidecar_path(model_file), model_file.with_name("model.json")):
        if candidate.is_file():
            return candidate
    raise ExportError(
        f"no {sidecar_path(model_file).name} beside {model_file}: it holds the classes and preprocessing; "
        "export again with 'regraft export RUN --format onnx' or copy the model.json next to the file"
    )


class OnnxClassifier:
    """An exported ONNX model with its class names and preprocessing (from its ``model.json``).

    Example:
        >>> clf = load_onnx("runs/exp1/export/model.onnx")      # doctest: +SKIP
        >>> clf.predict(["cat.jpg"], topk=1)[0]["top"]            # doctest: +SKIP
        [{'class': 'cat', 'prob': 0.97}]
    """

    def __init__(self, path: Path, card: dict[str, Any], session: Any) -> None:
        self.path = path
        self.card = card
        self.session = session
        self.classes: list[str] = list(card["classes"])
        pre = card["preprocessing"]
        self.input_size: tuple[int, int] = (int(pre["input_size"][1]), int(pre["input_size"][2]))
        h, w = self.input_size
        crop_pct = float(pre["crop_pct"])
        # square inputs: shorter side to ``resize``; others: exactly (h, w) / crop_pct (as the run's transform)
        self.resize: int | tuple[int, int] = (
            int(pre.get("resize") or math.floor(h / crop_pct)) if h == w else (int(h / crop_pct), int(w / crop_pct))
        )
        self.interpolation = str(pre["interpolation"])
        if self.interpolation not in _RESAMPLE:
            raise ExportError(
                f"{path}: model.json names interpolation '{self.interpolation}'; expected one of {', '.join(_RESAMPLE)}"
            )
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        self.input_name: str = session.get_inputs()[0].name

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB ``PIL.Image`` -> a normalised ``(3, H, W)`` float32 array."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        size = _resized(image.size, self.resize)
        if size != image.size:
            image = image.resize(size, resample=_RESAMPLE[self.interpolation])
        image = image.crop(_crop_box(image.size, self.input_size))
        arr = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
        return (arr - self.mean) / self.std

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed ``(N, 3, H, W)`` float32 batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def predict(self, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 32) -> list[dict[str, Any]]:
        """Top-k classes with probabilities, in the structure :func:`regraft.inference.predict` returns."""
        from regraft.data.files import expand_paths

        files = expand_paths(paths)
        k = max(1, min(topk, len(self.classes)))
        results: list[dict[str, Any]] = []
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            arrays: dict[int, np.ndarray] = {}
            rows: list[dict[str, Any]] = []
            for i, f in enumerate(chunk):
                try:
                    arrays[i] = self.preprocess(_load_rgb(f))
                    rows.append({"path": str(f)})
                except Exception as exc:  # noqa: BLE001 - one bad file is reported, not fatal
                    rows.append({"path": str(f), "error": f"cannot read image: {exc}"})
            if arrays:
                probs = _softmax(self.logits(np.stack(list(arrays.values()))))
                for i, p in zip(arrays, probs, strict=True):
                    order = np.argsort(-p, kind="stable")[:k]
                    rows[i]["top"] = [{"class": self.classes[j], "prob": round(float(p[j]), 6)} for j in order]
            results += rows
        return results


def load_onnx(path: str | Path, *, providers: Sequence[str] | None = None) -> OnnxClassifier:
    """Open an exported ``.onnx`` file and the ``model.json`` beside it.

    Args:
        path: the ``.onnx`` file written by :func:`regraft.export.export`.
        providers: onnxruntime execution providers (default: CPU).

    Returns:
        An :class:`OnnxClassifier`.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        ExportError: the file or its ``model.json`` is missing or unreadable.
    """
    require("onnxruntime", purpose="running an ONNX model")
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no ONNX file at {path}; export one with 'regraft export RUN --format onnx'")
    card_path = _find_sidecar(path)
    try:
        card = json.loads(card_path.read_text())
    except ValueError as exc:
        raise ExportError(f"{card_path} is not valid JSON ({exc}); export the model again") from exc
    missing = [key for key in ("classes", "preprocessing") if key not in card]
    if missing:
        raise ExportError(f"{card_path} has no {', '.join(missing)}: not a regraft model.json; export the model again")
    try:
        session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own types for malformed files
        raise ExportError(f"onnxruntime cannot load {path} ({' '.join(str(exc).split())[:200]}); export it again") from exc
    return OnnxClassifier(path, card, session)


def predict_onnx(onnx_path: str | Path, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 32) -> list[dict[str, Any]]:
    """Top-k classes for images or folders with an exported ONNX model (no torch needed).

    Args:
        onnx_path: a ``.onnx`` file with its ``model.json`` beside it.
        paths: image files or folders of images.
        topk: classes per image.
        batch_size: images per onnxruntime call.

    Returns:
        One dict per image: ``path`` and ``top`` (``[{"class", "prob"}]``), or ``error``.

    Raises:
        MissingDependencyError, ExportError, DataError (no images found).

    Example:
        >>> predict_onnx("runs/exp1/export/model.onnx", ["cat.jpg"], topk=1)   # doctest: +SKIP
    """
    return load_onnx(onnx_path).predict(paths, topk=topk, batch_size=batch_size)


def _resized(size: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` after resizing: torchvision ``Resize(int)`` rounding, or exact ``(h, w)``."""
    if isinstance(resize, tuple):
        return resize[1], resize[0]
    w, h = size
    new_long = int(resize * max(w, h) / min(w, h))
    return (resize, new_long) if w <= h else (new_long, resize)


def _crop_box(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """torchvision ``CenterCrop`` offsets; a crop larger than the image pads evenly (PIL fills 0)."""
    (w, h), (ch, cw) = size, crop
    left = int(round((w - cw) / 2.0)) if w >= cw else -((cw - w) // 2)
    top = int(round((h - ch) / 2.0)) if h >= ch else -((ch - h) // 2)
    return left, top, left + cw, top + ch


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _load_rgb(path: Path) -> Any:
    from regraft.data.imageio import load_image  # numpy + Pillow: the decoder training used

    return load_image(path)
