"""Preprocessing from the pretrained weights' data config, augmentation levels, mixup/cutmix.

A transform runs in two stages so that the decode cache can hold the first one:

1. **resize** (deterministic, Pillow): the image's shorter side to ``floor(size / crop_pct)``
   (the evaluation resize of timm and torchvision; 256 for 224 at crop 0.875);
2. **crop** (on the uint8 tensor): ``CenterCrop(size)`` for evaluation and ``augment="none"``;
   ``RandomResizedCrop(size)`` + horizontal flip for ``light``; that + ``TrivialAugmentWide``
   for ``strong``; then the weights' mean/std normalisation.

Images have the channels of the data config's ``input_size[0]`` and its ``bit_depth``
(:class:`~regraft.data.pixels.PixelFormat`). 16-bit pixels travel as int32 tensors (torch has
no arithmetic on uint16) and are divided by 65535 in the one normalisation; ``strong`` runs
TrivialAugmentWide on them scaled to 0-1. TrivialAugmentWide's colour operations need 1 or 3
channels, so ``strong`` is refused for other counts.

Training crops are therefore taken from the image at the evaluation resize rather than at its
full resolution; that is what lets later epochs skip decoding while augmentation still differs
each epoch.

Example:
    >>> from regraft.zoo import DataConfig
    >>> t = build_transforms(DataConfig(), train=False)
    >>> t.size, t.resize.shorter
    ((224, 224), 256)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from regraft.data.imageio import ResizeSpec, resize_image
from regraft.data.pixels import PixelFormat
from regraft.data.views import crop_box, eval_resize, normalize_affine, read_eval_pixels
from regraft.errors import ConfigError

__all__ = ["AUGMENTS", "ImageTransform", "build_transforms", "mixup_cutmix", "MultiHotMix", "DataConfigLike"]

AUGMENTS = ("none", "light", "strong")


class DataConfigLike(Protocol):
    """What :func:`build_transforms` reads from ``regraft.zoo.DataConfig``."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    bit_depth: int


@dataclass(frozen=True, eq=False)
class ImageTransform:
    """PIL image -> normalised float tensor ``(C, H, W)``, split into cacheable stages.

    ``pre`` (resize, deterministic) -> ``post`` (crop/augment; uint8, int32 for 16-bit) -> ``normalize``.
    """

    size: tuple[int, int]
    resize: ResizeSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    train: bool
    crop: Callable[[torch.Tensor], torch.Tensor]

    @property
    def pixels(self) -> PixelFormat:
        """The channels and bits images are read in (the resize stage carries them)."""
        return self.resize.pixels

    def pre(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """Conform a PIL image (any mode) or an array to :attr:`pixels` and resize it: ``(H, W, C)``."""
        return resize_image(img, self.resize)

    def post(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Crop (and augment) an ``(H, W, C)`` image: a ``(C, h, w)`` uint8 (16-bit: int32) tensor."""
        x = self.tensor(pixels)
        # the HWC view is what the uint8 resize kernels are fastest on; their output keeps that
        # channels-last layout, in which normalising and batching run several times slower
        return self.crop(x.permute(2, 0, 1)).contiguous()

    @staticmethod
    def tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(H, W, C)`` pixels as a tensor: uint8 as it is (no copy), uint16 as int32 (torch has
        no arithmetic on uint16, and int32 holds every value exactly)."""
        if isinstance(pixels, torch.Tensor):
            return pixels
        if pixels.dtype == np.uint16:
            return torch.from_numpy(pixels.astype(np.int32))
        return torch.from_numpy(pixels)

    def normalize(self, x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8/int32 ``(C, H, W)`` -> float32 ``(x / max - mean) / std``, as one multiply-add
        (``max`` is 255, or 65535 for 16-bit pixels).

        With ``out`` (a float32 tensor of the same shape, e.g. a slot of a batch), the result is
        written there: the loaders normalise each image straight into its batch, so that no
        per-image float copy is allocated (fresh memory costs page faults).
        """
        scale, offset = self._affine()
        if x.device.type != "cpu":
            scale, offset = scale.to(x.device), offset.to(x.device)
        if out is None:
            return x.to(torch.float32, copy=True).mul_(scale).add_(offset)
        return torch.mul(x, scale, out=out).add_(offset)

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        # the constants of regraft.data.views, which the torch-free ONNX runtime uses too
        scale, offset = normalize_affine(self.mean, self.std, max_value=self.pixels.max_value)
        return torch.from_numpy(scale).view(-1, 1, 1), torch.from_numpy(offset).view(-1, 1, 1)

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        """An image you decoded yourself (PIL), or resize-stage pixels (an ``(H, W, C)`` array)."""
        pixels = img if isinstance(img, np.ndarray) else self.pre(img)
        return self.normalize(self.post(pixels))

    def load(self, path: str) -> torch.Tensor:
        """Decode a file the way the data loaders do (JPEG draft decoding included) and transform it.

        For the evaluation transform this is the one decode path of validation, ``regraft eval``,
        ``regraft predict`` and the ONNX runtime (:mod:`regraft.data.views`).
        """
        return self.normalize(self.post(read_eval_pixels(path, self.resize)))

    def describe(self) -> dict[str, Any]:
        """The preprocessing as plain values (for ``model.json`` and logs)."""
        return {
            "input_size": [self.pixels.channels, *self.size],
            "bit_depth": self.pixels.depth,
            "resize": self.resize.shorter if self.resize.shorter is not None else list(self.resize.exact),
            "interpolation": self.resize.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment if self.train else "none",
        }


def build_transforms(
    data_config: DataConfigLike,
    *,
    train: bool,
    augment: str = "light",
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> ImageTransform:
    """The transform for training (``train=True``, per ``augment``) or evaluation.

    Args:
        data_config: the pretrained weights' preprocessing (``regraft.zoo.data_config``).
        train: training (random crops per ``augment``) or evaluation (resize + center crop).
        augment: ``none`` (the evaluation transform), ``light`` or ``strong``.
        img_size, mean, std, interpolation, crop_pct: overrides (None keeps the config's).

    Returns:
        An :class:`ImageTransform` for ``data_config.input_size[0]`` channels at its
        ``bit_depth`` (8 when it has none).

    Raises:
        ConfigError: an unknown augment level or interpolation, out-of-range values, mean/std
            without one value per channel, or ``strong`` for other channel counts than 1 and 3.
    """
    if augment not in AUGMENTS:
        raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; got '{augment}'")
    c, h, w = data_config.input_size
    pixels = PixelFormat(int(c), int(getattr(data_config, "bit_depth", 8)))
    h, w = (int(img_size), int(img_size)) if img_size is not None else (int(h), int(w))
    mean_t = _per_channel(mean if mean is not None else data_config.mean, "mean", pixels.channels)
    std_t = _per_channel(std if std is not None else data_config.std, "std", pixels.channels)
    if min(std_t) <= 0:
        raise ConfigError(f"std values must be positive; got {list(std_t)}")
    interp = interpolation or data_config.interpolation
    interp = "bilinear" if interp == "random" else interp  # timm's train-time random choice
    pct = float(crop_pct if crop_pct is not None else data_config.crop_pct)
    resize = eval_resize((h, w), pct, interp, pixels=pixels)
    level = augment if train else "none"
    if level == "strong" and pixels.channels not in (1, 3):
        raise ConfigError(f"augment strong (TrivialAugmentWide) works on 1 or 3 channels; this run reads {pixels.channels}: "
                          "use augment light")
    return ImageTransform((h, w), resize, mean_t, std_t, augment, train, _crop_stage((h, w), interp, level, pixels))


def _crop_stage(size: tuple[int, int], interp: str, level: str, pixels: PixelFormat) -> Callable[[torch.Tensor], torch.Tensor]:
    if level == "none":
        return _CenterCrop(size)
    crop = _RandomResizedCropFlip(size, interp)
    if level == "strong":
        taw = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode(interp))
        return v2.Compose([crop, taw if pixels.depth == 8 else _OnUnitRange(taw, pixels.max_value)])
    return crop


class _OnUnitRange:
    """Run a transform made for 0-1 floats on int32 pixels of full scale ``top`` (16-bit images)."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], top: float) -> None:
        self.transform, self.top = transform, top

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = self.transform(img.to(torch.float32) / self.top)
        return out.mul_(self.top).round_().clamp_(0, self.top).to(img.dtype)

    def __repr__(self) -> str:
        return f"{self.transform!r} on 0-1"


class _CenterCrop:
    """``CenterCrop(size)`` on a ``(C, H, W)`` tensor (a view when the image is large enough).

    The offsets (and the zero padding of a crop larger than the image) come from
    :func:`regraft.data.views.crop_box`, which the torch-free ONNX runtime crops with too.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        (ch, cw), (height, width) = self.size, img.shape[-2:]
        top, left = crop_box(height, width, self.size)
        if top < 0 or left < 0 or top + ch > height or left + cw > width:
            pad_y, pad_x = max(-top, 0), max(-left, 0)
            img = torch.nn.functional.pad(img, (pad_x, max(cw - width - pad_x, 0), pad_y, max(ch - height - pad_y, 0)))
            top, left = max(top, 0), max(left, 0)
        return img[..., top : top + ch, left : left + cw]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class _RandomResizedCropFlip:
    """``RandomResizedCrop(size)`` then a horizontal flip with probability 1/2, in one step.

    The same distribution as torchvision's ``RandomResizedCrop`` (area scale 0.08-1, aspect
    ratio 3/4-4/3 log-uniform, ten tries, then a centre crop clamped to the ratio range), drawn
    from torch's global generator; calling the kernel directly avoids the per-call overhead of
    the composed v2 transforms, which costs as much as the resize on small images.
    """

    def __init__(self, size: tuple[int, int], interp: str, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        self.size, self.interp, self.scale, self.ratio = size, interp, scale, ratio

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, height, width = img.shape
        top, left, h, w = self.params(height, width)
        out = v2.functional.resized_crop(
            img, top, left, h, w, list(self.size), interpolation=v2.InterpolationMode(self.interp), antialias=True
        )
        return out.flip(-1) if float(torch.rand(())) < 0.5 else out

    def params(self, height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            draws = torch.rand(2).tolist()
            target = area * (self.scale[0] + draws[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + draws[1] * (log_hi - log_lo))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, ()))
                left = int(torch.randint(0, width - w + 1, ()))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, interpolation={self.interp}) + RandomHorizontalFlip()"


def _per_channel(values: Sequence[float], name: str, channels: int) -> tuple[float, ...]:
    vals = tuple(float(v) for v in values)
    if len(vals) != channels:
        what = "one per RGB channel" if channels == 3 else f"one per input channel: the model takes {channels}"
        raise ConfigError(f"{name} needs {channels} value{'s' if channels != 1 else ''} ({what}); got {list(vals)}")
    return vals


def mixup_cutmix(
    num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, multilabel: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """A batch transform ``(images, labels) -> (images, soft labels)``, or None when both are off.

    With both alphas positive each batch gets one of the two, chosen at random. Labels come back
    as ``(B, num_classes)`` probabilities (``CrossEntropyLoss`` accepts them). With
    ``multilabel`` the labels are multi-hot ``(B, L)`` rows and come back mixed the same way as
    the images (``λ·y_i + (1-λ)·y_j``: targets between 0 and 1 for the BCE).

    Raises:
        ConfigError: a negative alpha.
    """
    for name, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)):
        if alpha < 0:
            raise ConfigError(f"{name} alpha must be 0 (off) or positive; got {alpha}")
    if multilabel:
        return MultiHotMix(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha) if mixup_alpha > 0 or cutmix_alpha > 0 else None
    parts: list[Callable] = []
    if mixup_alpha > 0:
        parts.append(v2.MixUp(alpha=float(mixup_alpha), num_classes=num_classes))
    if cutmix_alpha > 0:
        parts.append(v2.CutMix(alpha=float(cutmix_alpha), num_classes=num_classes))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else v2.RandomChoice(parts)


class MultiHotMix:
    """torchvision's MixUp/CutMix for multi-hot labels, which they do not take (they one-hot class indices).

    The images go through torchvision's own transform with labels ``0..B-1`` over ``B`` classes;
    the soft labels it returns are then exactly the mixing matrix ``M`` (row ``i``: ``λ`` at ``i``,
    ``1-λ`` at the image it was mixed with), and the mixed multi-hot labels are ``M @ Y``.
    """

    __name__ = "MixUp/CutMix"

    def __init__(self, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        parts: list[Callable] = []
        if self.mixup_alpha > 0:
            parts.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=b))
        if self.cutmix_alpha > 0:
            parts.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=b))
        transform = parts[0] if len(parts) == 1 else v2.RandomChoice(parts)
        mixed, weights = transform(images, torch.arange(b, device=images.device))
        return mixed, weights.to(labels.dtype) @ labels
