"""Frozen-prefix feature caching: the cut, the cache, and loaders over cached features.

When the first part of a network is frozen for a whole run, its output for an image never
changes: :func:`find_cut` splits the model into a frozen ``prefix`` and a trainable ``rest``,
:class:`FeatureCache` runs the prefix once per image (``K`` augmented views when augmentation
is on), and training runs ``rest`` on the cached features. ``rest`` shares its parameters with
the model, so the plan's optimizer trains it directly and saving the model saves the result.
docs/features.md lists the families that cache and when caching turns off.

Example:
    >>> import torchvision
    >>> model = torchvision.models.resnet18(weights=None)
    >>> cut = find_cut(model, trainable=lambda name: name.startswith("fc."))
    >>> cut.after
    'flatten'
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from regraft.config import Config
from regraft.features.cut import Cut, eval_modes, explain_cut, find_cut
from regraft.features.store import CachedFeatures, FeatureCache, FeatureLoader

__all__ = [
    "Cut", "find_cut", "explain_cut", "FeatureCache", "CachedFeatures", "FeatureLoader",
    "CachedTraining", "CacheSettings", "cache_features", "cache_mirrored", "feature_loaders", "feature_views", "train_with_cache",
    ]

log = logging.getLogger(__name__)


class CachedTraining(NamedTuple):
    """What :func:`regraft.training.loop.fit` trains on when the prefix is cached."""

    module: nn.Module  # the trainable rest (shares its parameters with the model)
    train_loader: FeatureLoader
    val_loader: FeatureLoader


@dataclass(frozen=True)
class CacheSettings:
    """What caching needs to know, and nothing more (``from_config`` reads it off a run's config)."""

    batch_size: int = 32
    seed: int = 0
    workers: int | None = None
    augment: str = "light"
    feature_views: int = 1  # views per training image: the plain image + feature_views-1 augmented
    fp16: bool = False
    cache_ram: str | None = None
    cache_dir: str | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> CacheSettings:
        return cls(batch_size=cfg.batch_size, seed=cfg.seed, workers=cfg.workers, augment=cfg.augment,
                   feature_views=cfg.feature_views, fp16=cfg.feature_fp16, cache_ram=cfg.cache_ram, cache_dir=cfg.cache_dir)

    @property
    def views(self) -> int:
        """Views cached per training image: ``feature_views``, or 1 when augmentation is off."""
        return 1 if self.augment == "none" else max(1, self.feature_views)


def feature_views(cfg: Config) -> int:
    """Views cached per training image: ``cfg.feature_views``, or 1 when augmentation is off."""
    return CacheSettings.from_config(cfg).views


def cache_features(
    cut: Cut,
    model: nn.Module,
    train_dataset: Any,
    val_dataset: Any | None,
    *,
    settings: CacheSettings,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
    views: int | None = None,
) -> tuple[FeatureCache, FeatureCache | None] | None:
    """Check ``cut`` on a few images, then cache the training and validation features.

    The training images get ``views`` views (default :attr:`CacheSettings.views`): with
    augmentation on, the first is the image un-augmented (the validation transform) and the
    others are augmented (a single fixed random crop per image measured worse than the plain
    image; docs/features.md). Training features are computed under ``autocast`` (the run's step
    numerics); validation features always in fp32, the numerics of inference, so that every
    figure measured on them is what ``regraft eval`` reproduces.

    Args:
        cut: from :func:`find_cut` on ``model``.
        model: the unwrapped model (its modules' train/eval modes are given back afterwards).
        train_dataset, val_dataset: yield ``(image tensor, label)`` (``regraft.data.ImageDataset``);
            ``val_dataset`` may be None or empty (no validation split).
        settings: batch size, seed, workers, views, fp16 storage, RAM budget, cache folder.
        device: where the prefix runs.
        autocast: the context factory of the training steps (None: fp32).

    Returns:
        ``(train_cache, val_cache or None)``, or None (logged) when the split model's output does
        not match the model's on the check images.
    """
    has_val = val_dataset is not None and len(val_dataset) > 0
    with eval_modes(model):
        reason = cut.check(model, _first_images(val_dataset if has_val else train_dataset, device), autocast=autocast)
        if reason is not None:
            log.warning("feature cache off: %s", reason)
            return None
        budget = _ram_budget(settings, (train_dataset, val_dataset))
        common = dict(batch_size=settings.batch_size, device=device, cache_dir=settings.cache_dir,
                      fp16=settings.fp16, seed=settings.seed, workers=settings.workers)
        views = settings.views if views is None else views
        # the un-augmented view needs only the validation transform, not validation images: the
        # cross-validated regime (no validation split) fits its probe on it too
        clean = _clean_view(train_dataset, val_dataset) if settings.augment != "none" and val_dataset is not None else None
        augmented = views - 1 if clean is not None else views
        train = FeatureCache.build(cut.prefix, train_dataset, views=augmented, clean=clean, ram_bytes=budget,
                                   autocast=autocast, **common)
        val = FeatureCache.build(cut.prefix, val_dataset, views=1, ram_bytes=max(0, budget - train.nbytes),
                                 **common) if has_val else None
    return train, val


class _Mirrored(nn.Module):
    """``prefix`` of each image's mirror: flip the model input's width, then run ``prefix``.

    The validation transform's centre crop commutes with a horizontal flip and normalisation is
    per channel, so this is the ``flip`` view of test-time augmentation (``data.views``) exactly.
    """

    def __init__(self, prefix: nn.Module) -> None:
        super().__init__()
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefix(x.flip(-1))


def cache_mirrored(cut: Cut, model: nn.Module, val_dataset: Any, *, settings: CacheSettings,
                   device: torch.device) -> FeatureCache:
    """The validation images' mirrored features (fp32, like every validation feature), in the
    order of :func:`cache_features`' validation cache: the probe's ``--tta flip`` view."""
    with eval_modes(model):
        return FeatureCache.build(_Mirrored(cut.prefix), val_dataset, views=1, batch_size=settings.batch_size,
                                  device=device, cache_dir=settings.cache_dir, fp16=settings.fp16,
                                  seed=settings.seed, workers=settings.workers)


def feature_loaders(
    train: FeatureCache, val: FeatureCache, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
    mix_views: bool = True, sample_weights: Sequence[float] | None = None,
) -> tuple[FeatureLoader, FeatureLoader]:
    """Loaders over cached features with the run's batch sampler (each sample once per epoch).

    Each training sample draws one of its views per epoch, seeded by ``(seed, epoch)``;
    ``mix_views=False`` trains epoch ``e`` on view ``e % views`` instead. ``sample_weights``
    (one per training image: ``--balance sampler``) draws each training epoch in proportion to them.
    """
    from regraft.data.sampler import EpochBatchSampler

    loaders = []
    for cache, shuffle in ((train, True), (val, False)):
        weights = sample_weights if shuffle else None
        sampler = EpochBatchSampler(len(cache), batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                    world_size=world_size, weights=weights)
        loaders.append(FeatureLoader(CachedFeatures(cache, mix_views=mix_views and shuffle, seed=seed), sampler))
    return loaders[0], loaders[1]


def train_with_cache(
    model: nn.Module,
    *,
    train_dataset: Any,
    val_dataset: Any,
    settings: CacheSettings,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
    head: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    notify: Callable[[str], None] | None = None,
    sample_weights: Sequence[float] | None = None,
) -> CachedTraining | None:
    """The trainable rest and loaders over cached features, when the model can be cut.

    Call after :func:`regraft.strategies.plan` has frozen the model (its ``requires_grad`` flags
    say what trains), and only for a plan that keeps that set for the whole run (the strategy
    decides: ``Decisions.cache_reason``). Train the returned module with the returned loaders and
    keep the full model's weights: the rest shares its parameters with the model.
    ``sample_weights`` (one per training image) make the training loader a class-balanced sampler.

    Returns:
        A :class:`CachedTraining`, or None when the model cannot be cut (the reason is logged as
        ``feature cache off: <why>``); then train the full model as usual.
    """
    cut, reason = explain_cut(model, head=head)
    caches = cache_features(cut, model, train_dataset, val_dataset, settings=settings, device=device,
                            autocast=autocast) if cut else None
    if cut is None or caches is None or caches[1] is None:
        if reason is not None and cut is None:
            log.info("feature cache off: %s", reason)
        return None
    if sample_weights is not None and len(sample_weights) != len(caches[0]):
        log.warning("feature cache off: %d sampling weights for %d cached images", len(sample_weights), len(caches[0]))
        return None
    train_loader, val_loader = feature_loaders(
        caches[0], caches[1], batch_size=settings.batch_size, seed=settings.seed, rank=rank, world_size=world_size,
        sample_weights=sample_weights,
    )
    (notify or log.info)(f"feature cache: {cut.describe()}; {caches[0].describe()}")
    return CachedTraining(cut.rest, train_loader, val_loader)


def _first_images(dataset: Any, device: torch.device, n: int = 4) -> torch.Tensor:
    from regraft.data import make_loader

    loader = make_loader(dataset, batch_size=min(n, len(dataset)), shuffle=False, workers=0)
    x, _ = next(iter(loader))
    return x.to(device)


def _ram_budget(settings: CacheSettings, datasets: Sequence[Any]) -> int:
    """The cache RAM budget (``cache_ram``, default a quarter of available) less decoded images."""
    from regraft.data.cache import available_memory, parse_bytes

    total = parse_bytes(settings.cache_ram) if settings.cache_ram is not None else available_memory() // 4
    decoded = sum(getattr(getattr(ds, "_images", None), "ram_bytes", 0) or 0 for ds in datasets if ds is not None)
    return max(0, total - decoded)


def _clean_view(train_dataset: Any, val_dataset: Any) -> Any | None:
    """The training images under the validation transform (center crop), when the two share a resize."""
    import copy

    train_tf, val_tf = getattr(train_dataset, "transform", None), getattr(val_dataset, "transform", None)
    if train_tf is None or val_tf is None or getattr(train_tf, "resize", None) != getattr(val_tf, "resize", None):
        return None
    clean = copy.copy(train_dataset)
    clean.transform = val_tf
    return clean
