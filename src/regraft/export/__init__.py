"""Export a finished run: ONNX, TorchScript, ``torch.export``, safetensors, or an hf folder.

Each export is checked before it is written: random batches of 2 and 3 images go through the
eager model and through the export loaded back (onnxruntime for ONNX), and the largest absolute
difference in the logits is returned; above ``atol`` nothing is written and :class:`ExportError`
says by how much. Beside the file goes ``<stem>.json`` (``model.json`` by default): the run's
model card (architecture, classes, input size, mean/std, interpolation, crop) plus an
``exports`` entry per format written to that folder (file name, format, the difference found).

An exported ONNX file runs without torch: :func:`predict_onnx` (and ``regraft predict
model.onnx IMAGES``) use onnxruntime, numpy and Pillow only. onnx and onnxruntime come with the
optional extra: ``pip install 'regraft[export]'``. ``hf`` writes a folder that timm (or
torchvision) loads without regraft (:mod:`regraft.export.hf`).

Exports are single-view float32 models: test-time augmentation is not part of them (the entry
in ``model.json`` says ``"views": 1``). An export never writes over another run's files
(:mod:`regraft.export.targets`).

Example:
    >>> result = export("runs/exp1", format="onnx")          # doctest: +SKIP
    >>> result.path, result.max_abs_diff                      # doctest: +SKIP
    (PosixPath('runs/exp1/export/model.onnx'), 1.9e-06)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regraft.errors import ConfigError, ExportError
from regraft.export.runtime import OnnxClassifier, load_onnx, predict_onnx, require, sidecar_path
from regraft.export.targets import HF_MARKER_KEY, check_target, write_bytes

if TYPE_CHECKING:
    from torch import nn

    from regraft.inference import LoadedRun

__all__ = [
    "DEFAULT_ATOL",
    "ExportFormat",
    "ExportResult",
    "OnnxClassifier",
    "export",
    "load_onnx",
    "predict_onnx",
    "sidecar_path",
]

log = logging.getLogger(__name__)

# Logits of float32 models differ by ~1e-5 between eager PyTorch and onnxruntime's fused kernels
# at ImageNet scale; a wrong export differs by orders of magnitude more.
DEFAULT_ATOL = 1e-3


class ExportFormat(str, Enum):
    """The formats :func:`export` writes; ``extensions[0]`` names the default file."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    EXPORTED = "exported"
    SAFETENSORS = "safetensors"
    HF = "hf"

    @property
    def extensions(self) -> tuple[str, ...]:
        """File extensions of the format (none for ``hf``, which writes a folder)."""
        return _EXTENSIONS[self]

    @classmethod
    def parse(cls, value: str | ExportFormat) -> ExportFormat:
        """``"onnx"`` -> ``ExportFormat.ONNX``; ConfigError listing the formats otherwise."""
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ConfigError(
                f"export format must be one of {', '.join(f.value for f in cls)}; got '{value}'"
            ) from None


_EXTENSIONS = {
    ExportFormat.ONNX: (".onnx",),
    ExportFormat.TORCHSCRIPT: (".pt", ".ts", ".torchscript"),
    ExportFormat.EXPORTED: (".pt2",),
    ExportFormat.SAFETENSORS: (".safetensors",),
    ExportFormat.HF: (),
}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and how closely the export matched the eager model.

    For ``hf``, ``path`` is the folder and ``model_json`` its ``config.json``.
    """

    path: Path
    model_json: Path
    format: ExportFormat
    max_abs_diff: float
    atol: float
    batch_sizes: tuple[int, ...]
    details: dict[str, Any] = field(default_factory=dict)


def export(
    run: str | Path | LoadedRun,
    *,
    format: str | ExportFormat = ExportFormat.ONNX,  # shadows the builtin: the word users know from --format
    out: str | Path | None = None,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    weights: str = "best",
) -> ExportResult:
    """Export a run's model, check it against eager PyTorch, write it and its ``model.json``.

    Args:
        run: a run folder, or a :class:`~regraft.inference.LoadedRun` (e.g. ``load_run(RUN, model=MyNet())``
            for a run of your own module).
        format: ``onnx``, ``torchscript``, ``exported`` (``torch.export``, ``.pt2``),
            ``safetensors`` or ``hf`` (a folder timm/torchvision load without regraft).
        out: the file to write, or a folder to write ``model.<ext>`` into
            (default ``RUN/export/model.<ext>``; for ``hf`` the folder, default ``RUN/export/hf``).
            Never a run folder, nor a folder inside another run.
        opset: ONNX opset (default: the exporter's); ONNX only.
        atol: the largest absolute logit difference accepted.
        weights: ``best`` or ``ema`` (ignored when ``run`` is already loaded).

    Returns:
        An :class:`ExportResult` (file, ``model.json``, the largest difference found).

    Raises:
        ConfigError: unknown format, an ``out`` with another format's extension, a bad opset/atol.
        MissingDependencyError: ONNX without onnx/onnxruntime installed.
        RunError: ``run`` is not a finished run, one of its files is damaged, or it has no EMA weights.
        ExportError: the exporter failed, the export differs from eager by more than ``atol``,
            ``out`` belongs to a run, or it cannot be written.

    Example:
        >>> export("runs/exp1", format="torchscript", out="deploy/clf.pt")   # doctest: +SKIP
    """
    # torch (through regraft.inference) only from here on: predict_onnx must run without it
    from regraft.inference import LoadedRun, load_run

    fmt = ExportFormat.parse(format)
    _check_options(fmt, opset=opset, atol=atol)
    run_path = run.run.path if isinstance(run, LoadedRun) else Path(run)
    target = _target_path(run_path, fmt, out)
    check_target(target if fmt is ExportFormat.HF else target.parent, run_path=run_path)
    if fmt is ExportFormat.HF:
        _check_hf_folder(target)
    if fmt is ExportFormat.ONNX:
        require("onnx", "onnxruntime", "onnxscript", purpose="--format onnx")
    import torch

    from regraft.export import formats as formats

    loaded = run if isinstance(run, LoadedRun) else load_run(run, device="cpu", weights=weights)
    if fmt is ExportFormat.HF:
        return _export_hf(loaded, target, atol=atol)
    input_size = tuple(int(v) for v in loaded.card["preprocessing"]["input_size"])
    example = torch.randn(formats.BATCH_SIZES[0], *input_size, generator=torch.Generator().manual_seed(1))
    with _eval_on_cpu(loaded.model) as model:
        serialised = formats.serialise(model, fmt.value, example=example, opset=opset, card=loaded.card)
        runner = formats.reload(fmt.value, serialised.data, model=model)
        diff = formats.max_abs_diff(model, runner, fmt=fmt.value, input_size=input_size)
    if not diff <= atol:
        raise ExportError(
            f"the {fmt.value} export differs from eager PyTorch by up to {diff:.3g} in the logits, "
            f"more than atol {atol:g}; nothing was written (pass a larger atol / --atol if that is expected)"
        )
    write_bytes(target, serialised.data)
    entry = _export_entry(target, fmt, serialised, diff=diff, atol=atol, batch_sizes=formats.BATCH_SIZES)
    entry["weights"] = str(loaded.weights)
    card_path = _write_sidecar(target, loaded.card, fmt, entry)
    log.info("exported %s to %s (max abs diff %.3g)", fmt.value, target, diff)
    return ExportResult(target, card_path, fmt, diff, atol, tuple(formats.BATCH_SIZES), dict(serialised.details))


def _check_options(fmt: ExportFormat, *, opset: int | None, atol: float) -> None:
    if opset is not None and fmt is not ExportFormat.ONNX:
        raise ConfigError(f"opset {opset} applies to the onnx format only; drop --opset for --format {fmt.value}")
    if opset is not None and not 7 <= opset <= 30:
        raise ConfigError(f"opset must be an ONNX opset version between 7 and 30; got {opset}")
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise ConfigError(f"atol must be a number >= 0; got {atol!r}")


def _target_path(run_path: Path, fmt: ExportFormat, out: str | Path | None) -> Path:
    """Where the export goes: ``out`` (a file, or a folder for ``model.<ext>``) or RUN/export."""
    if fmt is ExportFormat.HF:
        return Path(out) if out is not None else run_path / "export" / "hf"
    default_name = f"model{fmt.extensions[0]}"
    if out is None:
        return run_path / "export" / default_name
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", "\\")):
        return path / default_name
    if path.suffix.lower() not in fmt.extensions:
        want = " or ".join(fmt.extensions)
        raise ConfigError(
            f"--out {out}: a {fmt.value} export is written to a {want} file; pass --out {path.with_suffix(fmt.extensions[0])}"
        )
    return path


@contextmanager
def _eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """The model on the CPU in eval mode: a copy when it lives elsewhere; the caller's mode is restored."""
    import copy

    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    target = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = target.training
    try:
        yield target.eval()
    finally:
        target.train(was_training)


def _export_entry(target: Path, fmt: ExportFormat, serialised: Any, *, diff: float, atol: float, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    import torch

    from regraft._version import __version__

    return {
        "file": target.name,
        "format": fmt.value,
        "sha256": hashlib.sha256(serialised.data).hexdigest(),
        "max_abs_diff": diff,
        "atol": atol,
        "checked_batch_sizes": list(batch_sizes),
        "views": 1,  # single-view: test-time augmentation is not part of an export
        **serialised.details,
        "torch": torch.__version__,
        "regraft": __version__,
    }


def _write_sidecar(target: Path, card: dict[str, Any], fmt: ExportFormat, entry: dict[str, Any]) -> Path:
    """Write ``<stem>.json``: the run's card plus ``exports``; entries for the same model are kept."""
    path = sidecar_path(target)
    base = {k: v for k, v in card.items() if k != "exports"}
    exports: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        # another run's card in the same place is replaced, not merged
        if isinstance(old, dict) and {k: v for k, v in old.items() if k != "exports"} == base:
            exports = dict(old.get("exports") or {})
    exports[fmt.value] = entry
    return write_bytes(path, (json.dumps({**base, "exports": exports}, indent=2) + "\n").encode("utf-8"))


def _check_hf_folder(folder: Path) -> None:
    """An hf export goes into a new or empty folder, or replaces an earlier hf export of regraft."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"--out {folder} is a file; --format hf writes a folder: pass a folder path")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    from regraft.export.hf import CONFIG

    try:
        earlier = json.loads((folder / CONFIG).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and HF_MARKER_KEY in earlier):
        raise ExportError(
            f"--out {folder} already holds other files; --format hf writes config.json, model.safetensors and README.md "
            "into a folder of their own: pass a new or empty folder"
        )


def _export_hf(loaded: LoadedRun, folder: Path, *, atol: float) -> ExportResult:
    from regraft._version import __version__
    from regraft.errors import RunError
    from regraft.export import hf
    from regraft.export.formats import BATCH_SIZES
    from regraft.export.model_card import model_card
    from regraft.inference.card import read_run_json

    extra = {"format": "regraft-hf/1", "run": str(loaded.run.path), "weights": str(loaded.weights), "views": 1,
             "architecture": loaded.card["architecture"], "preprocessing": loaded.card["preprocessing"], "regraft": __version__,
             "task": loaded.card.get("task", "multiclass")}
    if loaded.card.get("thresholds") is not None:  # multi-label: what predicts a label, in label order
        extra["thresholds"] = list(loaded.card["thresholds"])
    with _eval_on_cpu(loaded.model) as model:
        files, diff, details = hf.build_folder(loaded.card, model, extra=extra, atol=atol)
    try:
        summary = read_run_json(loaded.run, "summary.json")
    except RunError:
        summary = None
    readme = model_card(loaded, details=details, summary=summary if isinstance(summary, dict) else None,
                        diff=diff, run_name=loaded.run.path.resolve().name)
    files[hf.README] = readme.encode("utf-8")
    for name, data in files.items():
        write_bytes(folder / name, data)
    log.info("exported hf folder %s (max abs diff %.3g)", folder, diff)
    details = {**details, "files": sorted(files), "views": 1, "weights": str(loaded.weights)}
    return ExportResult(folder, folder / hf.CONFIG, ExportFormat.HF, diff, atol, tuple(BATCH_SIZES), details)
