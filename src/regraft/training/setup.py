"""The steps before the first training step, one typed function each (in the manner of torchtune's
recipes): the model as built, the data, the network with its new head and weights, the plan.

Each step takes what it needs and returns a small typed object; ``training/run.py`` calls them in
order. Deep code never sees more of the config than its step reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from regraft import data, surgery, zoo
from regraft.config import Config
from regraft.data.sampler import EpochBatchSampler
from regraft.errors import ConfigError, DataError
from regraft.runs import RunDir
from regraft.strategies import Decisions, validation_regime
from regraft.tasks import (
    Balance,
    BalanceChoice,
    Task,
    TaskRules,
    choose_balance,
    class_weights,
    pos_weights,
    rules,
    sample_weights,
)
from regraft.tasks.balance import label_counts
from regraft.training.processes import Processes

__all__ = ["Built", "DataSetup", "NetSetup", "check_inputs", "build_model", "setup_data", "setup_model", "make_loaders"]

log = logging.getLogger(__name__)

_SPLIT_LAYOUTS = ("split:val", "split:valid", "split:test")


@dataclass
class Built:
    """The network before anything is grafted: the module, which architecture, its data config."""

    model: nn.Module
    ref: zoo.ModelRef
    data_config: zoo.DataConfig


@dataclass
class DataSetup:
    """The data of a run: classes, the split and how decisions are checked (``regime``), datasets, loaders.

    ``regime`` is ``holdout`` (a validation split) or ``cvK`` (no split: every image trains, and
    the probe's k-fold cross-validation is the validation evidence). ``task`` is what the labels
    are; ``balance`` what the run does about class imbalance, with its weights: ``loss_weights``
    for the training loss (class weights; multi-label: positive weights) and ``sample_weights``
    (one per training image) for the sampler and the probe.
    """

    splits: data.DataSplits
    classes: list[str]
    data_config: zoo.DataConfig
    regime: str
    has_val_split: bool
    train_dataset: Any
    val_dataset: Any
    train_loader: Any
    val_loader: Any
    task: Task = Task.MULTICLASS
    balance: BalanceChoice | None = None
    class_weights: list[float] | None = None
    sample_weights: list[float] | None = None

    def class_counts(self) -> list[int]:
        return self.splits.counts("train")

    @property
    def loss_weights(self) -> list[float] | None:
        """The training loss's class (multi-label: positive) weights: ``--balance loss`` only."""
        return self.class_weights if self.balance is not None and self.balance.mode is Balance.LOSS else None

    @property
    def rules(self) -> TaskRules:
        return rules(self.task)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)


@dataclass
class NetSetup:
    """The network ready for a plan: its new head's path, what the weights load did, what surgery changed."""

    model: nn.Module
    head: str
    load_report: Any = None
    surgery_diff: Any = None


def check_inputs(cfg: Config) -> None:
    """The two settings a run cannot do without, checked before its run folder is made (a
    mistyped data folder leaves no empty run behind)."""
    if not cfg.data:
        raise ConfigError("no data given: pass DATA (a folder of class subfolders) or set 'data' in the recipe")
    if not cfg.model:
        raise ConfigError("no model given: pass --model NAME (see 'regraft models')")
    data.check_data_folder(cfg.data)


def build_model(cfg: Config, model: nn.Module | None = None) -> Built:
    """``cfg.model`` from the zoo (with ``cfg.in_chans`` input channels), or the user's own module
    (its data config then comes from cfg)."""
    if model is None:
        ref = zoo.resolve(cfg.model)
        return Built(zoo.build(ref, in_chans=cfg.in_chans), ref, zoo.data_config(ref, weights=cfg.weights))
    ref = getattr(model, "regraft_ref", None) or zoo.ModelRef("custom", type(model).__qualname__)
    return Built(model, ref, zoo.DataConfig())


def setup_data(
    cfg: Config, built: Built, *, decisions: Decisions, procs: Processes, run: RunDir, notify: Callable[[str], None],
) -> DataSetup:
    """Discover the images, choose the validation regime, build datasets and loaders.

    Raises:
        DataError: fewer than two classes (multi-label: no label), or a class without a readable training image.
    """
    task = Task.parse(cfg.task)
    splits = data.discover(
        cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed,
        train_csv=cfg.train_csv, val_csv=cfg.val_csv, classes_file=cfg.classes_file,
        multilabel=task.multilabel, label_sep=cfg.label_sep,
    )
    if cfg.exclude:  # the fix loop (issue 20, regraft.data.fixes); what changed goes to RUN/fixes_applied.json
        splits, applied = data.apply_fixes(splits, data.read_fixes(cfg.exclude))
        run.write_json("fixes_applied.json", applied.to_dict())
        notify(f"fixes: {applied.describe()}")
    classes = list(splits.classes)
    if len(classes) < (1 if task.multilabel else 2):
        raise DataError(f"{cfg.data}: found {len(classes)} class ({', '.join(classes)}); a classifier needs at least 2 class folders")
    has_val = splits.layout in _SPLIT_LAYOUTS or (splits.layout == "csv" and cfg.val_csv is not None)
    counts = [a + b for a, b in zip(splits.counts("train"), splits.counts("val"), strict=True)]
    regime = validation_regime(decisions, has_val_split=has_val, class_counts=counts)
    kinds = f"{len(classes)} labels ({splits.layout}, multi-label)" if task.multilabel else f"{len(classes)} classes ({splits.layout})"
    if regime != "holdout":  # no image is held out: the probe's cross-validation is the evidence
        splits = replace(splits, train=sorted(splits.train + splits.val, key=lambda s: (s.label, s.path)), val=[])
        notify(f"data: {len(splits.train)} images in {kinds}, no validation split and "
               f"at most ~{max(counts)} per class: every image trains, {regime[2:]}-fold cross-validation is the evidence")
    else:
        notify(f"data: {len(splits.train)} training and {len(splits.val)} validation images in {kinds}")
    if len(splits.train) < 2:  # a batch of one image breaks BatchNorm in training mode
        raise DataError(f"{cfg.data}: {len(splits.train)} training image; training needs at least 2: add images")
    dcfg = _input_config(cfg, built, splits, notify=notify)
    pixels = data.PixelFormat(dcfg.input_size[0], dcfg.bit_depth)
    unreadable = data.check_readable(splits, pixels=pixels)  # raises when a class has no readable image
    if unreadable:
        more = " ..." if len(unreadable) > 3 else ""
        notify(f"{len(unreadable)} unreadable file(s) will be skipped and listed in skipped_files.txt: {', '.join(unreadable[:3])}{more}")
    width = len(classes) if task.multilabel else None
    train_ds, val_ds = _datasets(cfg, splits, dcfg, run=run, num_labels=width)
    balance, weights_of_classes, weights = _balance(cfg, train_ds.labels, len(classes), task=task)
    notify(balance.reason)
    train_loader, val_loader = make_loaders(train_ds, val_ds, cfg=cfg, procs=procs,
                                            sample_weights=weights if balance.mode is Balance.SAMPLER else None)
    return DataSetup(splits=splits, classes=classes, data_config=dcfg, regime=regime, has_val_split=has_val,
                     train_dataset=train_ds, val_dataset=val_ds, train_loader=train_loader, val_loader=val_loader,
                     task=task, balance=balance, class_weights=weights_of_classes, sample_weights=weights)


def _balance(cfg: Config, labels: list[Any], num_classes: int, *, task: Task
             ) -> tuple[BalanceChoice, list[float] | None, list[float] | None]:
    """What ``--balance`` resolves to on the training images as read, and its class (multi-label: positive)
    and per-image weights (None for ``none``)."""
    counts = label_counts(labels, num_classes, multilabel=task.multilabel)
    choice = choose_balance(cfg.balance, counts=counts, multilabel=task.multilabel)
    if choice.mode is Balance.NONE:
        return choice, None, None
    per_class = pos_weights(counts, len(labels)) if task.multilabel else class_weights(counts)
    return choice, per_class, sample_weights(labels, num_classes, multilabel=task.multilabel)


def _input_config(cfg: Config, built: Built, splits: data.DataSplits, *, notify: Callable[[str], None]) -> zoo.DataConfig:
    """The run's preprocessing: the weights' with the recipe's overrides; with ``in_chans``, the
    channels, the bits the files hold and a mean/std for that many channels (docs/channels.md)."""
    dcfg = built.data_config.with_overrides(img_size=cfg.img_size, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)
    if cfg.in_chans is None:  # 8-bit RGB, as every run before in_chans
        return dcfg.with_overrides(mean=cfg.mean, std=cfg.std)
    dcfg = data.input_config(dcfg, channels=cfg.in_chans, paths=[s.path for s in splits.train + splits.val],
                             stats_paths=[s.path for s in splits.train], seed=cfg.seed, mean=cfg.mean, std=cfg.std)
    pixels = data.PixelFormat(dcfg.input_size[0], dcfg.bit_depth)
    notify(f"inputs: {pixels.describe()}; mean/std from {dcfg.mean_std_from}")
    return dcfg


def _datasets(cfg: Config, splits: data.DataSplits, dcfg: zoo.DataConfig, *, run: RunDir, num_labels: int | None) -> tuple[Any, Any]:
    cache = data.DecodeCache.for_config(dcfg, ram=cfg.cache_ram, cache_dir=cfg.cache_dir) if cfg.decode_cache else None
    skip_log = run.path / "skipped_files.txt"
    train_tf = data.build_transforms(dcfg, train=True, augment=cfg.augment)
    val_tf = data.build_transforms(dcfg, train=False)
    train_ds = data.ImageDataset(splits.train, train_tf, cache=cache, skip_log=skip_log, num_labels=num_labels)
    val_ds = data.ImageDataset(splits.val, val_tf, cache=cache, skip_log=skip_log, on_error="drop", num_labels=num_labels)
    return train_ds, val_ds


def make_loaders(train_ds: Any, val_ds: Any, *, cfg: Config, procs: Processes, sample_weights: list[float] | None = None
                 ) -> tuple[Any, Any]:
    """Training and validation loaders over this process's shard, order fixed by ``(seed, epoch)``.

    ``sample_weights`` (``--balance sampler``) make the training loader draw each epoch in proportion to them.
    """
    loaders = []
    for ds, shuffle in ((train_ds, True), (val_ds, False)):
        sampler = EpochBatchSampler(len(ds), batch_size=cfg.batch_size, shuffle=shuffle, seed=cfg.seed,
                                    rank=procs.index, world_size=procs.count, even=cfg.even_batches or not shuffle,
                                    weights=sample_weights if shuffle else None)
        loaders.append(data.make_loader(ds, batch_sampler=sampler, workers=cfg.workers, device=procs.device))
    return loaders[0], loaders[1]


def setup_model(
    cfg: Config, built: Built, *, classes: list[str], decisions: Decisions, data_config: zoo.DataConfig,
    notify: Callable[[str], None],
) -> NetSetup:
    """The new head for ``classes``, the pretrained weights, the recipe's surgery, then the model
    contract: exactly ``len(classes)`` logits out (one check, once the network is complete).

    Raises:
        ModelError / SurgeryError / WeightsError / CoverageError: as the step that failed says.
    """
    model = built.model
    head = surgery.replace_head(
        model, len(classes), hidden=tuple(cfg.head_hidden), dropout=cfg.head_dropout, init=_head_init(cfg, decisions),
        input_size=data_config.input_size,
    )
    report = _load_weights(cfg, model, decisions=decisions, head=head, classes=classes, notify=notify)
    diff = None
    if cfg.surgery:
        diff = surgery.apply(model, cfg.surgery, input_size=data_config.input_size)
        head = surgery.find_head(model)
    surgery.check_output_width(model, num_classes=len(classes), input_size=data_config.input_size)  # the model contract
    return NetSetup(model=model, head=head, load_report=report, surgery_diff=diff)


def _head_init(cfg: Config, decisions: Decisions) -> str:
    # a recipe's head init belongs to its pretrained recipe: from scratch the architecture's own
    # initialisation learns where Xavier heads stayed at chance (the hot-dog recipe, 5 of 5 runs)
    if not decisions.loads_weights and cfg.head_init != "default":
        log.info("head_init %s is a pretrained recipe's choice; scratch keeps the architecture's default init", cfg.head_init)
        return "default"
    return cfg.head_init


def _load_weights(cfg: Config, model: nn.Module, *, decisions: Decisions, head: str, classes: list[str],
                  notify: Callable[[str], None]):
    from regraft.weights import check_coverage, is_pretrained, load_weights

    if not decisions.loads_weights and is_pretrained(cfg.weights):
        notify(f"strategy scratch trains from random weights: --weights {cfg.weights} is not loaded")
        return None
    if not is_pretrained(cfg.weights):
        return None
    report = load_weights(
        model, cfg.weights, rename=cfg.rename or None, skip=cfg.skip or None,
        trust_checkpoint=cfg.trust_checkpoint, sha256=cfg.sha256, head=head, keep_head=cfg.keep_head, classes=classes,
    )
    if report.coverage < cfg.min_coverage:  # show what did and didn't load before refusing (else announce() does)
        for line in report.format_lines():
            notify(line)
    check_coverage(report, min_coverage=cfg.min_coverage)
    return report


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` batches."""
    return max(1, math.ceil(n_batches / grad_accum))


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` in channels_last when asked (in place for the parameters)."""
    return model.to(memory_format=torch.channels_last) if channels_last else model
