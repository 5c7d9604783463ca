"""Using a finished run: load it back, evaluate it, predict with it, in the numerics of inference.

- :mod:`~regraft.inference.numerics`: :class:`Numerics` and :data:`INFERENCE_NUMERICS`, the one
  precision and memory format of validation, eval, predict and exports (fp32, channels_last);
- :mod:`~regraft.inference.loading`: :func:`load_run` (best or EMA weights; every damaged file
  is one line naming it), :func:`build_model_from_card`; :mod:`~regraft.inference.card` checks a
  ``model.json`` without torch (the ONNX runtime uses it);
- :mod:`~regraft.inference.images`: files -> batches through the one decode path
  (:mod:`regraft.data.views`), with test-time augmentation views;
- :mod:`~regraft.inference.metrics`: torchmetrics' classification metrics;
- :mod:`~regraft.inference.evaluate`: :func:`evaluate_run`, :func:`predict`.

Names are imported on first use, so the torch-free parts (``card``) stay torch-free.

Example:
    >>> metrics = evaluate_run("runs/exp1")                       # doctest: +SKIP
    >>> predict("runs/exp1", ["cat.jpg"], topk=3)[0]["top"][0]     # doctest: +SKIP
    {'class': 'cat', 'prob': 0.97}
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "evaluate": ("evaluate_run", "predict", "resolve_device"),
    "loading": ("LoadedRun", "WeightsChoice", "build_model_from_card", "has_ema", "load_run"),
    "card": ("check_card", "read_card"),
    "metrics": ("classification_metrics", "expected_calibration_error"),
    "numerics": ("INFERENCE_NUMERICS", "Numerics", "Precision"),
}
_MODULE_OF = {name: f"regraft.inference.{module}" for module, names in _WHERE.items() for name in names}
_MODULE_OF |= {"TTA": "regraft.data.views", "list_images": "regraft.data.files", "expand_paths": "regraft.data.files"}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'regraft.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
