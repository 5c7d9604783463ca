"""The short Python API: build a ready-to-train model, or fit any model on a folder.

Example:
    >>> import regraft as rg
    >>> model = rg.create_model("resnet18", weights="none", num_classes=3)
    >>> model.fc.out_features
    3
    >>> rg.create_model("resnet18", weights="none", num_classes=2, in_chans=1).conv1.in_channels
    1
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from regraft import zoo
from regraft.config import Config

__all__ = ["create_model", "fit"]


def create_model(
    name: str,
    *,
    weights: str | Path | Mapping[str, Any] | nn.Module = "DEFAULT",
    num_classes: int,
    hidden: tuple[int, ...] = (),
    dropout: float = 0.0,
    min_coverage: float = 0.9,
    in_chans: int | None = None,
    **load_options: Any,
) -> nn.Module:
    """A torchvision/timm model with pretrained weights loaded and a new head for ``num_classes``.

    Args:
        name: model name (``resnet18``, ``timm:convnext_tiny``, ...).
        weights: any weights spec (see ``docs/weights.md``), a state dict or a module; ``none`` for random init.
        num_classes: classes of the new head.
        hidden, dropout: optional hidden layers and dropout in the new head.
        min_coverage: refuse weights that cover less of the trunk than this.
        in_chans: input channels (None: 3). The pretrained first convolution is adapted (summed
            for 1 channel, repeated and rescaled for more, as timm does); the load report's
            ``adapted`` says how (docs/channels.md).
        **load_options: passed to :func:`regraft.weights.load_weights` (``rename``, ``skip``, ...).

    Returns:
        The model; ``model.regraft_load_report`` holds the :class:`~regraft.weights.LoadReport`.

    Raises:
        ModelError, WeightsError, CoverageError.
    """
    from regraft import surgery

    model = zoo.build(name, in_chans=in_chans)
    head = surgery.replace_head(model, num_classes, hidden=hidden, dropout=dropout)
    model.regraft_load_report = None
    if not (isinstance(weights, str) and weights.lower() in ("", "none")):
        from regraft.weights import check_coverage, load_weights

        report = load_weights(model, weights, head=head, **load_options)
        check_coverage(report, min_coverage=min_coverage)
        model.regraft_load_report = report
    return model


def fit(model: str | nn.Module, data: str | Path, **settings: Any):
    """Train ``model`` on the image folder ``data``; any :class:`~regraft.config.Config` key is a keyword.

    Args:
        model: a model name, or your own ``nn.Module`` (its head is found and replaced when the
            class count differs; pass ``weights="none"`` unless you also give a weights spec).
        data: an image folder (see ``regraft train --help``).

    Returns:
        A :class:`regraft.training.run.RunResult` (``.run``, ``.summary``, ``.history``).
    """
    from regraft.training.run import train

    if isinstance(model, nn.Module):
        settings.setdefault("weights", "none")
        cfg = Config.from_dict({"data": str(data), "model": "custom", **settings}, source="fit()")
        return train(cfg, model=model)
    cfg = Config.from_dict({"data": str(data), "model": model, **settings}, source="fit()")
    return train(cfg)
