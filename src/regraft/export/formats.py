"""Each export format: turn an eval-mode model into bytes, load those bytes back, compare with eager.

Every format is serialised to bytes in memory and checked *before* anything is written, so a
failed or mismatching export never leaves a file behind. The check feeds random batches of
:data:`BATCH_SIZES` images (two different sizes, which proves the batch axis is dynamic) through
the eager model and the reloaded export and returns the largest absolute difference.

Choices, and why:

- ONNX uses the ``torch.export``-based exporter (the default since PyTorch 2.9) with a symbolic
  batch dimension; models it cannot capture (data-dependent control flow) fall back to the
  TorchScript-based exporter with ``dynamic_axes``, and the file records which one ran.
- TorchScript uses ``torch.jit.trace``: it accepts every timm and torchvision classifier that
  runs on a fixed-size image, where ``torch.jit.script`` rejects many timm models. A trace
  freezes Python control flow, which the check at two batch sizes guards against.
- ``exported`` is ``torch.export.export`` with the same symbolic batch dimension, saved as ``.pt2``.
- safetensors holds the state dict; the model card rides along in the file's metadata.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from regraft.errors import ExportError

__all__ = ["BATCH_SIZES", "INPUT_NAME", "OUTPUT_NAME", "Serialised", "serialise", "reload", "max_abs_diff"]

log = logging.getLogger(__name__)

BATCH_SIZES = (2, 3)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_BATCH = 65536  # upper bound of the symbolic batch dimension; torch.export needs one

Runner = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class Serialised:
    """An export in memory: the file's bytes and what to record about how it was made."""

    data: bytes
    details: dict[str, Any] = field(default_factory=dict)


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def _onnx(model: nn.Module, example: torch.Tensor, *, opset: int | None, card: dict[str, Any]) -> Serialised:
    import onnx

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if opset is not None:
        names["opset_version"] = opset
    try:
        # the exporter reports its progress on stdout; the library never prints
        with contextlib.redirect_stdout(io.StringIO()) as chatter:
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: _batch_dim()},), verbose=False, **names)
        log.debug("torch.onnx: %s", chatter.getvalue().strip())
        data, exporter = program.model_proto.SerializeToString(), "torch.export"
    except Exception as exc:  # noqa: BLE001 - any capture failure gets the older exporter
        log.warning("the torch.export-based ONNX exporter failed (%s); falling back to the TorchScript-based one", _short(exc))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), buf, dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)
        data, exporter = buf.getvalue(), "torchscript"
    proto = onnx.load_from_string(data)
    used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return Serialised(data, {"exporter": exporter, "opset": used, "input": INPUT_NAME, "output": OUTPUT_NAME, "dynamic_batch": True})


def _torchscript(model: nn.Module, example: torch.Tensor, *, opset: int | None, card: dict[str, Any]) -> Serialised:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for w in tracer:
        log.debug("trace: %s", w.message)
    return Serialised(buf.getvalue(), {"method": "trace", "tracer_warnings": len(tracer)})


def _exported(model: nn.Module, example: torch.Tensor, *, opset: int | None, card: dict[str, Any]) -> Serialised:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return Serialised(buf.getvalue(), {"dynamic_batch": True})


def _safetensors(model: nn.Module, example: torch.Tensor, *, opset: int | None, card: dict[str, Any]) -> Serialised:
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage (tied weights)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "regraft_card": json.dumps({k: v for k, v in card.items() if k != "exports"})}
    return Serialised(save(state, metadata=meta), {"tensors": len(state)})


_WRITERS = {"onnx": _onnx, "torchscript": _torchscript, "exported": _exported, "safetensors": _safetensors}


def serialise(model: nn.Module, fmt: str, *, example: torch.Tensor, opset: int | None, card: dict[str, Any]) -> Serialised:
    """``model`` (eval mode, CPU) in format ``fmt`` as bytes.

    Raises:
        ExportError: the exporter failed; the message names the format and the cause.
    """
    try:
        with torch.no_grad():
            return _WRITERS[fmt](model, example, opset=opset, card=card)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"{fmt} export of {card['architecture']['name']} failed ({_short(exc)}); "
            "try another --format (safetensors always works), or run with --debug for the traceback"
        ) from exc


def reload(fmt: str, data: bytes, *, model: nn.Module) -> Runner:
    """Load an export back from its bytes: a function from an input batch to logits.

    ``model`` is the eager model; safetensors weights are loaded into a copy of it (strict).
    """
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format asked for
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
    if fmt == "exported":
        return torch.export.load(io.BytesIO(data)).module()
    from safetensors.torch import load

    twin = copy.deepcopy(model)
    twin.load_state_dict(load(data), strict=True)
    return twin.eval()


def max_abs_diff(model: nn.Module, runner: Runner, *, fmt: str, input_size: tuple[int, int, int], seed: int = 0) -> float:
    """The largest absolute logit difference between ``model`` and ``runner`` on random batches.

    Raises:
        ExportError: the export gives another output shape (a batch axis frozen at export time)
            or fails to run.
    """
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in BATCH_SIZES:
        x = torch.randn(n, *input_size, generator=gen)
        with torch.no_grad():
            want = _as_array(model(x), what="the eager model")
            try:
                got = _as_array(runner(x), what=f"the {fmt} export")
            except Exception as exc:
                raise ExportError(f"the {fmt} export does not run on a batch of {n} ({_short(exc)}); its batch axis may be fixed") from exc
        if got.shape != want.shape:
            raise ExportError(
                f"the {fmt} export returns shape {tuple(got.shape)} for a batch of {n}, eager PyTorch {tuple(want.shape)}: "
                "its batch axis is not dynamic; try another --format"
            )
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = max(worst, float(diff.max()) if np.isfinite(diff).all() else float("inf"))
    return worst


def _as_array(out: Any, *, what: str) -> np.ndarray:
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu().numpy()
    if isinstance(out, np.ndarray):
        return out
    raise ExportError(f"{what} returns {type(out).__name__}, expected one tensor of logits; export a model whose forward returns logits")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"
