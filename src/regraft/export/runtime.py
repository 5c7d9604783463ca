"""Running an exported ONNX classifier without torch: onnxruntime, numpy and Pillow only.

The preprocessing is read from the ``model.json`` written beside the ``.onnx`` file, checked
against the graph (input size, number of outputs), and computed by :mod:`regraft.data.views`:
the one decode path that training's validation and ``regraft eval``/``predict`` use, so the
model sees the same input floats (JPEG draft decoding, resize, centre crop, normalisation).
Nothing here imports torch, so a deployment needs only ``pip install 'regraft[export]'``.

A multi-label model (``model.json``'s ``task``) is decided as ``regraft predict RUN`` decides it:
a sigmoid per label, every label above its ``thresholds`` entry (:mod:`regraft.tasks.decide`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from regraft.data.imageio import ImageDecodeError, resize_image
from regraft.data.views import (
    TTA,
    center_crop,
    eval_resize,
    normalize_affine,
    read_eval_pixels,
    to_input,
    views,
)
from regraft.errors import ExportError, MissingDependencyError
from regraft.inference.card import card_problem, pixel_format
from regraft.tasks.decide import above_thresholds, probabilities, read_thresholds

__all__ = ["OnnxClassifier", "load_onnx", "predict_onnx", "require", "sidecar_path"]

log = logging.getLogger(__name__)


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

    Files are decoded and cut exactly as ``regraft eval``/``predict`` and training's validation
    do (:mod:`regraft.data.views`: JPEG draft decoding, the resize stage, torchvision's centre
    crop offsets, the same float32 normalisation constants), so the model sees identical inputs.

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
        self.pixels = pixel_format(card)  # channels and bits, read as training read them
        self.input_size: tuple[int, int] = (int(pre["input_size"][1]), int(pre["input_size"][2]))
        self.resize = eval_resize(self.input_size, float(pre["crop_pct"]), str(pre["interpolation"]), pixels=self.pixels)
        self.interpolation = self.resize.interpolation
        self.scale, self.offset = normalize_affine(pre["mean"], pre["std"], max_value=self.pixels.max_value)
        self.input_name: str = session.get_inputs()[0].name
        self.thresholds: list[float] | None = read_thresholds(card)  # None: one class per image (softmax)

    def preprocess(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """An image you decoded yourself (``PIL.Image``, any mode; or an array of bands) -> the
        normalised ``(C, H, W)`` float32 input, its channels and bits as the model's card says."""
        return to_input(center_crop(resize_image(image, self.resize), self.input_size), self.scale, self.offset)

    def load(self, path: str | Path, *, tta: TTA | str = TTA.NONE) -> np.ndarray:
        """A file -> its ``(views, C, H, W)`` float32 inputs, decoded as evaluation decodes (view 0: plain)."""
        pixels = read_eval_pixels(path, self.resize)
        return np.stack([to_input(v, self.scale, self.offset) for v in views(pixels, self.input_size, tta=tta)])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed ``(N, C, H, W)`` float32 batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def predict(self, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 32, tta: TTA | str = TTA.NONE) -> list[dict[str, Any]]:
        """Top-k classes with probabilities, in the structure :func:`regraft.inference.predict` returns.

        ``tta`` averages the softmax probabilities of the views (``flip``, ``flip+crops``) as
        ``regraft predict RUN --tta`` does; the exported model itself sees one view at a time.
        A multi-label model also gives ``labels``: every label above its threshold.
        """
        from regraft.data.files import expand_paths

        tta = TTA.parse(tta)
        files = expand_paths(paths)
        k = max(1, min(topk, len(self.classes)))
        results: list[dict[str, Any]] = []
        for start in range(0, len(files), batch_size):
            rows, inputs = [], {}
            for i, f in enumerate(files[start : start + batch_size]):
                try:
                    inputs[i] = self.load(f, tta=tta)
                    rows.append({"path": str(f)})
                except ImageDecodeError as exc:  # one bad file is reported, not fatal
                    rows.append({"path": str(f), "error": f"cannot read image: {exc.reason}"})
            if inputs:
                stacked = np.stack(list(inputs.values()))  # (n, views, C, H, W)
                multilabel = self.thresholds is not None
                per_view = [probabilities(self.logits(stacked[:, v]), multilabel=multilabel) for v in range(stacked.shape[1])]
                probs = np.mean(per_view, axis=0)
                for j, i in enumerate(inputs):
                    rows[i]["top"] = _top(probs[j], self.classes, k)
                    if self.thresholds is not None:
                        rows[i]["labels"] = above_thresholds(probs[j], self.classes, self.thresholds)
                    if tta is not TTA.NONE:
                        rows[i]["plain"] = (above_thresholds(per_view[0][j], self.classes, self.thresholds) if multilabel
                                            else _top(per_view[0][j], self.classes, 1)[0])
            results += rows
        return results


def _top(p: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-p, kind="stable")[:k]  # ties keep class order
    return [{"class": classes[j], "prob": round(float(p[j]), 6)} for j in order]


def _check_against_graph(path: Path, card_path: Path, card: dict[str, Any], session: Any) -> None:
    """The ``model.json`` must describe this graph: its input size and its number of outputs."""
    want = [int(v) for v in card["preprocessing"]["input_size"]]
    dims = list(session.get_inputs()[0].shape)
    if len(dims) != 4:
        raise ExportError(f"{path} takes a {len(dims)}-D input, not an image batch (N, C, H, W); export the model again")
    fixed = [(axis, int(d), w) for axis, (d, w) in enumerate(zip(dims[1:], want, strict=True), start=1) if isinstance(d, int)]
    if any(d != w for _, d, w in fixed):
        got = "x".join(str(d) if isinstance(d, int) else "?" for d in dims[1:])
        raise ExportError(
            f"{card_path} describes input {'x'.join(map(str, want))} but {path} takes {got}: the two files come from "
            "different exports; export again with 'regraft export RUN --format onnx'"
        )
    out = list(session.get_outputs()[0].shape)
    n = len(card["classes"])
    if out and isinstance(out[-1], int) and out[-1] != n:
        raise ExportError(
            f"{card_path} names {n} classes but {path} outputs {out[-1]}: the two files come from different exports; "
            "export again with 'regraft export RUN --format onnx'"
        )


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
    card = _read_card(card_path)
    try:
        session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own types for malformed files
        raise ExportError(f"onnxruntime cannot load {path} ({' '.join(str(exc).split())[:200]}); export it again") from exc
    _check_against_graph(path, card_path, card, session)
    return OnnxClassifier(path, card, session)


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot read {card_path} ({exc.strerror or exc}); check its permissions") from None
    except ValueError as exc:  # invalid JSON or not UTF-8
        raise ExportError(f"{card_path} is not valid JSON ({exc}); export the model again") from None
    problem = card_problem(card)
    if problem:
        raise ExportError(f"{card_path} is not a usable regraft model.json: {problem}; export the model again")
    return card


def predict_onnx(
    onnx_path: str | Path, paths: Sequence[str | Path], *, topk: int = 5, batch_size: int = 32, tta: TTA | str = TTA.NONE
) -> list[dict[str, Any]]:
    """Top-k classes for images or folders with an exported ONNX model (no torch needed).

    Args:
        onnx_path: a ``.onnx`` file with its ``model.json`` beside it.
        paths: image files or folders of images.
        topk: classes per image.
        batch_size: images per onnxruntime call.
        tta: ``none``, ``flip`` or ``flip+crops``: average the views' probabilities.

    Returns:
        One dict per image: ``path`` and ``top`` (``[{"class", "prob"}]``; with ``tta`` also
        ``plain``, the top-1 without it), or ``error``.

    Raises:
        MissingDependencyError, ExportError, DataError (no images found).

    Example:
        >>> predict_onnx("runs/exp1/export/model.onnx", ["cat.jpg"], topk=1)   # doctest: +SKIP
    """
    return load_onnx(onnx_path).predict(paths, topk=topk, batch_size=batch_size, tta=tta)

