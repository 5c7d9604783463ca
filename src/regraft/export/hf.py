"""``--format hf``: a folder in the Hugging Face / timm layout that loads without regraft.

The folder holds ``model.safetensors`` (the state dict under the zoo's own key names),
``config.json`` and a model card ``README.md`` (the run's figures, its data, how to load it):

- **timm** runs: ``config.json`` in timm's hub layout (``architecture``, ``num_classes``,
  ``label_names``, ``pretrained_cfg`` with the run's input size, mean/std, interpolation and
  crop), so ``timm.create_model("local-dir:PATH", pretrained=True)`` rebuilds the model and
  ``timm.data.resolve_data_config(model=model)`` its preprocessing;
- **torchvision** runs: ``config.json`` names the builder and its arguments; the model card
  gives the two lines (``get_model`` + ``load_state_dict``).

Only a head the zoo's builder makes can be loaded that way: a run with hidden head layers or
surgery is refused with the reason (export ``onnx``/``exported``, which carry the module, or use
``regraft.load_run``). A head with dropout only is fine: dropout has no weights, and the
output layer's keys are renamed to the builder's (``fc.1.weight`` -> ``fc.weight``); frozen
BatchNorm layers get the ``num_batches_tracked`` counters the builder's layers expect.

Written by hand rather than with ``timm.models.save_for_hf``: that helper's signature and the
way it merges ``pretrained_cfg`` differ across the timm releases regraft supports, it writes
non-atomically and knows nothing of torchvision. Instead the folder is built in a temporary
place, **loaded back with timm (or torchvision) alone** and compared with the run's model on
random batches of 2 and 3 images, and only then written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regraft.errors import ExportError

__all__ = ["refusal", "build_folder", "CONFIG", "WEIGHTS", "README"]

CONFIG, WEIGHTS, README = "config.json", "model.safetensors", "README.md"
_SOURCE_KEYS = {"url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "tag", "license"}
# torchvision builders whose auxiliary heads regraft switches off (as zoo.build does)
_TV_EXTRA = {"inception_v3": {"aux_logits": False, "init_weights": True}, "googlenet": {"aux_logits": False, "init_weights": True}}


def refusal(card: dict[str, Any]) -> str | None:
    """Why this run cannot be written in the hf layout, or None when it can."""
    arch = card["architecture"]
    if arch["zoo"] not in ("timm", "torchvision"):
        return f"it trained a custom module ({arch['name']}), which neither timm nor torchvision can build"
    if arch.get("head_hidden"):
        return (f"its head has hidden layers (head_hidden {arch['head_hidden']}), which {arch['zoo']}'s builder does not make; "
                "rebuild it with regraft.load_run")
    if arch.get("surgery"):
        return f"surgery changed the network ({len(arch['surgery'])} operation(s)), so {arch['zoo']}'s builder no longer makes it"
    return None


def _builder(card: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The zoo's own model for this card (random weights) and how it was built."""
    arch, n = card["architecture"], int(card["num_classes"])
    if arch["zoo"] == "timm":
        import timm

        name = arch["name"].split(".", 1)[0]  # a tag names pretrained weights, not the architecture
        return timm.create_model(name, pretrained=False, num_classes=n), {"library": "timm", "name": name, "kwargs": {"num_classes": n}}
    import torchvision

    kwargs = {"num_classes": n, **_TV_EXTRA.get(arch["name"], {})}
    return torchvision.models.get_model(arch["name"], weights=None, **kwargs), {"library": "torchvision", "name": arch["name"], "kwargs": kwargs}


def _plain_state(model: nn.Module, plain: nn.Module, head: str) -> dict[str, torch.Tensor]:
    """The run's state dict under ``plain``'s key names (see the module doc for what is renamed)."""
    want = plain.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        name = key
        if key not in want and key.startswith(f"{head}."):
            index, _, param = key[len(head) + 1 :].partition(".")
            if index.isdigit() and f"{head}.{param}" in want:
                name = f"{head}.{param}"  # Sequential(Dropout, Linear) -> the builder's Linear
        out[name] = value.detach().cpu().contiguous().clone()
    for key, value in want.items():
        if key not in out and key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)  # FrozenBatchNorm2d has no counter; eval ignores it
    missing, unexpected = sorted(set(want) - set(out)), sorted(set(out) - set(want))
    if missing or unexpected:
        raise ExportError(
            f"the run's weights do not fit the plain {type(plain).__name__}: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); export onnx or exported instead"
        )
    return out


def _config(card: dict[str, Any], plain: nn.Module, built: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    pre, classes = card["preprocessing"], list(card["classes"])
    preprocessing = {
        "input_size": list(pre["input_size"]), "mean": list(pre["mean"]), "std": list(pre["std"]),
        "interpolation": "bilinear" if pre["interpolation"] == "random" else pre["interpolation"],
        "crop_pct": float(pre["crop_pct"]), "crop_mode": "center", "num_classes": len(classes),
    }
    if built["library"] == "torchvision":
        return {"library_name": "torchvision", "model_name": built["name"], "builder_kwargs": built["kwargs"],
                "num_classes": len(classes), "label_names": classes, "pretrained_cfg": preprocessing, "regraft": extra}
    source = dict(getattr(plain, "pretrained_cfg", None) or {})
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in source.items()
           if k not in _SOURCE_KEYS and v is not None and not k.startswith("test_")}
    if list(source.get("input_size") or [])[-2:] != list(pre["input_size"])[-2:]:
        cfg.pop("pool_size", None)  # the source's pooled grid no longer applies
    cfg.update(preprocessing, architecture=built["name"], custom_load=False)
    num_features = getattr(plain, "num_features", None)
    return {"architecture": built["name"], "num_classes": len(classes), **({"num_features": num_features} if isinstance(num_features, int) else {}),
            "label_names": classes, "pretrained_cfg": cfg, "regraft": extra}


def _reload(folder: Path, built: dict[str, Any]) -> tuple[nn.Module, str]:
    """The folder loaded back with timm or torchvision alone, as the model card tells users to."""
    from safetensors.torch import load_file

    if built["library"] == "torchvision":
        import torchvision

        model = torchvision.models.get_model(built["name"], weights=None, **built["kwargs"])
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
        return model.eval(), "torchvision.models.get_model + load_state_dict"
    import timm

    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval(), "timm.create_model('local-dir:PATH', pretrained=True)"
    except (ValueError, RuntimeError) as exc:
        if "local-dir" not in str(exc) and "Unknown model" not in str(exc):
            raise
    # timm before local-dir folders: the same weights through pretrained_cfg_overlay (its
    # num_classes too: otherwise timm drops a classifier whose size differs from the source's)
    n = built["kwargs"]["num_classes"]
    model = timm.create_model(built["name"], pretrained=True, num_classes=n, pretrained_cfg_overlay={"file": str(folder / WEIGHTS), "num_classes": n})
    return model.eval(), "timm.create_model(ARCH, pretrained=True, num_classes=N, pretrained_cfg_overlay=dict(file=..., num_classes=N))"


def build_folder(card: dict[str, Any], model: nn.Module, *, extra: dict[str, Any], atol: float) -> tuple[dict[str, bytes], float, dict[str, Any]]:
    """The hf folder's weights and config as bytes, checked by loading them back with timm or
    torchvision alone (the model card is the caller's: it reports ``details``).

    Args:
        card: the run's ``model.json``; model: the run's model, in eval mode on the CPU.
        extra: what ``config.json`` records under ``"regraft"``; atol: the largest logit difference accepted.

    Returns:
        ``(files, max_abs_diff, details)``: file name -> bytes, the largest logit difference
        between the reloaded model and the run's, and ``library``, ``architecture``,
        ``builder_kwargs``, ``loaded_with``.

    Raises:
        ExportError: the run cannot be written in this layout (the reason), or the reloaded
            model differs from the run's by more than ``atol``.
    """
    from safetensors.torch import save

    from regraft.export import formats

    reason = refusal(card)
    if reason:
        raise ExportError(f"--format hf cannot write this run: {reason}; use --format onnx or exported (they carry the module)")
    plain, built = _builder(card)
    state = _plain_state(model, plain, card["architecture"].get("head") or "")
    config = _config(card, plain, built, extra)
    files = {
        WEIGHTS: save(state, metadata={"format": "pt"}),
        CONFIG: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
    }
    input_size = tuple(int(v) for v in card["preprocessing"]["input_size"])
    with tempfile.TemporaryDirectory(prefix="regraft-hf-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            reloaded, how = _reload(Path(tmp), built)
        except Exception as exc:
            text = " ".join(str(exc).split())[:200]
            raise ExportError(f"the hf folder does not load back with {built['library']} ({type(exc).__name__}: {text}); export onnx instead") from exc
        diff = formats.max_abs_diff(model, reloaded, fmt="hf", input_size=input_size)
    if not diff <= atol:
        raise ExportError(
            f"the hf folder loaded by {built['library']} differs from the run's model by up to {diff:.3g} in the logits, "
            f"more than atol {atol:g}; nothing was written"
        )
    return files, diff, {"library": built["library"], "architecture": built["name"], "builder_kwargs": built["kwargs"], "loaded_with": how}
