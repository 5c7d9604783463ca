"""Model names: resolve them against torchvision and timm, build architectures, read data configs.

A bare name resolves in torchvision first, then timm; ``torchvision:NAME`` and ``timm:NAME``
force one zoo. :func:`build` makes the architecture with random weights and its original head,
and records which architecture it is as ``model.regraft_ref`` so that later steps (weights,
head finding, preprocessing) can read it.

``build(..., in_chans=N)`` makes a model for N input channels: timm builds it so itself
(``in_chans=N``); torchvision's builders only make RGB models, so the first convolution (the
one timm's pretrained config names, else the first ``Conv2d`` the module registers, which is
the stem of every torchvision classifier) is replaced by one taking N channels, its weights the
builder's own adapted by :func:`adapt_input_conv` (the rule pretrained weights follow too).

Example:
    >>> ref = resolve("resnet18")
    >>> (ref.zoo, ref.name)
    ('torchvision', 'resnet18')
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from regraft.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelRef", "DataConfig", "resolve", "build", "data_config", "list_models", "first_conv", "adapt_input_conv", "ZOOS"]

log = logging.getLogger(__name__)

ZOOS = ("torchvision", "timm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelRef:
    """Which zoo an architecture comes from and its name there (timm names may carry a tag)."""

    zoo: str
    name: str

    def __str__(self) -> str:
        return f"{self.zoo}:{self.name}"

    @property
    def arch(self) -> str:
        """The architecture name without a timm pretrained tag (``resnet50.a1_in1k`` -> ``resnet50``)."""
        return self.name.split(".", 1)[0] if self.zoo == "timm" else self.name


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing a model's pretrained weights expect, or a run's: ``input_size`` is
    ``(channels, height, width)``; ``bit_depth`` the bits per channel kept until normalisation
    (8 or 16); ``mean_std_from`` where ``mean``/``std`` come from (``weights``, ``config``, ...)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    bit_depth: int = 8
    mean_std_from: str = "weights"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def with_overrides(self, **overrides: Any) -> DataConfig:
        """A copy with ``img_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` replaced (None = keep);
        a given ``mean`` or ``std`` makes ``mean_std_from`` ``config``."""
        values = asdict(self)
        size = overrides.pop("img_size", None)
        if size is not None:
            values["input_size"] = (self.input_size[0], int(size), int(size))
        for key, value in overrides.items():
            if value is not None:
                values[key] = tuple(value) if isinstance(value, list) else value
        if overrides.get("mean") is not None or overrides.get("std") is not None:
            values["mean_std_from"] = "config"
        return DataConfig(**values)

    def with_channels(self, channels: int, *, bit_depth: int, mean: Any, std: Any, mean_std_from: str) -> DataConfig:
        """A copy for ``channels`` input channels at ``bit_depth`` bits with that normalisation."""
        return replace(self, input_size=(int(channels), *self.input_size[1:]), bit_depth=int(bit_depth),
                       mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), mean_std_from=mean_std_from)


@lru_cache(maxsize=1)
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _timm_has(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".", 1)[0]) if name else False


def resolve(name: str | ModelRef) -> ModelRef:
    """Find which zoo ``name`` belongs to.

    Args:
        name: ``resnet18``, ``timm:resnet18``, ``torchvision:vgg16``, ``timm/resnet50.a1_in1k``
            (a hub tag naming a timm model) or a ``ModelRef``.

    Returns:
        The resolved ``ModelRef``.

    Raises:
        ModelError: the name exists in neither zoo (close names are suggested).
    """
    if isinstance(name, ModelRef):
        return name
    text = str(name).strip()
    if not text:
        raise ModelError("no model given: pass --model NAME (see 'regraft models' for names)")
    zoo, sep, bare = text.partition(":")
    if sep and zoo in ZOOS:
        ref = ModelRef(zoo, bare)
        if (zoo == "torchvision" and bare not in _torchvision_names()) or (
            zoo == "timm" and not _timm_has(bare)
        ):
            raise ModelError(f"'{bare}' is not a {zoo} model{_suggest(bare)}")
        return ref
    if text.startswith("timm/"):
        text = text[len("timm/") :]
        if _timm_has(text):
            return ModelRef("timm", text)
    if text in _torchvision_names():
        return ModelRef("torchvision", text)
    if _timm_has(text):
        return ModelRef("timm", text)
    raise ModelError(f"unknown model '{name}' in torchvision and timm{_suggest(text)}")


def _suggest(name: str) -> str:
    import timm

    pool = sorted(set(_torchvision_names()) | set(timm.list_models()))
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(close)}? ('regraft models PATTERN' lists names)"
    return "; 'regraft models PATTERN' lists the names"


def build(name: str | ModelRef, *, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
    """Build an architecture with random weights.

    Args:
        name: a model name or ``ModelRef``.
        num_classes: output classes; None keeps the architecture's default (ImageNet's 1000), which
            lets pretrained heads load before :func:`regraft.surgery.replace_head` swaps them.
        in_chans: input channels (None: the architecture's 3); see the module doc for how.
        **kwargs: passed to the zoo's builder.

    Returns:
        The module, with ``regraft_ref`` set.

    Raises:
        ModelError: an unknown name, or an ``in_chans`` the architecture cannot take.
    """
    ref = resolve(name)
    if in_chans is not None and (isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1):
        raise ModelError(f"in_chans must be a positive number of input channels; got {in_chans!r}")
    if ref.zoo == "torchvision":
        import torchvision

        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if ref.name in ("inception_v3", "googlenet"):
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        model = torchvision.models.get_model(ref.name, weights=None, **kwargs)
        if in_chans is not None and in_chans != 3:
            _take_channels(model, in_chans, ref)
    else:
        import timm

        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        model = timm.create_model(ref.arch, pretrained=False, **kwargs)
    model.regraft_ref = ref
    return model


def first_conv(model: nn.Module) -> str | None:
    """The dotted path of a model's first convolution: what timm's pretrained config names
    (``first_conv``), else the first convolution the module registers; None when it has none."""
    from torch import nn

    named = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    modules = dict(model.named_modules())
    if isinstance(named, str) and isinstance(modules.get(named), nn.modules.conv._ConvNd):
        return named
    return next((path for path, m in modules.items() if isinstance(m, nn.modules.conv._ConvNd)), None)


def adapt_input_conv(weight: Any, channels: int) -> Any:
    """A first-conv weight ``(out, C, ...)`` for ``channels`` inputs, by timm's rule: summed over
    the input channels for one; otherwise channel ``i`` takes the filter of channel ``i mod C``,
    all scaled by ``C / channels``. Computed in float32, returned in the weight's dtype.

    Repeating and scaling keeps the response to an image whose channels all carry the same
    signal equal to the original one; so does the sum for one channel.

    Example:
        >>> import torch
        >>> adapt_input_conv(torch.ones(8, 3, 3, 3), 4)[0, :, 0, 0].tolist()
        [0.75, 0.75, 0.75, 0.75]
    """
    dtype = weight.dtype
    weight = weight.float()
    if channels == 1:
        return weight.sum(dim=1, keepdim=True).to(dtype)
    have = weight.shape[1]
    reps = -(-channels // have)
    tiled = weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :channels]
    return (tiled * (have / float(channels))).to(dtype)


def _take_channels(model: nn.Module, channels: int, ref: ModelRef) -> None:
    """Replace a torchvision model's first convolution by one taking ``channels`` inputs (in place)."""
    import torch
    from torch import nn

    path = first_conv(model)
    conv = model.get_submodule(path) if path else None
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 3 or conv.groups != 1:
        raise ModelError(f"cannot give {ref} {channels} input channels: its first convolution ({path or 'none found'}) "
                         "is not a plain 3-channel Conv2d; use a timm model (timm builds any in_chans)")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(conv.weight, channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    log.info("%s: first convolution %s now takes %d input channels (torchvision builds RGB models)", ref, path, channels)


def data_config(ref: str | ModelRef, *, weights: str | None = None) -> DataConfig:
    """The preprocessing ``ref``'s pretrained weights expect (ImageNet defaults when unknown).

    For torchvision models the weights enum's transforms are read (``weights`` names which enum
    member; ``DEFAULT`` otherwise); for timm models, the pretrained config.
    """
    ref = resolve(ref)
    if ref.zoo == "torchvision":
        return _torchvision_data_config(ref.name, weights)
    return _timm_data_config(ref.name)


def _torchvision_data_config(name: str, weights: str | None) -> DataConfig:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return DataConfig()
    # an enum member name picks that member's transforms; anything else (a file, none) the default's
    key = (weights or "DEFAULT").rsplit(".", 1)[-1]
    member = enum[key] if key in enum.__members__ else enum.DEFAULT
    keywords = getattr(member.transforms, "keywords", {}) or {}
    crop = int(_first(keywords.get("crop_size", 224)))
    resize = int(_first(keywords.get("resize_size", 256)))
    interp = keywords.get("interpolation")
    interp_name = getattr(interp, "value", None) or "bilinear"
    return DataConfig(
        input_size=(3, crop, crop),
        mean=tuple(keywords.get("mean", IMAGENET_MEAN)),
        std=tuple(keywords.get("std", IMAGENET_STD)),
        interpolation=str(interp_name),
        crop_pct=round(crop / resize, 4),
    )


def _timm_data_config(name: str) -> DataConfig:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return DataConfig()
    c, h, w = cfg.input_size
    return DataConfig(
        input_size=(int(c), int(h), int(w)),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        interpolation=cfg.interpolation or "bicubic",
        crop_pct=float(cfg.crop_pct or 0.875),
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def list_models(pattern: str | None = None, *, zoo: str | None = None) -> list[ModelRef]:
    """Model names in both zoos matching a glob (``*resnet*``) or substring, torchvision first."""
    import timm

    def match(name: str) -> bool:
        if not pattern:
            return True
        if any(ch in pattern for ch in "*?["):
            return fnmatch.fnmatch(name, pattern)
        return pattern.lower() in name.lower()

    refs: list[ModelRef] = []
    if zoo in (None, "torchvision"):
        refs += [ModelRef("torchvision", n) for n in sorted(_torchvision_names()) if match(n)]
    if zoo in (None, "timm"):
        refs += [ModelRef("timm", n) for n in timm.list_models() if match(n)]
    return refs
