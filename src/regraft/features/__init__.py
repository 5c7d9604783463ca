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
from typing import Any, NamedTuple

import torch
from torch import nn

from regraft.config import Config
from regraft.features.cut import Cut, eval_modes, explain_cut, find_cut
from regraft.features.store import CachedFeatures, FeatureCache, FeatureLoader

__all__ = [
    "Cut", "find_cut", "explain_cut", "FeatureCache", "CachedFeatures", "FeatureLoader",
    "CachedTraining", "cache_features", "feature_loaders", "feature_views", "train_with_cache",
    ]

log = logging.getLogger(__name__)


class CachedTraining(NamedTuple):
    """What :func:`regraft.training.loop.fit` trains on when the prefix is cached."""

    module: nn.Module  # the trainable rest, prepared by the accelerator
    train_loader: FeatureLoader
    val_loader: FeatureLoader


def feature_views(cfg: Config) -> int:
    """Views cached per training image: ``cfg.feature_views``, or 1 when augmentation is off."""
    return 1 if cfg.augment == "none" else max(1, cfg.feature_views)


def cache_features(
    cut: Cut,
    model: nn.Module,
    train_dataset: Any,
    val_dataset: Any,
    *,
    cfg: Config,
    accelerator: Any,
) -> tuple[FeatureCache, FeatureCache] | None:
    """Check ``cut`` on a few validation images, then cache the training and validation features.

    The training images get :func:`feature_views` views: with augmentation on, the first is
    the image un-augmented (the validation transform) and the others are augmented (a single
    fixed random crop per image measured worse than the plain image; docs/features.md).

    Args:
        cut: from :func:`find_cut` on ``model``.
        model: the unwrapped model (its modules' train/eval modes are given back afterwards).
        train_dataset, val_dataset: yield ``(image tensor, label)`` (``regraft.data.ImageDataset``).
        cfg: ``augment``, ``feature_views``, ``feature_fp16``, ``batch_size``, ``seed``,
            ``workers``, ``cache_ram``, ``cache_dir``.
        accelerator: gives the device and the autocast context.

    Returns:
        ``(train_cache, val_cache)``, or None (logged) when the split model's output does not
        match the model's on the check images.
    """
    device = accelerator.device
    with eval_modes(model):
        reason = cut.check(model, _first_images(val_dataset, device), autocast=accelerator.autocast)
        if reason is not None:
            log.warning("feature cache off: %s", reason)
            return None
        budget = _ram_budget(cfg, (train_dataset, val_dataset))
        common = dict(batch_size=cfg.batch_size, device=device, autocast=accelerator.autocast, cache_dir=cfg.cache_dir,
                      fp16=cfg.feature_fp16, seed=cfg.seed, workers=cfg.workers)
        views = feature_views(cfg)
        clean = _clean_view(train_dataset, val_dataset) if cfg.augment != "none" else None
        augmented = views - 1 if clean is not None else views
        train = FeatureCache.build(cut.prefix, train_dataset, views=augmented, clean=clean, ram_bytes=budget, **common)
        val = FeatureCache.build(cut.prefix, val_dataset, views=1, ram_bytes=max(0, budget - train.nbytes), **common)
    return train, val


def feature_loaders(
    train: FeatureCache, val: FeatureCache, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
    mix_views: bool = True,
) -> tuple[FeatureLoader, FeatureLoader]:
    """Loaders over cached features with the engine's sampler (each sample once per epoch).

    Each training sample draws one of its views per epoch, seeded by ``(seed, epoch)``;
    ``mix_views=False`` trains epoch ``e`` on view ``e % views`` instead.
    """
    from regraft.data.sampler import EpochBatchSampler

    loaders = []
    for cache, shuffle in ((train, True), (val, False)):
        sampler = EpochBatchSampler(len(cache), batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        loaders.append(FeatureLoader(CachedFeatures(cache, mix_views=mix_views and shuffle, seed=seed), sampler))
    return loaders[0], loaders[1]


def train_with_cache(
    model: nn.Module,
    *,
    plan: Any,
    train_dataset: Any,
    val_dataset: Any,
    cfg: Config,
    accelerator: Any,
    head: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> CachedTraining | None:
    """The trainable rest and loaders over cached features, when the plan allows it.

    Call after :func:`regraft.strategies.plan` has frozen the model (its ``requires_grad``
    flags say what trains). Pass the result to ``engine.fit`` in place of the model and the
    loaders, with ``save_model=`` the full model so the best weights saved are the model's.

    Args:
        model: the unwrapped full model (the plan's optimizer holds its trainable parameters).
        plan: the :class:`~regraft.strategies.TrainPlan` (a plan that unfreezes later never caches).
        train_dataset, val_dataset: the run's image datasets.
        cfg: the run's config (``feature_cache``, ``feature_views``, ``feature_fp16``, ...).
        accelerator: the run's ``Accelerator``.
        head: the head's dotted path (used for families regraft has no forward order for).
        notify: told one line about the cache (default: log only).

    Returns:
        A :class:`CachedTraining`, or None when caching is off (the reason is logged as
        ``feature cache off: <why>``); then train the full model as usual.
    """
    reason = _static_reason(cfg, plan)
    cut = None
    if reason is None:
        cut, reason = explain_cut(model, head=head)
    caches = cache_features(cut, model, train_dataset, val_dataset, cfg=cfg, accelerator=accelerator) if cut else None
    if cut is None or caches is None:
        if reason is not None and cut is None:
            log.info("feature cache off: %s", reason)
        return None
    train_loader, val_loader = feature_loaders(
        *caches, batch_size=cfg.batch_size, seed=cfg.seed, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    text = f"feature cache: {cut.describe()}; {caches[0].describe()}"
    (notify or log.info)(text)
    return CachedTraining(accelerator.prepare_model(cut.rest), train_loader, val_loader)


def _static_reason(cfg: Config, plan: Any) -> str | None:
    """Why the config or the plan rules caching out before looking at the model, if they do."""
    if not cfg.feature_cache:
        return "feature_cache is false"
    if cfg.unfreeze or cfg.strategy in ("gradual", "lp-ft") or _unfreezes_later(plan):
        return "the plan changes what is frozen during the run"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "mixup and cutmix mix images, not features"
    if cfg.ema is not None:
        return "EMA averages the whole model's weights"
    return None


def _unfreezes_later(plan: Any) -> bool:
    if getattr(plan, "unfreeze", None):
        return True
    groups = getattr(getattr(plan, "optimizer", None), "param_groups", [])
    return any(group.get("unfreeze_epoch", 0) > 0 for group in groups)


def _first_images(dataset: Any, device: torch.device, n: int = 4) -> torch.Tensor:
    from regraft.data import make_loader

    loader = make_loader(dataset, batch_size=min(n, len(dataset)), shuffle=False, workers=0)
    x, _ = next(iter(loader))
    return x.to(device)


def _ram_budget(cfg: Config, datasets: Sequence[Any]) -> int:
    """The cache RAM budget (``cfg.cache_ram``, default a quarter of available) less decoded images."""
    from regraft.data.cache import available_memory, parse_bytes

    total = parse_bytes(cfg.cache_ram) if cfg.cache_ram is not None else available_memory() // 4
    decoded = sum(getattr(getattr(ds, "_images", None), "ram_bytes", 0) or 0 for ds in datasets)
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
