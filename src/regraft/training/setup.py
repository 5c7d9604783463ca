"""The steps :func:`regraft.training.run.train` runs, one function each: setup, run-folder start, finish."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regraft import zoo
from regraft.config import Config
from regraft.errors import ConfigError, DataError
from regraft.runs import RunDir

log = logging.getLogger(__name__)

CARD_FORMAT = "regraft-run/1"


@dataclass
class Setup:
    ref: zoo.ModelRef
    model: nn.Module
    head: str
    classes: list[str]
    splits: Any
    data_config: zoo.DataConfig
    train_dataset: Any
    val_dataset: Any
    train_loader: Any
    val_loader: Any
    plan: Any
    load_report: Any
    surgery_diff: Any
    batch_transform: Callable | None
    after_train_mode: Callable | None
    card: dict[str, Any]
    ema: Any = None
    channels_last: bool = False
    precision: str = "fp32"  # what the steps run in: bf16 | fp16 (autocast) | fp32
    precision_note: str = ""  # why auto chose fp32 where bf16 was possible


@dataclass
class Built:
    """The network before anything is grafted: the module, which architecture, its data config."""

    model: nn.Module
    ref: zoo.ModelRef
    data_config: zoo.DataConfig


def build_model(cfg: Config, model: nn.Module | None = None) -> Built:
    """``cfg.model`` from the zoo, or the user's own module (its data config then comes from cfg)."""
    if model is None:
        ref = zoo.resolve(cfg.model)
        return Built(zoo.build(ref), ref, zoo.data_config(ref, weights=cfg.weights))
    ref = getattr(model, "regraft_ref", None) or zoo.ModelRef("custom", type(model).__qualname__)
    return Built(model, ref, zoo.DataConfig())


def setup(
    cfg: Config, *, strategy: str, accelerator: Any, run: RunDir, notify: Callable[[str], None], built: Built | None = None,
) -> Setup:
    """Everything before the first step. ``built``: from :func:`build_model` (built here when None)."""
    from regraft import data, strategies, surgery
    from regraft.freezing import apply_bn_policy
    from regraft.training import loop as engine

    splits = data.discover(
        cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed,
        train_csv=cfg.train_csv, val_csv=cfg.val_csv, classes_file=cfg.classes_file,
    )
    if cfg.exclude:  # the fix loop (issue 20, regraft.data.fixes); what changed goes to RUN/fixes_applied.json
        splits, applied = data.apply_fixes(splits, data.read_fixes(cfg.exclude))
        run.write_json("fixes_applied.json", applied.to_dict())
        notify(f"fixes: {applied.describe()}")
    classes = list(splits.classes)
    if len(classes) < 2:
        raise DataError(f"{cfg.data}: found {len(classes)} class ({', '.join(classes)}); a classifier needs at least 2 class folders")
    notify(f"data: {len(splits.train)} training and {len(splits.val)} validation images in {len(classes)} classes ({splits.layout})")
    unreadable = data.check_readable(splits)  # raises when a class has no readable image
    if unreadable:
        notify(f"{len(unreadable)} unreadable file(s) will be skipped and listed in skipped_files.txt: {', '.join(unreadable[:3])}{' ...' if len(unreadable) > 3 else ''}")

    built = built or build_model(cfg)
    model, ref = built.model, built.ref
    dcfg = built.data_config.with_overrides(
        img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct
    )
    head = surgery.replace_head(
        model, len(classes), hidden=tuple(cfg.head_hidden), dropout=cfg.head_dropout, init=cfg.head_init,
        input_size=dcfg.input_size,
    )
    report = _load_weights(cfg, model, strategy=strategy, head=head, notify=notify)
    diff = None
    if cfg.surgery:
        diff = surgery.apply(model, cfg.surgery, input_size=dcfg.input_size)
        head = surgery.find_head(model)
    surgery.validate(model, input_size=dcfg.input_size)
    channels_last = engine.resolve_channels_last(cfg.channels_last, model, accelerator.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_ds, val_ds, train_loader, val_loader = _loaders(cfg, splits, dcfg, accelerator=accelerator, run=run)
    steps = max(1, math.ceil(len(train_loader) / cfg.grad_accum))
    plan = strategies.plan(model, strategy=strategy, cfg=cfg, steps_per_epoch=steps, head=head)
    # lp-ft's head is fitted on features normalised by the pretrained statistics; letting
    # BatchNorm switch to batch statistics afterwards shifts them (measured: val accuracy fell
    # every fine-tuning epoch, 0.98 -> 0.55 in five on bench/time_to_accuracy.py's photos task)
    bn_eval = cfg.bn_eval if cfg.bn_eval is not None else strategy == "lp-ft"
    if bn_eval:
        from regraft.freezing import hold_bn_statistics

        held = hold_bn_statistics(model)
        if held:
            notify(f"BatchNorm statistics held fixed in {held} layers (bn_eval; affine parameters still train)")
    model, plan.optimizer = _prepare(accelerator, model, plan.optimizer)
    ema = engine.WeightEMA(accelerator.unwrap_model(model), decay=cfg.ema) if cfg.ema else None
    if cfg.compile:
        model = torch.compile(model)
    batch_transform = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        batch_transform = data.mixup_cutmix(len(classes), mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix)
    card = model_card(cfg, ref=ref, head=head, classes=classes, data_config=dcfg, strategy=strategy)
    # FrozenBatchNorm2d has no num_batches_tracked: a rebuilt model must swap the same layers
    card["architecture"]["frozen_bn"] = list(getattr(plan.freeze_plan, "bn_swapped", None) or [])
    return Setup(
        ref=ref, model=model, head=head, classes=classes, splits=splits, data_config=dcfg,
        train_dataset=train_ds, val_dataset=val_ds, train_loader=train_loader, val_loader=val_loader,
        plan=plan, load_report=report, surgery_diff=diff, batch_transform=batch_transform,
        after_train_mode=apply_bn_policy, card=card, ema=ema, channels_last=channels_last,
        precision={"no": "fp32", None: "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision),
        precision_note=_precision_note(cfg, model, accelerator),
    )


def _load_weights(cfg: Config, model: nn.Module, *, strategy: str, head: str, notify: Callable[[str], None]):
    from regraft.weights import check_coverage, is_pretrained, load_weights

    if strategy == "scratch" and is_pretrained(cfg.weights):
        notify(f"strategy scratch trains from random weights: --weights {cfg.weights} is not loaded")
        return None
    if not is_pretrained(cfg.weights):
        return None
    report = load_weights(
        model, cfg.weights, rename=cfg.rename or None, skip=cfg.skip or None,
        trust_checkpoint=cfg.trust_checkpoint, sha256=cfg.sha256, head=head,
    )
    notify(f"weights: {cfg.weights} — trunk coverage {report.coverage:.1%}")
    if report.coverage < cfg.min_coverage:  # show what did and didn't load before refusing
        for line in report.format_lines():
            notify(line)
    check_coverage(report, min_coverage=cfg.min_coverage)
    return report


def _prepare(accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer):
    # DDP only registers parameters that require grad when it wraps the model; stages unfrozen
    # later must be registered too, so wrap with everything trainable and restore afterwards.
    if accelerator.num_processes > 1:
        flags = {p: p.requires_grad for p in model.parameters()}
        for p in flags:
            p.requires_grad_(True)
        model, optimizer = accelerator.prepare(model, optimizer)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        return model, optimizer
    return accelerator.prepare(model, optimizer)


def _loaders(cfg: Config, splits: Any, dcfg: zoo.DataConfig, *, accelerator: Any, run: RunDir):
    from regraft import data
    from regraft.data.sampler import EpochBatchSampler

    cache = data.DecodeCache.for_config(dcfg, ram=cfg.cache_ram, cache_dir=cfg.cache_dir) if cfg.decode_cache else None
    skip_log = run.path / "skipped_files.txt"
    train_tf = data.build_transforms(dcfg, train=True, augment=cfg.augment)
    val_tf = data.build_transforms(dcfg, train=False)
    train_ds = data.ImageDataset(splits.train, train_tf, cache=cache, skip_log=skip_log)
    val_ds = data.ImageDataset(splits.val, val_tf, cache=cache, skip_log=skip_log, on_error="drop")
    rank, world = accelerator.process_index, accelerator.num_processes
    loaders = []
    for ds, shuffle in ((train_ds, True), (val_ds, False)):
        sampler = EpochBatchSampler(len(ds), batch_size=cfg.batch_size, shuffle=shuffle, seed=cfg.seed, rank=rank, world_size=world)
        loaders.append(data.make_loader(ds, batch_sampler=sampler, workers=cfg.workers, device=accelerator.device))
    return train_ds, val_ds, loaders[0], loaders[1]


def model_card(cfg: Config, *, ref: zoo.ModelRef, head: str, classes: list[str], data_config: zoo.DataConfig, strategy: str) -> dict[str, Any]:
    """``model.json``: what a run's weights are, enough to rebuild and preprocess without the config."""
    pre = data_config.to_dict()
    pre["resize"] = int(math.floor(data_config.input_size[-1] / data_config.crop_pct))
    return {
        "format": CARD_FORMAT,
        "architecture": {
            "zoo": ref.zoo,
            "name": ref.name,
            "head": head,
            "head_hidden": list(cfg.head_hidden),
            "head_dropout": cfg.head_dropout,
            "surgery": list(cfg.surgery),
        },
        "num_classes": len(classes),
        "classes": classes,
        "preprocessing": pre,
        "weights": cfg.weights,
        "strategy": strategy,
    }


def announce(setup: Setup, notify: Callable[[str], None]) -> None:
    """Tell the user what was loaded and what trains, before the first step."""
    if setup.load_report is not None:
        for line in setup.load_report.format_lines():
            notify(line)
    if setup.surgery_diff is not None:
        for line in setup.surgery_diff.format_lines():
            notify(line)
    for line in setup.plan.describe().splitlines():
        notify(line)
    notify(numerics_line(setup))


def numerics_line(setup: Setup) -> str:
    """``numerics: bf16 autocast, channels_last`` — what the steps run in, and how to change it."""
    parts = [f"{setup.precision} autocast" if setup.precision != "fp32" else "fp32"]
    if setup.channels_last:
        parts.append("channels_last")
    how = " (--precision fp32 for full precision)" if setup.precision != "fp32" else ""
    if setup.precision_note:
        how = f" ({setup.precision_note})"
    return f"numerics: {', '.join(parts)}{how}"


def _precision_note(cfg: Config, model: nn.Module, accelerator: Any) -> str:
    from regraft.training import loop as engine

    if cfg.precision != "auto" or accelerator.mixed_precision not in (None, "no") or accelerator.device.type != "cpu":
        return ""
    if engine.cpu_has_fast_bf16() and engine.has_depthwise_conv(model):
        return "this CPU has bf16 units, but its bf16 depthwise convolutions are slower than fp32; --precision bf16 to use them anyway"
    return ""


def write_run_start(run: RunDir, cfg: Config, setup: Setup) -> None:
    run.write_text("config.yaml", cfg.to_yaml())
    run.write_json("model.json", setup.card)
    run.write_json("environment.json", environment_info() | {"seed": cfg.seed, "precision": setup.precision, "channels_last": setup.channels_last})
    run.write_json("load_report.json", setup.load_report.to_dict() if setup.load_report is not None else {"source": "none", "coverage": 0.0})
    run.write_json("freeze_audit.json", setup.plan.audit())
    if setup.surgery_diff is not None:
        run.write_json("surgery.json", setup.surgery_diff.to_dict())


def linear_probe(cfg: Config, setup: Setup, *, accelerator: Any, run: RunDir, notify: Callable[[str], None], callbacks) -> Any:
    """lp-ft stage one: fit the new head on the frozen trunk's features (regraft.features).

    The probed model is a candidate like any fine-tuning epoch: it is evaluated on the images,
    saved as the best weights so far and checkpointed, so fine-tuning must beat it to replace
    it, and a run stopped during fine-tuning resumes without probing again.

    Returns:
        The :class:`~regraft.training.loop.FitState` fine-tuning starts from (the probe's rows in its history).
    """
    from regraft.training import loop as engine
    from regraft.training.probe import linear_probe as fit_probe

    model = accelerator.unwrap_model(setup.model)
    result = fit_probe(
        model, head=setup.head, train_dataset=setup.train_dataset,
        val_dataset=setup.val_dataset, cfg=cfg, accelerator=accelerator, callbacks=callbacks,
    )
    notify(result.message)
    val = engine.evaluate(setup.model, setup.val_loader, accelerator=accelerator, channels_last=setup.channels_last)
    state = engine.FitState(
        history=list(result.history), best_val_acc=val.accuracy, best_val_loss=val.loss,
        best_epoch=0, train_seconds=result.seconds,
    )
    if accelerator.is_main_process:
        run.save_weights(model)
        engine.save_checkpoint(run, accelerator, model, setup.plan, state, {"config": cfg.to_dict(), "probe_done": True})
    accelerator.wait_for_everyone()
    return state


def cached_training(cfg: Config, setup: Setup, *, accelerator: Any, notify: Callable[[str], None]):
    """``(module, train_loader, val_loader, save_model)`` for fit: over cached features of the
    frozen prefix when the plan allows (strategies head/partial), else the full model."""
    from regraft import features

    if not setup.plan.linear_probe_first:
        cached = features.train_with_cache(
            accelerator.unwrap_model(setup.model), plan=setup.plan, train_dataset=setup.train_dataset,
            val_dataset=setup.val_dataset, cfg=cfg, accelerator=accelerator, head=setup.head, notify=notify,
        )
        if cached is not None:
            module, train_loader, val_loader = cached
            return module, train_loader, val_loader, setup.model
    return setup.model, setup.train_loader, setup.val_loader, None


def finish(cfg: Config, setup: Setup, state: Any, *, run: RunDir, accelerator: Any, wall_seconds: float) -> dict[str, Any]:
    """Best weights back in, a last full evaluation, then summary, metrics and plots."""
    from safetensors.torch import load_file

    from regraft.training import loop as engine

    model = accelerator.unwrap_model(setup.model)
    best = run.path / "model.safetensors"
    accelerator.wait_for_everyone()
    if best.is_file():
        model.load_state_dict(load_file(str(best)))
    final = engine.evaluate(setup.model, setup.val_loader, accelerator=accelerator, collect=True, channels_last=setup.channels_last)
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {
        "model": cfg.model,
        "weights": cfg.weights,
        "strategy": cfg.strategy,
        "epochs": state.epoch,
        "probe_epochs": sum(1 for r in state.history if r.get("stage") == "probe"),
        "best_epoch": state.best_epoch,  # 0 = the linear probe's head, before fine-tuning
        "best_val_acc": final.accuracy,
        "best_val_loss": final.loss,
        "final_val_acc": state.history[-1]["val_acc"] if state.history else None,
        "final_val_loss": state.history[-1]["val_loss"] if state.history else None,
        "train_seconds": round(state.train_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "images_per_sec": _mean([r["images_per_sec"] for r in state.history if r.get("stage") != "probe"]),
        "num_classes": len(setup.classes),
        "classes": setup.classes,
        "trainable_params": n_train,
        "total_params": n_total,
        "n_train": len(setup.train_dataset),
        "n_val": final.n,
        "stopped_early": state.stopped_early,
        "trunk_coverage": setup.load_report.coverage if setup.load_report is not None else 0.0,
    }
    if accelerator.is_main_process:
        run.write_metrics(state.history)
        run.write_json("summary.json", summary)
        _draw(run, setup, final, world_size=accelerator.num_processes)
    accelerator.wait_for_everyone()
    return summary


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _readable_indices(run: RunDir, dataset: Any, n: int) -> list[int] | None:
    """The validation images the final evaluation kept (rows of its logits), when files failed to
    decode during it: the dataset minus RUN/skipped_files.txt. None when that does not add up."""
    from regraft.data.dataset import read_skip_log

    skipped = set(read_skip_log(run.path / "skipped_files.txt"))
    kept = [i for i, s in enumerate(dataset.samples) if str(s.path) not in skipped]
    return kept if len(kept) == n else None


def _draw(run: RunDir, setup: Setup, final: Any, *, world_size: int = 1) -> None:
    """Plots and the HTML report; a drawing failure is logged, never fatal to a finished run."""
    try:
        from regraft.report import draw_run

        n, world = final.n, world_size
        # under DDP the gathered logits come rank by rank, each rank's shard being i::world
        indices = [i for r in range(world) for i in range(r, n, world)] if world > 1 else None
        if indices is None and n != len(setup.val_dataset):
            indices = _readable_indices(run, setup.val_dataset, n)
        draw_run(
            run, classes=setup.classes, logits=final.logits, targets=final.targets,
            val_dataset=setup.val_dataset, train_dataset=setup.train_dataset, indices=indices,
            mean=setup.data_config.mean, std=setup.data_config.std,
        )
    except Exception as exc:  # noqa: BLE001 - the weights and metrics are already saved
        log.warning("could not draw the run's plots: %s", exc)

def check_inputs(cfg: Config) -> None:
    if not cfg.data:
        raise ConfigError("no data given: pass DATA (a folder of class subfolders) or set 'data' in the recipe")
    if not cfg.model:
        raise ConfigError("no model given: pass --model NAME (see 'regraft models')")


def environment_info() -> dict[str, Any]:
    import accelerate
    import timm
    import torchvision

    from regraft._version import __version__

    return {
        "regraft": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
    }
