"""Data: discovery, CSVs and splits, robust decoding in any channel count, transforms, the decode
cache, loaders, scan, perceptual hashes and the fix loop's CSV.

Typical use in a training pipeline::

    splits = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    bad = check_readable(splits)                       # raises if a class has no readable image
    dc = zoo.data_config(ref)
    train_tf = build_transforms(dc, train=True, augment=cfg.augment, img_size=cfg.img_size)
    val_tf = build_transforms(dc, train=False, img_size=cfg.img_size)
    cache = DecodeCache(ram_bytes=cfg.cache_ram, cache_dir=cfg.cache_dir) if cfg.decode_cache else None
    train_ds = ImageDataset(splits.train, train_tf, cache=cache, skip_log=run / "skipped_files.txt")
    val_ds = ImageDataset(splits.val, val_tf, cache=cache, skip_log=..., on_error="drop")
    train_loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed)

Names are imported lazily, so ``import regraft.data`` (and ``regraft scan``) does not load torch
until a torch-based name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Sample", "DataSplits", "discover", "check_data_folder", "split_stratified", "IMAGE_EXTENSIONS", "list_images", "expand_paths",
    "ImageDecodeError", "ResizeSpec", "load_image", "load_pixels", "decode_image", "decode_resized", "probe_image",
    "probe_source", "PixelFormat", "input_config", "detect_pixels", "channel_stats",
    "ImageTransform", "build_transforms", "mixup_cutmix", "AUGMENTS",
    "DecodeCache", "CachedImages", "parse_bytes", "default_cache_dir",
    "ImageDataset", "SkipLog", "read_skip_log", "check_readable", "sample_batch",
    "make_loader", "EpochBatchSampler", "default_workers",
    "scan", "ScanReport",
    "Fix", "Fixes", "read_fixes", "write_fixes", "apply_fixes", "Fingerprint", "fingerprint",
]

_WHERE = {
    "discovery": ("discover", "check_data_folder"),
    "splits": ("Sample", "DataSplits", "split_stratified"),
    "files": ("IMAGE_EXTENSIONS", "list_images", "expand_paths"),
    "imageio": ("ImageDecodeError", "ResizeSpec", "load_image", "load_pixels", "decode_image", "decode_resized", "probe_image",
                "probe_source"),
    "pixels": ("PixelFormat",),
    "inputs": ("input_config", "detect_pixels", "channel_stats"),
    "transforms": ("ImageTransform", "build_transforms", "mixup_cutmix", "AUGMENTS"),
    "cache": ("DecodeCache", "CachedImages", "parse_bytes", "default_cache_dir"),
    "dataset": ("ImageDataset", "SkipLog", "read_skip_log", "check_readable", "sample_batch"),
    "loader": ("make_loader", "default_workers"),
    "sampler": ("EpochBatchSampler",),
    "scanning": ("scan", "ScanReport"),
    "fixes": ("Fix", "Fixes", "read_fixes", "write_fixes", "apply_fixes"),
    "phash": ("Fingerprint", "fingerprint"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'regraft.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"regraft.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
