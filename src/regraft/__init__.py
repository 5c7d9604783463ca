"""regraft: fine-tune pretrained image classifiers with PyTorch.

    >>> import regraft as rg
    >>> model = rg.create_model("resnet18", weights="none", num_classes=3)   # head grafted
    >>> plan = rg.freeze(model, train=["layer4", "fc"])                         # doctest: +SKIP
    >>> groups = rg.param_groups(model, lr=1e-3, head_lr_mult=10)               # doctest: +SKIP
    >>> result = rg.fit(model, "data/hotdog", epochs=5, strategy="full")       # doctest: +SKIP

Names are imported on first use, so ``import regraft`` (and ``regraft --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from regraft._version import __version__

# public name -> "module:attribute" (attribute None = the module itself)
_LAZY: dict[str, str] = {
    "Config": "regraft.config:Config",
    "create_model": "regraft.api:create_model",
    "fit": "regraft.api:fit",
    "train": "regraft.training.run:train",
    "load_weights": "regraft.weights:load_weights",
    "LoadReport": "regraft.weights:LoadReport",
    "freeze": "regraft.freezing:freeze",
    "FreezePlan": "regraft.freezing:FreezePlan",
    "param_groups": "regraft.optim:param_groups",
    "load_run": "regraft.inference:load_run",
    "evaluate_run": "regraft.inference:evaluate_run",
    "predict": "regraft.inference:predict",
    "export": "regraft.export:export",
    "surgery": "regraft.surgery:",
    "zoo": "regraft.zoo:",
    "errors": "regraft.errors:",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'regraft' has no attribute '{name}'")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
