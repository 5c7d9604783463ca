"""regraft train: fine-tune a model on a folder of images and write a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "fine-tune a pretrained model on a folder of images"
DESCRIPTION = """\
Fine-tune MODEL on DATA and write a run folder (weights, config, metrics, plots, report).

DATA is a folder with train/ and one of val/, valid/, test/ (class subfolders in each), or one
folder of class subfolders, split stratified by --val-fraction with the seed.

Strategies: auto (lp-ft with pretrained weights, scratch without), scratch, head, partial,
full (head at 10x LR), lp-ft (fit the head on frozen features, then fine-tune all), gradual.

Examples:
  regraft train data/hotdog --model resnet18 --epochs 5
  regraft train data/flowers --model timm:convnext_tiny --weights timm/convnext_tiny.fb_in1k
  regraft train --config recipe.yaml --lr 3e-4
  regraft train --resume runs/resnet18-full-20261123-101500
"""

# (flag, config key, argparse kwargs). Everything else in the Config: --set key=value.
FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model", dict(metavar="M", help="torchvision or timm name; 'timm:NAME' / 'torchvision:NAME' force a zoo")),
    ("--weights", "weights", dict(metavar="W", help="none | DEFAULT | enum name | timm/HF hub tag | .pth/.pt/.bin/.ckpt/.safetensors file | URL (default DEFAULT)")),
    ("--strategy", "strategy", dict(metavar="S", help="auto | scratch | head | partial | full | lp-ft | gradual (default auto)")),
    ("--epochs", "epochs", dict(type=int, metavar="N", help="training epochs (default 5)")),
    ("--img-size", "img_size", dict(type=int, metavar="N", help="input size; default from the pretrained config")),
    ("--batch-size", "batch_size", dict(type=int, metavar="N", help="batch size per process (default 32)")),
    ("--lr", "lr", dict(type=float, metavar="LR", help="base learning rate; default depends on the strategy")),
    ("--optimizer", "optimizer", dict(metavar="NAME", help="adamw | sgd (default adamw)")),
    ("--schedule", "schedule", dict(metavar="NAME", help="constant | cosine | onecycle | step (default cosine)")),
    ("--weight-decay", "weight_decay", dict(type=float, metavar="WD", help="default 0.05 (AdamW) or 1e-4 (SGD); never on norms and biases")),
    ("--head-lr-mult", "head_lr_mult", dict(type=float, metavar="X", help="the new head's LR multiplier (default 10)")),
    ("--out", "out", dict(metavar="RUN", help="run folder (default runs/MODEL-STRATEGY-TIME)")),
    ("--seed", "seed", dict(type=int, metavar="N", help="random seed (default 0)")),
    ("--device", "device", dict(metavar="D", help="auto | cpu | cuda | mps (default auto)")),
    ("--precision", "precision", dict(metavar="P", help="auto | fp32 | bf16 | fp16 (default auto: bf16 on a capable GPU or a CPU with AMX)")),
    ("--val-fraction", "val_fraction", dict(type=float, metavar="F", help="validation share when DATA has no split (default 0.2)")),
    ("--exclude", "exclude", dict(metavar="FILE.csv", help="fixes CSV from 'regraft scan --model M --fixes': leave out rows marked exclude, move rows marked relabel")),
    ("--augment", "augment", dict(metavar="LEVEL", help="none | light | strong (default light)")),
    ("--freeze-to", "freeze_to", dict(metavar="STAGE", help="freeze from the stem up to and INCLUDING this stage (e.g. layer3)")),
    ("--train", "train", dict(metavar="PATHS", help="comma-separated paths/globs that train; all else frozen (e.g. fc1,fc2,head)")),
    ("--freeze", "freeze", dict(metavar="PATHS", help="comma-separated paths/globs to freeze; all else trains")),
    ("--partial-stages", "partial_stages", dict(type=int, metavar="N", help="strategy partial: how many last stages train with the head (default 1)")),
    ("--discriminative-lr", "discriminative_lr", dict(type=float, metavar="F", help="first stage's LR as a fraction of the last's (geometric in between)")),
    ("--layer-decay", "layer_decay", dict(type=float, metavar="D", help="layer-wise LR decay as in timm (e.g. 0.75)")),
    ("--warmup-epochs", "warmup_epochs", dict(type=float, metavar="E", help="linear LR warm-up (default 0)")),
    ("--patience", "patience", dict(type=int, metavar="N", help="stop when validation loss has not improved for N epochs")),
    ("--sha256", "sha256", dict(metavar="HEX", help="expected sha256 of a downloaded --weights file")),
    ("--min-coverage", "min_coverage", dict(type=float, metavar="F", help="refuse to train when less of the trunk loaded (default 0.9)")),
    ("--workers", "workers", dict(type=int, metavar="N", help="data-loading worker processes")),
    ("--cache-ram", "cache_ram", dict(metavar="SIZE", help="RAM budget for the decode and feature caches, e.g. 4G")),
    ("--grad-accum", "grad_accum", dict(type=int, metavar="N", help="gradient accumulation steps")),
    ("--clip-grad", "clip_grad", dict(type=float, metavar="NORM", help="clip gradients to this norm")),
    ("--label-smoothing", "label_smoothing", dict(type=float, metavar="E", help="label smoothing (default 0)")),
    ("--ema", "ema", dict(type=float, metavar="DECAY", help="keep an EMA of the weights, evaluated alongside")),
    ("--mixup", "mixup", dict(type=float, metavar="ALPHA", help="mixup alpha (default off)")),
    ("--cutmix", "cutmix", dict(type=float, metavar="ALPHA", help="cutmix alpha (default off)")),
    ("--log", "log", dict(metavar="TRACKERS", help="comma-separated: tensorboard, mlflow")),
]
SWITCHES: list[tuple[str, str, bool, str]] = [
    ("--channels-last", "channels_last", True, "channels_last memory format (default: on for convolutional models on CPU and CUDA)"),
    ("--no-channels-last", "channels_last", False, "keep the contiguous (NCHW) memory format"),
    ("--compile", "compile", True, "torch.compile the model"),
    ("--train-bn", "train_bn", True, "keep BatchNorm affine parameters trainable inside frozen parts"),
    ("--frozen-bn", "frozen_bn", True, "replace frozen BatchNorm layers by FrozenBatchNorm2d"),
    ("--bn-eval", "bn_eval", True, "keep every BatchNorm's statistics fixed while training (default for lp-ft)"),
    ("--bn-train", "bn_eval", False, "let trainable BatchNorm layers update their statistics (also under lp-ft)"),
    ("--trust-checkpoint", "trust_checkpoint", True, "allow unpickling arbitrary objects from --weights (only for files you trust)"),
    ("--no-decode-cache", "decode_cache", False, "decode images every epoch instead of once"),
    ("--no-feature-cache", "feature_cache", False, "recompute frozen layers every epoch"),
    ("--overwrite", "overwrite", True, "replace an existing run folder"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", metavar="DATA", help="image folder (or set 'data' in --config)")
    p.add_argument("--config", metavar="RECIPE", help="recipe YAML; flags override its values")
    for flag, key, kwargs in FLAGS:
        p.add_argument(flag, dest=f"cfg_{key}", **kwargs)
    for flag, key, value, text in SWITCHES:
        p.add_argument(flag, dest=f"cfg_{key}", action="store_const", const=value, help=text)
    p.add_argument("--rename", action="append", metavar="OLD=NEW", help="checkpoint key rename (regex or {} placeholders); repeatable")
    p.add_argument("--skip", action="append", metavar="GLOB", help="leave checkpoint keys matching GLOB out; repeatable")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="any other recipe key, e.g. --set head_hidden=[256]")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def config_from_args(args: argparse.Namespace):
    """Recipe file + flags (+ --set) -> a validated Config; flags win."""
    from regraft.config import Config, load_config, parse_override
    from regraft.errors import ConfigError

    overrides: dict[str, Any] = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    if args.data is not None:
        overrides["data"] = args.data
    if getattr(args, "rename", None):
        overrides["rename"] = dict(_split_pair(r, "--rename") for r in args.rename)
    if getattr(args, "skip", None):
        overrides["skip"] = list(args.skip)
    explicit: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, value = parse_override(item)
        explicit[key.replace("-", "_")] = value
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config; drop --config")
        recipe = Path(args.resume) / "config.yaml"
        if not recipe.is_file():
            raise ConfigError(f"cannot resume {args.resume}: it has no config.yaml (is it a run folder?)")
        cfg = Config.from_yaml(recipe)
        return cfg.merged({"out": args.resume, **{k: v for k, v in overrides.items() if k in ("device", "workers", "cache_ram")}})
    return load_config(args.config, overrides, explicit=explicit)


def _split_pair(text: str, flag: str) -> tuple[str, str]:
    from regraft.errors import ConfigError

    if "=" not in text:
        raise ConfigError(f"{flag} expects OLD=NEW; got '{text}'")
    old, new = text.split("=", 1)
    return old, new


def run(args: argparse.Namespace) -> int:
    from regraft.cli._progress import make_progress
    from regraft.training.run import train

    cfg = config_from_args(args)
    callbacks = make_progress(args.quiet)
    result = train(cfg, callbacks=callbacks, resume=bool(args.resume))
    if not args.quiet:
        s = result.summary
        where = "from the linear probe (fine-tuning did not beat it)" if s["best_epoch"] == 0 else f"at epoch {s['best_epoch']} of {s['epochs']}"
        print(f"best val acc {s['best_val_acc']:.4f} {where} ({s['train_seconds']:.1f}s training); run folder: {result.run.path}")
    return 0
