"""Loading a finished run back: its model card, its best (or EMA) weights, its preprocessing.

Every file is read as untrusted data: a missing, truncated, non-UTF-8 or malformed file, a card
naming an architecture this installation cannot build, and weights that do not fit the card
each raise one :class:`~regraft.errors.RunError` line naming the file and what is wrong with it.
Weights saved from a ``torch.compile``d or DDP-wrapped model (keys prefixed ``_orig_mod.`` or
``module.``) load as the plain model's.

Example:
    >>> loaded = load_run("runs/exp1", weights="ema")        # doctest: +SKIP
    >>> model, transform, classes = loaded                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regraft.errors import ConfigError, RunError
from regraft.inference.card import check_card, read_card, read_run_json
from regraft.runs import RunDir

__all__ = ["WeightsChoice", "LoadedRun", "load_run", "build_model_from_card", "read_card", "read_run_json", "check_card", "read_weights", "load_weights_into", "has_ema"]

log = logging.getLogger(__name__)

_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DDP's wrappers


class WeightsChoice(str, Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """Which weights of a run: ``best`` (``model.safetensors``) or ``ema`` (``model_ema.safetensors``)."""

    BEST = "best"
    EMA = "ema"

    def __str__(self) -> str:
        return self.value

    @property
    def file(self) -> str:
        return "model.safetensors" if self is WeightsChoice.BEST else "model_ema.safetensors"

    @classmethod
    def parse(cls, value: str | WeightsChoice) -> WeightsChoice:
        """``"ema"`` -> ``WeightsChoice.EMA``; ConfigError listing the choices otherwise."""
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"--weights must be one of {', '.join(w.value for w in cls)}; got '{value}'") from None


class LoadedRun:
    """A finished run loaded back: the model in eval mode, its preprocessing and class names.

    Attributes:
        run: the run folder; ``card``: its ``model.json``; ``classes``: output ``i`` is ``classes[i]``;
        weights: ``best`` or ``ema``; ``weights_file``: the file they came from.
    """

    def __init__(self, run: RunDir, model: nn.Module, card: dict[str, Any], *, weights: WeightsChoice = WeightsChoice.BEST) -> None:
        self.run = run
        self.model = model
        self.card = card
        self.classes: list[str] = list(card["classes"])
        self.weights = weights
        self.weights_file = run.path / weights.file

    @property
    def data_config(self) -> Any:
        """The run's preprocessing as a :class:`regraft.zoo.DataConfig`."""
        from regraft.zoo import DataConfig

        pre = self.card["preprocessing"]
        return DataConfig(
            input_size=tuple(pre["input_size"]),
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            interpolation=pre["interpolation"],
            crop_pct=float(pre["crop_pct"]),
            bit_depth=int(pre.get("bit_depth", 8)),  # cards before in_chans: 8-bit RGB
            mean_std_from=str(pre.get("mean_std_from", "weights")),
        )

    def transform(self) -> Any:
        """The evaluation transform (resize, centre crop, normalise) the model was validated with.

        ``transform.load(path)`` decodes a file exactly as validation, eval, predict and the ONNX
        runtime do; ``transform(pil_image)`` transforms an image you decoded yourself.
        """
        from regraft.data import build_transforms

        return build_transforms(self.data_config, train=False)

    def __iter__(self) -> Iterator[Any]:  # model, transform, classes = rg.load_run(RUN)
        return iter((self.model, self.transform(), self.classes))


def build_model_from_card(card: dict[str, Any], *, model: nn.Module | None = None, where: str | Path = "model.json") -> nn.Module:
    """Rebuild the architecture a run trained (zoo model, new head, surgery, frozen BatchNorm), without weights.

    Args:
        card: a run's ``model.json``.
        model: for runs of your own module, a fresh instance of it (the card cannot rebuild it).
        where: the card's path, for error messages.

    Raises:
        RunError: a custom module without ``model``, or an architecture, head or surgery that
            cannot be built here (names ``where``).
    """
    from regraft import surgery, zoo

    check_card(card, where=where)
    arch = card["architecture"]
    try:
        if model is None:
            if arch["zoo"] not in zoo.ZOOS:
                raise RunError(
                    f"this run trained a custom module ({arch['name']}); pass a fresh instance: load_run(RUN, model=MyNet())"
                )
            channels = int(card["preprocessing"]["input_size"][0])
            model = zoo.build(zoo.ModelRef(arch["zoo"], arch["name"]), in_chans=channels if channels != 3 else None)
        surgery.replace_head(
            model, card["num_classes"], hidden=tuple(arch.get("head_hidden") or ()), dropout=float(arch.get("head_dropout") or 0.0),
        )
        if arch.get("surgery"):
            surgery.apply(model, arch["surgery"], input_size=tuple(card["preprocessing"]["input_size"]))
        if arch.get("frozen_bn"):
            from regraft.freezing import swap_frozen_bn

            swap_frozen_bn(model, arch["frozen_bn"])
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unknown name, a surgery that no longer applies, ...
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RunError(
            f"{where} names architecture {arch['zoo']}:{arch['name']}, which cannot be rebuilt here ({reason}); "
            "install the torchvision/timm versions the run was trained with (RUN/environment.json lists them)"
        ) from exc
    return model


def load_run(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    weights: str | WeightsChoice = WeightsChoice.BEST,
    model: nn.Module | None = None,
) -> LoadedRun:
    """Load a finished run: rebuild its model, load its best (or EMA) weights, put it in eval mode.

    Args:
        path: the run folder.
        device: where the model goes.
        weights: ``best`` (``model.safetensors``) or ``ema`` (``model_ema.safetensors``, written by
            training with ``--ema``).
        model: for runs of your own module, a fresh instance of it.

    Returns:
        A :class:`LoadedRun`; ``model, transform, classes = rg.load_run(RUN)`` also works.

    Raises:
        RunError: the folder is not a finished run, a file is damaged (named), or the run has no
            EMA weights.
        ConfigError: an unknown ``weights`` choice.

    Example:
        >>> model, transform, classes = load_run("runs/exp1")     # doctest: +SKIP
    """
    choice = WeightsChoice.parse(weights)
    run = RunDir(path)
    if run.path.exists() and not run.path.is_dir():
        raise RunError(f"{run.path} is a file, not a run folder; pass the folder 'regraft train' wrote (it holds model.json)")
    if not run.path.is_dir():
        raise RunError(f"run folder not found: {run.path}")
    card = read_card(run)
    wpath = run.path / choice.file
    if choice is WeightsChoice.EMA and not wpath.is_file() and (run.path / "model.safetensors").is_file():
        raise RunError(
            f"{run.path} has no EMA weights ({choice.file}): train with --ema 0.999 to keep them, or use --weights best"
        )
    if not wpath.is_file():
        raise RunError(f"{run.path} is not a finished run: {choice.file} is missing")
    built = build_model_from_card(card, model=model, where=run.path / "model.json")
    _check_contract(run, built, card)
    state = read_weights(wpath)
    load_weights_into(built, state, where=wpath)
    built.to(device).eval()
    return LoadedRun(run, built, card, weights=choice)


def _check_contract(run: RunDir, model: nn.Module, card: dict[str, Any]) -> None:
    """The model contract for a loaded run: one logit per class its model.json names."""
    from regraft import surgery
    from regraft.errors import SurgeryError

    classes = card.get("classes")
    if not isinstance(classes, list) or len(classes) != card.get("num_classes"):
        raise RunError(f"{run.path}/model.json: 'classes' does not list num_classes={card.get('num_classes')} names; "
                       "the run folder is damaged, train it again")
    try:
        surgery.check_output_width(model, num_classes=len(classes), input_size=tuple(card["preprocessing"]["input_size"]))
    except SurgeryError as exc:
        raise RunError(f"{run.path} cannot predict its {len(classes)} classes: {exc}; train it again with that fixed") from exc


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A run's safetensors file; one RunError line when it is unreadable, truncated or not finite."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    try:
        state = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for damaged headers
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise RunError(
            f"{path} is damaged ({len(data)} bytes; {reason}): it may be truncated; restore it from a backup or train the run again"
        ) from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RunError(f"{path} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}; these weights cannot predict: train again")
    return state


def load_weights_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, where: Path) -> None:
    """``model.load_state_dict(state, strict=True)`` after undoing compile/DDP key prefixes.

    Raises:
        RunError: the keys or shapes do not fit ``model`` (names ``where`` and examples).
    """
    want = model.state_dict()
    state = _strip_wrappers(dict(state), set(want))
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(want[k].shape)})")
        raise RunError(
            f"{where} does not fit the model its model.json describes: {', '.join(parts)}; "
            "the two files come from different runs: restore the pair or train again"
        )
    model.load_state_dict(state, strict=True)


def _strip_wrappers(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Keys without ``_orig_mod.`` / ``module.`` prefixes, when that is what makes them fit."""
    if set(state) <= expected or not state:
        return state
    stripped = {}
    for key, value in state.items():
        bare = key
        while bare.startswith(_PREFIXES) and bare not in expected:
            bare = bare.split(".", 1)[1]
        stripped[bare] = value
    if len(stripped) == len(state) and len(set(stripped) & expected) > len(set(state) & expected):
        log.info("weights saved from a wrapped model (torch.compile / DDP): key prefixes removed")
        return stripped
    return state


def has_ema(run: str | Path) -> bool:
    """Whether a run kept EMA weights (``model_ema.safetensors``)."""
    return (Path(run) / WeightsChoice.EMA.file).is_file()
