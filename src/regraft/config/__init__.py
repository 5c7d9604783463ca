"""The one config schema: a typed dataclass loaded from a recipe YAML and CLI flags.

Every setting of a run lives here, validated in one place. Unknown keys, wrong types, numbers
out of range and non-finite numbers are :class:`~regraft.errors.ConfigError`\\ s that name the
key and the fix; the CLI, recipes and ``rg.fit`` all pass through :meth:`Config.validate`.
``RUN/config.yaml`` is ``Config.to_yaml()`` of the resolved settings, and loading it back
reproduces the run.

A file (a recipe, a run's ``config.yaml``) is data, possibly from a stranger: the permission keys
in :data:`UNTRUSTED_KEYS` (``trust_checkpoint``, ``overwrite``) are dropped when a file is read,
with a note; they count only when given on the command line or as a Python argument.

Example:
    >>> cfg = Config.from_dict({"model": "resnet18", "epochs": 3})
    >>> cfg.epochs
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regraft.config._files import UNTRUSTED_KEYS, drop_untrusted, parse_override, read_recipe
from regraft.config._values import coerce, parse_bytes
from regraft.errors import ConfigError

__all__ = [
    "Config", "load_config", "read_recipe", "drop_untrusted", "parse_override", "parse_bytes",
    "STRATEGIES", "OPTIMIZERS", "SCHEDULES", "UNTRUSTED_KEYS", "TASKS", "BALANCES", "MULTILABEL_LOSSES",
]

STRATEGIES = ("auto", "scratch", "probe", "head", "partial", "full", "lp-ft", "gradual")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
AUGMENTS = ("none", "light", "strong")
PRECISIONS = ("auto", "no", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
TRACKERS = ("tensorboard", "mlflow")
TASKS = ("multiclass", "multilabel")  # regraft.tasks.Task: what the labels are
BALANCES = ("auto", "none", "loss", "sampler")  # regraft.tasks.Balance: class imbalance
MULTILABEL_LOSSES = ("bce", "asl")  # BCE-with-logits, or the asymmetric loss (Ridnik et al. 2021)

# Closed choices, checked in validate(); the error lists the valid values.
_CHOICES: dict[str, tuple[str, ...]] = {
    "strategy": STRATEGIES,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "augment": AUGMENTS,
    "precision": PRECISIONS,
    "device": DEVICES,
    "task": TASKS,
    "balance": BALANCES,
    "multilabel_loss": MULTILABEL_LOSSES,
    "tta": ("none", "flip"),
}


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {_num(low)}"


def _between(low: float, high: float, *, low_in: bool = True, high_in: bool = True) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        return (v >= low if low_in else v > low) and (v <= high if high_in else v < high)

    left = f"at least {_num(low)}" if low_in else f"above {_num(low)}"
    right = f"at most {_num(high)}" if high_in else f"below {_num(high)}"
    return check, f"{left} and {right}"


_POSITIVE = ((lambda v: v > 0), "positive")
# Numeric ranges, checked in validate() for values that are set (None means "default").
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _at_least(1), "batch_size": _at_least(1), "grad_accum": _at_least(1),
    "feature_views": _at_least(1), "partial_stages": _at_least(1), "step_size": _at_least(1),
    "patience": _at_least(1), "workers": _at_least(0),
    "img_size": _at_least(8), "seed": _between(0, 2**32 - 1), "in_chans": _between(1, 256),
    "val_fraction": ((lambda v: 0.0 < v < 1.0), "between 0 and 1"),
    "min_coverage": ((lambda v: 0.0 <= v <= 1.0), "between 0 and 1"),
    "lr": _POSITIVE, "probe_l2": _POSITIVE, "time_budget": _POSITIVE, "head_lr_mult": _POSITIVE, "gamma": _POSITIVE,
    "clip_grad": ((lambda v: v > 0), "a positive gradient norm (leave it unset not to clip)"),
    "weight_decay": _at_least(0), "warmup_epochs": _at_least(0), "mixup": _at_least(0), "cutmix": _at_least(0),
    "label_smoothing": _between(0, 1, high_in=False), "head_dropout": _between(0, 1, high_in=False),
    "momentum": _between(0, 1, high_in=False), "ema": _between(0, 1, low_in=False, high_in=False),
    "discriminative_lr": _between(0, 1, low_in=False), "layer_decay": _between(0, 1, low_in=False),
    "crop_pct": _between(0, 1, low_in=False),
}


@dataclass
class Config:
    """All settings of one training run. Field docs double as the recipe reference."""

    # --- what to train on, what to train
    data: str | None = None  # folder (train/ + val/, or class subfolders) or a CSV root
    model: str | None = None  # torchvision or timm name; "timm:NAME"/"torchvision:NAME" force a zoo
    weights: str = "DEFAULT"  # none | DEFAULT | enum name | hub tag | file | URL
    strategy: str = "auto"  # auto = decide from the probe's evidence with pretrained weights, scratch without
    task: str = "multiclass"  # multiclass (one class per image) | multilabel (any number of labels per image)
    # --- data
    train_csv: str | None = None  # CSV/TSV of path,label (paths relative to data)
    val_csv: str | None = None
    classes_file: str | None = None  # explicit class list, one per line
    exclude: str | None = None  # fixes CSV (regraft scan --fixes): rows marked exclude are left out, relabel moved
    label_sep: str = ";"  # multilabel: what separates an image's labels in a CSV cell ("cat;dog")
    balance: str = "auto"  # auto | none | loss (class-weighted loss) | sampler (class-balanced sampler)
    val_fraction: float = 0.2  # used when DATA has no val/valid/test split
    img_size: int | None = None  # overrides the pretrained config's input size
    in_chans: int | None = None  # input channels: 1 grayscale, N bands (None = 8-bit RGB, as the weights); docs/channels.md
    augment: str = "light"  # none | light | strong
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    workers: int | None = None  # DataLoader workers (None = choose from CPU count)
    decode_cache: bool = True  # decode each image once per run
    cache_ram: str | None = None  # RAM budget for caches, e.g. "4G" (None = a quarter of available)
    cache_dir: str | None = None  # where memory-mapped caches spill (None = ~/.cache/regraft)
    feature_cache: bool = True  # compute a frozen prefix once per image when the plan allows
    feature_views: int = 1  # views cached per training image: the plain image + feature_views-1 augmented
    feature_fp16: bool = False
    # --- weights loading
    rename: dict[str, str] = field(default_factory=dict)  # OLD=NEW key patterns
    skip: list[str] = field(default_factory=list)  # globs of checkpoint keys to leave out
    trust_checkpoint: bool = False  # allow unpickling arbitrary objects (only for files you trust)
    keep_head: bool = False  # the checkpoint's classifier has your classes: load it (default: a new head; a regraft run with the same classes keeps it anyway)
    min_coverage: float = 0.9  # refuse to train when less of the trunk loaded
    sha256: str | None = None  # expected hash of a downloaded weights file
    # --- surgery and head
    surgery: list[dict] = field(default_factory=list)  # ordered ops, see docs/surgery.md
    head_hidden: list[int] = field(default_factory=list)
    head_dropout: float = 0.0
    head_init: str = "default"  # default | xavier_uniform | kaiming_normal | zeros
    # --- freezing
    train: list[str] | None = None  # paths/globs that train (everything else frozen)
    freeze: list[str] | None = None  # paths/globs to freeze (everything else trains)
    freeze_to: str | None = None  # freeze from the stem up to and including this stage
    train_bn: bool = False  # keep BatchNorm affine parameters trainable inside frozen parts
    frozen_bn: bool = False  # replace frozen BatchNorm by FrozenBatchNorm2d
    bn_eval: bool | None = None  # keep all BatchNorm statistics fixed while training (None = on for lp-ft only)
    partial_stages: int = 1  # strategy partial: how many last stages train with the head
    unfreeze: list[dict] = field(default_factory=list)  # [{epoch: 2, train: layer4}, ...]
    # --- optimisation
    epochs: int = 5
    batch_size: int = 32
    even_batches: bool = True  # split an epoch into nearly equal batches (batch_size is then the largest); false: full batches and a last, smaller one
    lr: float | None = None  # None = the strategy's default
    lr_groups: dict[str, float] = field(default_factory=dict)  # {stage/path/glob: LR}: these parameters train at this LR
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None  # None = 0.05 for AdamW, 1e-4 for SGD
    head_lr_mult: float = 10.0
    discriminative_lr: float | None = None  # lowest stage LR as a fraction of lr (geometric)
    layer_decay: float | None = None  # timm-style layer-wise LR decay
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 3  # schedule step: epochs between decays
    gamma: float = 0.1
    # --- the probe and decisions from evidence (auto, probe, lp-ft)
    probe_l2: float | None = None  # the probe's L2 penalty (None = chosen by stratified k-fold cross-validation)
    time_budget: float | None = None  # seconds for the whole run; auto fine-tunes only as many epochs as fit
    wise_ft: bool = True  # auto: pick a mix of the probe's and the fine-tuned weights on validation evidence
    tta: str = "none"  # none | flip: the probe's validation figure also with each image and its mirror averaged
    data_findings: bool = True  # after the probe: suspected label issues and train/val copies on its features
    # --- engine
    precision: str = "auto"  # auto = bf16 on a capable GPU or a CPU with AMX, else fp32
    channels_last: bool | None = None  # None = on for convolutional models on CPU and CUDA
    grad_accum: int = 1
    clip_grad: float | None = None
    label_smoothing: float = 0.0
    multilabel_loss: str = "bce"  # multilabel: bce (BCE-with-logits) | asl (asymmetric loss)
    ema: float | None = None  # EMA decay, e.g. 0.999
    compile: bool = False
    patience: int | None = None  # early stopping on validation loss
    log: list[str] = field(default_factory=list)  # tensorboard, mlflow
    seed: int = 0
    device: str = "auto"
    # --- output
    out: str | None = None
    overwrite: bool = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Config:
        """Build and validate a Config; unknown keys and wrong types raise ConfigError."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            norm = str(key).replace("-", "_")
            if norm not in known:
                close = difflib.get_close_matches(norm, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{source}: unknown key {str(key)!r}{hint}")
            kwargs[norm] = coerce(norm, value, hints[norm], source)
        cfg = cls(**kwargs)
        cfg.validate(source=source)
        return cfg

    def merged(self, overrides: dict[str, Any], *, source: str = "flags", explicit: dict[str, Any] | None = None) -> Config:
        """A new Config with ``overrides`` applied (None = not given, so the value is kept).

        ``explicit`` values are applied as they are, None included: ``--set freeze_to=null``
        clears a recipe's key.
        """
        values = self.to_dict()
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.update(explicit or {})
        return Config.from_dict(values, source=source)

    def validate(self, *, source: str = "config") -> None:
        """Check closed choices, numeric ranges and combinations; the first problem is a ConfigError.

        Raises:
            ConfigError: names the key, the value received and what is expected.
        """
        for key, choices in _CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise ConfigError(
                    f"{source}: {key} must be one of {', '.join(choices)}; got {value!r}"
                )
        for key, (check, text) in _RANGES.items():
            value = getattr(self, key)
            if value is not None and not check(value):
                raise ConfigError(f"{source}: {key} must be {text}; got {value}")
        self._validate_lists(source)
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"{source}: interpolation must be one of {', '.join(INTERPOLATIONS)}; got {self.interpolation!r}")
        if self.cache_ram is not None:
            parse_bytes(self.cache_ram, name=f"{source}: cache_ram")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256.strip()):
            raise ConfigError(f"{source}: sha256 must be 64 hexadecimal digits (sha256sum FILE); got {self.sha256!r}")
        if self.train is not None and self.freeze is not None:
            raise ConfigError(f"{source}: give 'train' or 'freeze', not both")
        if not self.label_sep or len(self.label_sep) > 8 or any(c in self.label_sep for c in '"\r\n'):
            raise ConfigError(f"{source}: label_sep must be the 1 to 8 characters between an image's labels (e.g. ';' or '|'); got {self.label_sep!r}")
        if self.multilabel_loss != "bce" and self.task != "multilabel":
            raise ConfigError(f"{source}: multilabel_loss {self.multilabel_loss} applies to task multilabel; add --task multilabel or drop it")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError(f"{source}: nesterov needs momentum above 0 with sgd; set momentum (e.g. 0.9) or drop nesterov")

    def _validate_lists(self, source: str) -> None:
        bad_width = [w for w in self.head_hidden if w < 1]
        if bad_width:
            raise ConfigError(f"{source}: head_hidden widths must be at least 1; got {self.head_hidden}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and not values:
                raise ConfigError(f"{source}: {key} must list one number per input channel (e.g. 3); got []")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ConfigError(f"{source}: std values must be positive; got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"{source}: mean and std must have the same length; got {len(self.mean)} and {len(self.std)}")
        bad_lr = {k: v for k, v in self.lr_groups.items() if not (v > 0 and math.isfinite(v))}
        if bad_lr:
            name, value = next(iter(bad_lr.items()))
            raise ConfigError(f"{source}: lr_groups['{name}'] must be a positive learning rate; got {value}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and self.in_chans is not None and len(values) != self.in_chans:
                raise ConfigError(f"{source}: {key} must list one number per input channel: in_chans is {self.in_chans}, "
                                  f"got {len(values)} values")
        unknown = [t for t in self.log if t not in TRACKERS]
        if unknown:
            raise ConfigError(f"{source}: log must list trackers among {', '.join(TRACKERS)}; got {unknown[0]!r}")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path, *, notes: list[str] | None = None) -> Config:
        """A recipe or run config file as a Config; permission keys are dropped (see :func:`read_recipe`)."""
        return cls.from_dict(read_recipe(path, notes=notes), source=str(path))


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None, *,
    explicit: dict[str, Any] | None = None, notes: list[str] | None = None,
) -> Config:
    """Recipe file (optional) + flag overrides -> validated Config. Flags win over the file.

    ``overrides`` skip None (a flag not given); ``explicit`` (``--set``) apply None too. The
    file's permission keys (:data:`UNTRUSTED_KEYS`) are dropped; ``overrides`` and ``explicit``
    come from the command line and may set them.

    Args:
        notes: when given, one line is appended per setting of the file that was ignored.
    """
    base = read_recipe(path, notes=notes) if path else {}
    cfg = Config.from_dict(base, source=str(path) if path else "config")
    return cfg.merged(overrides or {}, explicit=explicit) if (overrides or explicit) else cfg
