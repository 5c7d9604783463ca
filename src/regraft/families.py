"""Facts about architecture families, in one table: which family a module is, where its head lives.

Generic code asks the model first (timm's ``pretrained_cfg['classifier']``, ``get_classifier``,
``group_matcher``); where a family cannot answer, this module answers for it. Nothing else in
regraft keeps an ``if family == ...`` table.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["family", "TORCHVISION_HEADS", "FC_ALIAS_FAMILIES", "GRAFTED"]

GRAFTED = "grafted"
# torchvision class name -> where its classifier lives (a module or the container holding it)
TORCHVISION_HEADS: dict[str, str] = {
    "VGG": "classifier", "AlexNet": "classifier", "ResNet": "fc", "RegNet": "fc",
    "ShuffleNetV2": "fc", "GoogLeNet": "fc", "Inception3": "fc", "MobileNetV2": "classifier",
    "MobileNetV3": "classifier", "EfficientNet": "classifier", "MNASNet": "classifier",
    "DenseNet": "classifier", "ConvNeXt": "classifier", "MaxVit": "classifier",
    "SqueezeNet": "classifier", "VisionTransformer": "heads", "SwinTransformer": "head",
}
# torchvision model-name prefixes -> class name, for subclasses that keep the family's layout
_NAME_PREFIXES = (
    ("vgg", "VGG"), ("alexnet", "AlexNet"), ("resnet", "ResNet"), ("resnext", "ResNet"),
    ("wide_resnet", "ResNet"), ("regnet", "RegNet"), ("shufflenet", "ShuffleNetV2"),
    ("googlenet", "GoogLeNet"), ("inception", "Inception3"), ("mobilenet_v2", "MobileNetV2"),
    ("mobilenet_v3", "MobileNetV3"), ("efficientnet", "EfficientNet"), ("mnasnet", "MNASNet"),
    ("densenet", "DenseNet"), ("convnext", "ConvNeXt"), ("maxvit", "MaxVit"),
    ("squeezenet", "SqueezeNet"), ("vit_", "VisionTransformer"), ("swin", "SwinTransformer"),
)
# torchvision families whose classifier is a Sequential of Linear layers named fc1, fc2, ... in papers
FC_ALIAS_FAMILIES = ("torchvision:VGG", "torchvision:AlexNet")


def family(model: nn.Module, *, ref: Any = None) -> str | None:
    """``"torchvision:VGG"``, ``"timm"``, ``"grafted"`` or None for a user's own module."""
    if getattr(type(model), "regraft_family", None) == GRAFTED:  # surgery.extract's trunk + new head
        return GRAFTED
    ref = ref if ref is not None else getattr(model, "regraft_ref", None)
    cls = type(model)
    if cls.__module__.startswith("torchvision.models") and cls.__name__ in TORCHVISION_HEADS:
        return f"torchvision:{cls.__name__}"
    if getattr(ref, "zoo", None) == "torchvision":
        for prefix, name in _NAME_PREFIXES:
            if str(ref.name).startswith(prefix):
                return f"torchvision:{name}"
    if getattr(ref, "zoo", None) == "timm" or (
        isinstance(getattr(model, "pretrained_cfg", None), dict) and hasattr(model, "get_classifier")
    ):
        return "timm"
    return None
