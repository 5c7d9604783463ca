"""The one config schema: a typed dataclass loaded from a recipe YAML and CLI flags.

Every setting of a run lives here, validated in one place. Unknown keys and wrong types are
:class:`~regraft.errors.ConfigError`\\ s that name the key and the fix. ``RUN/config.yaml`` is
``Config.to_yaml()`` of the resolved settings, and loading it back reproduces the run.

Example:
    >>> cfg = Config.from_dict({"model": "resnet18", "epochs": 3})
    >>> cfg.epochs
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regraft.errors import ConfigError

__all__ = ["Config", "load_config", "parse_override", "STRATEGIES", "OPTIMIZERS", "SCHEDULES"]

STRATEGIES = ("auto", "scratch", "head", "partial", "full", "lp-ft", "gradual")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
AUGMENTS = ("none", "light", "strong")
PRECISIONS = ("auto", "no", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Closed choices, checked in validate(); the error lists the valid values.
_CHOICES: dict[str, tuple[str, ...]] = {
    "strategy": STRATEGIES,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "augment": AUGMENTS,
    "precision": PRECISIONS,
    "device": DEVICES,
}


@dataclass
class Config:
    """All settings of one training run. Field docs double as the recipe reference."""

    # --- what to train on, what to train
    data: str | None = None  # folder (train/ + val/, or class subfolders) or a CSV root
    model: str | None = None  # torchvision or timm name; "timm:NAME"/"torchvision:NAME" force a zoo
    weights: str = "DEFAULT"  # none | DEFAULT | enum name | hub tag | file | URL
    strategy: str = "auto"  # auto = lp-ft with pretrained weights, scratch without
    # --- data
    train_csv: str | None = None  # CSV/TSV of path,label (paths relative to data)
    val_csv: str | None = None
    classes_file: str | None = None  # explicit class list, one per line
    exclude: str | None = None  # fixes CSV (regraft scan --fixes): rows marked exclude are left out, relabel moved
    val_fraction: float = 0.2  # used when DATA has no val/valid/test split
    img_size: int | None = None  # overrides the pretrained config's input size
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
    lr: float | None = None  # None = the strategy's default
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
    lp_epochs: int = 50  # lp-ft: max head-only epochs on cached features
    lp_lr: float | None = None  # lp-ft probe LR (None = 1e-2, AdamW)
    # --- engine
    precision: str = "auto"  # auto = bf16 on a capable GPU or a CPU with AMX, else fp32
    channels_last: bool | None = None  # None = on for convolutional models on CPU and CUDA
    grad_accum: int = 1
    clip_grad: float | None = None
    label_smoothing: float = 0.0
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
                raise ConfigError(f"{source}: unknown key '{key}'{hint}")
            kwargs[norm] = _coerce(norm, value, hints[norm], source)
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
        for key, choices in _CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise ConfigError(
                    f"{source}: {key} must be one of {', '.join(choices)}; got '{value}'"
                )
        _positive(self, ("epochs", "batch_size", "grad_accum", "feature_views", "partial_stages", "step_size"), source)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"{source}: val_fraction must be between 0 and 1; got {self.val_fraction}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"{source}: min_coverage must be between 0 and 1; got {self.min_coverage}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"{source}: lr must be positive; got {self.lr}")
        if self.img_size is not None and self.img_size < 8:
            raise ConfigError(f"{source}: img_size must be at least 8; got {self.img_size}")
        if self.train is not None and self.freeze is not None:
            raise ConfigError(f"{source}: give 'train' or 'freeze', not both")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        return cls.from_dict(_read_yaml(path), source=str(path))


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None, *, explicit: dict[str, Any] | None = None) -> Config:
    """Recipe file (optional) + flag overrides -> validated Config. Flags win over the file.

    ``overrides`` skip None (a flag not given); ``explicit`` (``--set``) apply None too.
    """
    base = _read_yaml(path) if path else {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    cfg = Config.from_dict(base, source=str(path) if path else "config")
    return cfg.merged(overrides or {}, explicit=explicit) if (overrides or explicit) else cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML-parsed value, for ``--set key=value`` flags."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE; got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from exc
    return data or {}


def _positive(cfg: Config, keys: tuple[str, ...], source: str) -> None:
    for key in keys:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: {key} must be at least 1; got {getattr(cfg, key)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting only lossless cases."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    bad = ConfigError(f"{source}: '{key}' must be {_describe(tp)}; got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(key, v, item_tp, source) for v in value]
    if origin is dict:
        if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
            value = dict(v.split("=", 1) for v in value)
        if not isinstance(value, dict):
            raise bad
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is dict or tp is typing.Any:
        return value
    raise bad


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, _type_name(tp)
    )
