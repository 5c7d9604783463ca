"""regraft train: fine-tune a model on a folder of images and write a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "fine-tune a pretrained model on a folder of images"
DESCRIPTION = """\
Fine-tune MODEL on DATA and write a run folder (weights, config, metrics, plots, report).

DATA is a folder with train/ and one of val/, valid/, test/ (class subfolders in each), or one
folder of class subfolders, split stratified by --val-fraction with the seed, or the root of
--train-csv/--val-csv lists.

--task multilabel: any number of labels per image (a sigmoid per label, thresholds chosen on
validation): CSV rows 'path,labels' with the labels separated by --label-sep (default ';'), or
label folders holding a copy of an image in each of its labels' folders (docs/tasks.md).
--balance auto (default) weights the loss by inverse class frequency when the largest class has
3x the images of the smallest or more, and says so; none, loss, sampler choose yourself.

Strategies: auto (lp-ft with pretrained weights, scratch without), scratch, head, partial,
full (head at 10x LR), lp-ft (fit the head on frozen features, then fine-tune all), gradual.

Examples:
  regraft train data/hotdog --model resnet18 --epochs 5
  regraft train data/flowers --model timm:convnext_tiny --weights timm/convnext_tiny.fb_in1k
  regraft train --config recipe.yaml --lr 3e-4
  regraft train data/tags --train-csv train.csv --val-csv val.csv --task multilabel --model resnet18
  regraft train --resume runs/resnet18-full-20261123-101500
"""

# (flag, config key, argparse kwargs). Everything else in the Config: --set key=value.
FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model", dict(metavar="M", help="torchvision or timm name; 'timm:NAME' / 'torchvision:NAME' force a zoo")),
    ("--weights", "weights", dict(metavar="W", help="none | DEFAULT | enum name | timm/HF hub tag | .pth/.pt/.bin/.ckpt/.safetensors file | URL (default DEFAULT)")),
    ("--strategy", "strategy", dict(metavar="S", help="auto | scratch | head | partial | full | lp-ft | gradual (default auto)")),
    ("--epochs", "epochs", dict(type=int, metavar="N", help="training epochs (default 5)")),
    ("--img-size", "img_size", dict(type=int, metavar="N", help="input size; default from the pretrained config")),
    ("--in-chans", "in_chans", dict(type=int, metavar="N", help="input channels: 1 for grayscale, N for multi-band images (.npy, TIFF); the first conv is adapted (default: 8-bit RGB)")),
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
    ("--train-csv", "train_csv", dict(metavar="FILE", help="CSV/TSV of path,label rows for training (multi-label: path,labels), paths relative to DATA")),
    ("--val-csv", "val_csv", dict(metavar="FILE", help="CSV/TSV of path,label for validation")),
    ("--classes-file", "classes_file", dict(metavar="FILE", help="class names, one per line, in label order (default DATA/classes.txt if present)")),
    ("--time-budget", "time_budget", dict(type=float, metavar="SECONDS", help="auto: fine-tune only as many epochs as fit in this many seconds for the whole run")),
    ("--tta", "tta", dict(metavar="T", help="none (default) | flip: also measure the probe with each validation image and its mirror averaged (one extra view)")),
    ("--val-fraction", "val_fraction", dict(type=float, metavar="F", help="validation share when DATA has no split (default 0.2)")),
    ("--exclude", "exclude", dict(metavar="FILE.csv", help="fixes CSV from 'regraft scan --model M --fixes': leave out rows marked exclude, move rows marked relabel")),
    ("--task", "task", dict(metavar="T", help="multiclass (one class per image, default) | multilabel (any number of labels)")),
    ("--label-sep", "label_sep", dict(metavar="SEP", help="multilabel: what separates an image's labels in a CSV cell (default ';')")),
    ("--multilabel-loss", "multilabel_loss", dict(metavar="L", help="multilabel: bce (default) | asl (asymmetric loss, for many sparse labels)")),
    ("--balance", "balance", dict(metavar="B", help="auto (default: loss from 3x imbalance, says why) | none | loss (class-weighted loss) | sampler (class-balanced sampler)")),
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
    ("--trust-checkpoint", "trust_checkpoint", True, "allow unpickling arbitrary objects from --weights (only for files you trust); a recipe or run config cannot set this"),
    ("--keep-head", "keep_head", True, "load the checkpoint's classifier: its classes are yours (default: a new head, kept anyway for a regraft run with the same classes)"),
    ("--no-decode-cache", "decode_cache", False, "decode images every epoch instead of once"),
    ("--no-feature-cache", "feature_cache", False, "recompute frozen layers every epoch"),
    ("--overwrite", "overwrite", True, "replace the run in --out (deletes only the files that run wrote; a recipe cannot set this)"),
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


# What --resume takes from the command line: where and how it runs, more epochs, and the trust
# only a flag gives; the rest (model, data, strategy, LRs ...) is the run's own, or the resumed run
# would not be the same run.
RESUME_FLAGS = ("device", "workers", "cache_ram", "cache_dir", "epochs", "trust_checkpoint")


def config_from_args(args: argparse.Namespace):
    """Recipe file + flags (+ --set) -> a validated Config; flags win.

    A file (``--config``, or the run's config.yaml with ``--resume``) is untrusted: it never
    grants trust_checkpoint or overwrite, and where its weights come from is printed first.
    """
    from regraft.cli._options import require_device
    from regraft.config import load_config, parse_override
    from regraft.errors import ConfigError
    from regraft.runs import read_config

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
    notes: list[str] = []
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config; drop --config")
        recipe = Path(args.resume) / "config.yaml"
        if not recipe.exists():
            raise ConfigError(f"cannot resume {args.resume}: it has no config.yaml (is it a run folder?)")
        cfg = read_config(recipe, notes=notes)
        given = {**overrides, **explicit}
        ignored = sorted(k for k in given if k not in RESUME_FLAGS and k != "data")
        if ignored:
            names = ", ".join("--" + k.replace("_", "-") for k in ignored)
            notes.append(f"--resume continues {args.resume} with its own settings; ignored: {names} "
                         f"(honoured on resume: {', '.join('--' + k.replace('_', '-') for k in RESUME_FLAGS)})")
        cfg = cfg.merged({"out": args.resume, **{k: v for k, v in given.items() if k in RESUME_FLAGS}})
        source = str(recipe)
    else:
        cfg = load_config(args.config, overrides, explicit=explicit, notes=notes)
        source = args.config
    require_device(cfg.device, flag="device")
    if source is not None:
        from_file = "weights" not in overrides and "weights" not in explicit
        _announce_file(notes, cfg, source=source, weights_from_file=from_file, quiet=getattr(args, "quiet", False))
    return cfg


def _announce_file(notes: list[str], cfg: Any, *, source: str, weights_from_file: bool, quiet: bool) -> None:
    """Say, before anything is loaded, what a file asked for that needs the user's attention."""
    from regraft.cli.main import main_process

    if not main_process():  # the main process of a launch says it once
        return
    for note in notes:  # printed even with -q: the user must know what a file was denied
        print(f"note: {note}", flush=True)
    origin = weights_origin(cfg.weights) if weights_from_file else None
    remote = origin is not None and origin.startswith(("a URL", "the Hugging Face hub"))
    if origin is not None and (remote or not quiet):  # a download a file asked for is always announced
        print(f"weights: {cfg.weights} ({origin}); settings from {source}", flush=True)


def weights_origin(spec: str | None) -> str | None:
    """Where a --weights value makes regraft look, in words (None for no weights)."""
    import re
    from urllib.parse import urlparse

    text = (spec or "").strip()
    if text.lower() in ("", "none", "random", "scratch"):
        return None
    if re.match(r"^https?://", text, re.IGNORECASE):
        return f"a URL: downloaded from {urlparse(text).hostname or '?'} unless cached"
    if text.lower().startswith("file://"):
        return "a file URL"
    if text.startswith(("hf-hub:", "timm/")):
        return "the Hugging Face hub: downloaded unless cached"
    path = Path(text).expanduser()
    if path.exists():
        return f"a local {'folder' if path.is_dir() else 'file'}, read without running code unless --trust-checkpoint is given"
    return "the model zoo's published weights: downloaded unless cached"


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
        print(summary_line(result.summary, result.run.path))
    return 0


def summary_line(s: dict[str, Any], path: Any) -> str:
    """The last line of ``regraft train``: the kept model's figure, where it comes from, the run folder."""
    key = str(s.get("primary") or "val_acc")
    name = "mAP" if key == "val_map" else "acc"
    acc = s.get(f"best_{key}")
    if str(s.get("validation", "holdout")).startswith("cv"):
        std = s.get(f"best_{key}_std")
        figure = f"cross-validated {name} {acc:.4f}" + (f" ± {std:.4f}" if std is not None else "") + f" ({s['validation'][2:]}-fold)"
    else:
        figure = f"best val {name} {acc:.4f}"
    stage = s.get("best_stage")
    if stage == "probe":
        where = "from the probe"
    elif stage == "wise-ft":
        where = f"from the WiSE-FT mix α {s.get('wise_ft', {}).get('alpha')}"
    else:
        where = f"at epoch {s.get('best_epoch')} of {s.get('epochs')}"
    f1 = s.get("f1_macro_at_thresholds")
    at = f", macro F1 {f1:.4f} at the labels' thresholds" if f1 is not None else ""
    line = f"{figure} {where}{at} ({s.get('wall_seconds', 0):.1f}s); run folder: {path}"
    ema = s.get("ema") or {}
    if ema.get("beats_kept"):
        line += (f"\nthe EMA weights do better (val {name} {ema[f'best_{key}']:.4f} at epoch {ema['best_epoch']}): "
                 "use them with --weights ema in eval, predict and export")
    return line
