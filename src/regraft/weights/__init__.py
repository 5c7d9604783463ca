"""Weights from anywhere: safe loading, key matching that can't fail silently, and a load report.

:func:`load_weights` reads a checkpoint from any source (``DEFAULT``, a torchvision enum name,
a timm/Hugging Face hub tag, a local file, a URL, or a state dict), matches its tensors to the
model's keys in a fixed order (exact names after removing wrappers and a prefix change that
fits nearly everything, rename rules, position, shape adaptation, ``--skip``), loads what fits
and returns a :class:`LoadReport`. A name match whose neighbours clash is refused, and a
classifier of the right size is withheld unless its classes are known to be the caller's.
:func:`check_coverage` refuses a load that filled too little of the trunk. See docs/weights.md.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    >>> report = load_weights(net, {"module." + k: v for k, v in net.state_dict().items()}, head="2")
    >>> report.coverage, str(report.head_status)
    (1.0, 'replaced')
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regraft.errors import RegraftError, WeightsError
from regraft.weights._head import head_outcome, keeps_meaning, run_classes
from regraft.weights._matching import adapt_conv, match_state_dict
from regraft.weights._rename import parse_rules
from regraft.weights._report import HeadStatus, LoadReport, check_coverage
from regraft.weights._safe_load import read_file, unwrap_state_dict
from regraft.weights._sources import is_none, is_pretrained, locate, sha256_of
from regraft.zoo import ModelRef

__all__ = ["load_weights", "read_state_dict", "LoadReport", "HeadStatus", "check_coverage", "adapt_conv", "is_pretrained"]

log = logging.getLogger(__name__)

Source = str | Path | Mapping[str, Any] | nn.Module


def read_state_dict(
    source: Source, *, trust_checkpoint: bool = False, arch: ModelRef | str | None = None,
    sha256: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read weights from any source into a flat ``{name: Tensor}`` dict (names as in the file).

    Args:
        source: a path, URL, hub tag, weights name (with ``arch``), a loaded checkpoint or module.
        trust_checkpoint: allow unpickling objects other than tensors (only for trusted files).
        arch: the architecture, for ``DEFAULT`` and enum names.
        sha256: the expected hash of the file.

    Returns:
        The tensors, unwrapped from ``state_dict``/``model``/... containers.

    Raises:
        UnsafeCheckpointError: the file needs ``trust_checkpoint=True``.
        WeightsError: the source cannot be found, fetched or read.

    Example:
        >>> read_state_dict({"state_dict": {"w": torch.zeros(2)}})["w"].shape
        torch.Size([2])
    """
    tensors, _, _, _ = _read(source, trust_checkpoint=trust_checkpoint, arch=_as_ref(arch), sha256=sha256)
    return tensors


def _read(
    source: Source, *, trust_checkpoint: bool, arch: ModelRef | None, sha256: str | None,
) -> tuple[dict[str, torch.Tensor], str, str | None, Path | None]:
    """(tensors, where they came from, their container, the local file when there is one)."""
    if isinstance(source, (Mapping, nn.Module)):
        tensors, container = unwrap_state_dict(source, where="the given state dict")
        return tensors, "<state dict>", container, None
    located = locate(str(source), arch=arch, sha256=sha256)
    if sha256 and not located.verified:
        actual = sha256_of(located.path)
        if actual != sha256.lower():
            raise WeightsError(f"{located.path}: sha256 is {actual}, expected {sha256.lower()}; check the file or the --sha256 value")
    obj = read_file(located.path, trust_checkpoint=trust_checkpoint)
    tensors, container = unwrap_state_dict(obj, where=str(located.path))
    return tensors, located.description, container, located.path


def load_weights(
    model: nn.Module,
    source: Source,
    *,
    arch: ModelRef | str | None = None,
    rename: Mapping[str, str] | Iterable[str] | None = None,
    skip: Iterable[str] | str | None = None,
    trust_checkpoint: bool = False,
    sha256: str | None = None,
    head: str | None = None,
    adapt_first_conv: bool = True,
    min_coverage: float | None = None,
    keep_head: bool = False,
    classes: Sequence[str] | None = None,
) -> LoadReport:
    """Load pretrained weights into ``model`` in place, matching keys and reporting every decision.

    Args:
        model: the module to fill (a ``torch.compile`` or DataParallel wrapper is looked through).
        source: ``none``, ``DEFAULT``, an enum name (``IMAGENET1K_V2``,
            ``ResNet50_Weights.IMAGENET1K_V2``), ``timm/NAME.TAG``, ``hf-hub:ORG/NAME``, a local
            ``.pth/.pt/.bin/.ckpt/.safetensors`` file, an http(s)/file URL, or a state dict.
        arch: the architecture for ``DEFAULT``/enum names; defaults to ``model.regraft_ref``.
        rename: ``OLD=NEW`` rules (literal paths, ``{}`` number placeholders or regexes).
        skip: globs of checkpoint or model keys to leave out (``fc`` skips ``fc.*``).
        trust_checkpoint: allow unpickling arbitrary objects (only for files you trust).
        sha256: the expected hash of the weights file.
        head: dotted path of the classifier, excluded from coverage and allowed to differ in class
            count; None asks :func:`regraft.surgery.find_head`; ``""`` means no head.
        adapt_first_conv: adapt the first conv to a different number of input channels.
        min_coverage: when given, call :func:`check_coverage` before returning.
        keep_head: load the checkpoint's classifier into the head when it fits (its classes are
            yours). Otherwise a classifier of the right size is withheld, because what its
            outputs mean is unknown, and ``report.head_status`` says ``replaced``.
        classes: your class names in order; weights from a regraft run (its folder, or its
            ``model.safetensors`` with ``model.json`` beside it) trained on exactly these keep
            their head without ``keep_head``.

    Returns:
        The :class:`LoadReport`.

    Raises:
        WeightsError: the source cannot be found, fetched or read, a rule is malformed, or
            ``keep_head`` was asked but the checkpoint's classifier does not fill the head.
        UnsafeCheckpointError: the file needs ``trust_checkpoint=True``.
        CoverageError: ``min_coverage`` was given and not reached.
    """
    target = _unwrap_model(model)
    ref = _as_ref(arch) or getattr(model, "regraft_ref", None) or getattr(target, "regraft_ref", None)
    rules = parse_rules(rename)
    globs = [skip] if isinstance(skip, str) else list(skip or [])
    head_path, head_note = _head_path(target, head)
    label = "<state dict>" if isinstance(source, (Mapping, nn.Module)) else str(source)
    if isinstance(source, (str, Path)) and is_none(str(source)):
        tensors, resolved, container, path = {}, "no weights", None, None
    else:
        tensors, resolved, container, path = _read(source, trust_checkpoint=trust_checkpoint, arch=ref, sha256=sha256)
    run = run_classes(path)
    state = target.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    counters = {k for k, v in state.items() if not v.is_floating_point()}
    matched = match_state_dict(
        tensors, shapes, head=head_path, rules=rules, skip=globs,
        first_conv=_first_conv(target, shapes), adapt_first_conv=adapt_first_conv, counters=counters,
        keep_head=keeps_meaning(keep_head=keep_head, run=run, classes=classes),
    )
    head_keys = [k for k in shapes if head_path and k not in counters and (k == head_path or k.startswith(head_path + "."))]
    status, reason = (HeadStatus.NONE, "no weights loaded") if not tensors else head_outcome(
        matched, head=head_path, head_keys=head_keys, keep_head=keep_head, run=run, classes=classes,
    )
    if matched.assign:
        with torch.no_grad():
            target.load_state_dict(matched.assign, strict=False)
    report = _report(target, matched, label=label, resolved=resolved, container=container, head=head_path)
    report.checkpoint_tensors = len(tensors)
    report.head_status, report.head_reason = status, reason
    if head_note:
        report.notes.append(head_note)
    log.info("%s", report.summary())
    if min_coverage is not None:
        check_coverage(report, min_coverage=min_coverage)
    return report


def _report(target: nn.Module, matched: Any, *, label: str, resolved: str, container: str | None, head: str | None) -> LoadReport:
    assigned = set(matched.assign)
    params = list(target.named_parameters(remove_duplicate=False))
    loaded_ids = {id(p) for name, p in params if name in assigned}
    aliases = {name for name, p in params if id(p) in loaded_ids}  # tied weights count once
    total = done = 0
    seen: set[int] = set()
    for name, p in params:
        if id(p) in seen or (head and (name == head or name.startswith(head + "."))):
            continue
        seen.add(id(p))
        total += p.numel()
        done += p.numel() if id(p) in loaded_ids else 0
    missing = [k for k in target.state_dict() if k not in assigned and k not in aliases and not k.endswith("num_batches_tracked")]
    return LoadReport(
        source=label, resolved=resolved, container=container, loaded=matched.loaded, renamed=matched.renamed,
        matched_by_position=matched.matched_by_position, adapted=matched.adapted, skipped=matched.skipped,
        mismatched=matched.mismatched, missing=missing, unexpected=matched.unexpected,
        coverage=(done / total) if total else (1.0 if assigned else 0.0), head=head,
        trunk_params=total, trunk_params_loaded=done, prefixes=matched.prefixes, notes=matched.notes,
    )


def _as_ref(arch: ModelRef | str | None) -> ModelRef | None:
    if arch is None or isinstance(arch, ModelRef):
        return arch
    from regraft import zoo

    return zoo.resolve(arch)


def _unwrap_model(model: nn.Module) -> nn.Module:
    inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(inner, nn.Module):
        model = inner
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _head_path(model: nn.Module, head: str | None) -> tuple[str | None, str | None]:
    """The classifier's path and, when it had to be guessed, a note saying so."""
    modules = dict(model.named_modules())
    if head is not None:
        if head and head not in modules:
            raise WeightsError(f"head '{head}' is not a module of the model; pass the classifier's dotted path (e.g. fc, classifier.6, head.fc)")
        return head or None, None
    try:
        from regraft.surgery import find_head
    except ImportError:
        find_head = None
    if find_head is not None:
        try:
            return find_head(model), None
        except RegraftError as exc:
            return None, f"no classifier head found ({exc}); coverage counts every parameter"
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(name, str) and name in modules:
        return name, f"head taken from timm's pretrained config: {name}"
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1], f"head guessed as the last nn.Linear: {linears[-1]}"
    return None, "no classifier head found; coverage counts every parameter"


def _first_conv(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """State-dict key of the first convolution's weight (:func:`regraft.zoo.first_conv`: timm's
    pretrained config names it, else the first convolution the module registers)."""
    from regraft.zoo import first_conv

    path = first_conv(model)
    return f"{path}.weight" if path is not None and f"{path}.weight" in shapes else None
