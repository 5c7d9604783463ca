"""``--format hf``: a folder in the Hugging Face / timm layout that loads without regraft.

The folder holds ``model.safetensors`` (the state dict under the zoo's own key names),
``config.json`` and a model card ``README.md`` (the run's figures, its data, how to load it):

- **timm** runs: ``config.json`` in timm's hub layout (``architecture``, ``num_classes``,
  ``label_names``, ``pretrained_cfg`` with the run's input size, mean/std, interpolation and
  crop; ``model_args: {"in_chans": N}`` for a run of N input channels), so
  ``timm.create_model("local-dir:PATH", pretrained=True)`` rebuilds the model and
  ``timm.data.resolve_data_config(model=model)`` its preprocessing;
- **torchvision** runs: ``config.json`` names the builder and its arguments; the model card
  gives the two lines (``get_model`` + ``load_state_dict``), and for N input channels the line
  in between that gives the builder's first convolution N channels (``first_conv`` in
  ``config.json``).

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
    channels = int(card["preprocessing"]["input_size"][0])
    if arch["zoo"] == "timm":
        import timm

        name = arch["name"].split(".", 1)[0]  # a tag names pretrained weights, not the architecture
        kwargs = {"num_classes": n, **({"in_chans": channels} if channels != 3 else {})}
        return timm.create_model(name, pretrained=False, **kwargs), {"library": "timm", "name": name, "kwargs": kwargs}
    import torchvision

    kwargs = {"num_classes": n, **_TV_EXTRA.get(arch["name"], {})}
    model = torchvision.models.get_model(arch["name"], weights=None, **kwargs)
    built = {"library": "torchvision", "name": arch["name"], "kwargs": kwargs}
    if channels != 3:
        built["first_conv"] = _first_conv_for(model, channels)
    return model, built


def _first_conv_for(model: nn.Module, channels: int) -> dict[str, Any]:
    """Give a torchvision model's first convolution ``channels`` inputs (in place, as regraft's
    zoo does) and say how, as data and as the line of Python the model card shows."""
    from regraft.zoo import first_conv

    path = first_conv(model)
    conv = model.get_submodule(path)
    args = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
            "bias": conv.bias is not None}
    _set_conv(model, path, nn.Conv2d(channels, conv.out_channels, **args))
    target = "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))
    code = f"{target} = torch.nn.Conv2d({channels}, {conv.out_channels}, " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    return {"path": path, "in_channels": channels, "out_channels": conv.out_channels,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}, "code": code}


def _set_conv(model: nn.Module, path: str, conv: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, conv)


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
        conv = {k: v for k, v in built.get("first_conv", {}).items() if k != "code"}
        return {"library_name": "torchvision", "model_name": built["name"], "builder_kwargs": built["kwargs"],
                **({"first_conv": conv} if conv else {}),
                "num_classes": len(classes), "label_names": classes, "pretrained_cfg": preprocessing, "regraft": extra}
    source = dict(getattr(plain, "pretrained_cfg", None) or {})
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in source.items()
           if k not in _SOURCE_KEYS and v is not None and not k.startswith("test_")}
    if list(source.get("input_size") or [])[-2:] != list(pre["input_size"])[-2:]:
        cfg.pop("pool_size", None)  # the source's pooled grid no longer applies
    cfg.update(preprocessing, architecture=built["name"], custom_load=False)
    num_features = getattr(plain, "num_features", None)
    model_args = {"in_chans": built["kwargs"]["in_chans"]} if "in_chans" in built["kwargs"] else {}
    return {"architecture": built["name"], "num_classes": len(classes), **({"num_features": num_features} if isinstance(num_features, int) else {}),
            **({"model_args": model_args} if model_args else {}),  # timm passes them to the builder
            "label_names": classes, "pretrained_cfg": cfg, "regraft": extra}


def _reload(folder: Path, built: dict[str, Any]) -> tuple[nn.Module, str]:
    """The folder loaded back with timm or torchvision alone, as the model card tells users to."""
    from safetensors.torch import load_file

    if built["library"] == "torchvision":
        import torchvision

        model = torchvision.models.get_model(built["name"], weights=None, **built["kwargs"])
        how = "torchvision.models.get_model + load_state_dict"
        conv = built.get("first_conv")
        if conv:  # the model card's line in between
            _set_conv(model, conv["path"], nn.Conv2d(conv["in_channels"], conv["out_channels"], kernel_size=tuple(conv["kernel_size"]),
                                                     stride=tuple(conv["stride"]), padding=tuple(conv["padding"]),
                                                     dilation=tuple(conv["dilation"]), bias=conv["bias"]))
            how = "torchvision.models.get_model + a first conv of the run's channels + load_state_dict"
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
        return model.eval(), how
    import timm

    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval(), "timm.create_model('local-dir:PATH', pretrained=True)"
    except (ValueError, RuntimeError) as exc:
        if "local-dir" not in str(exc) and "Unknown model" not in str(exc):
            raise
    # timm before local-dir folders: the same weights through pretrained_cfg_overlay (its
    # num_classes too: otherwise timm drops a classifier whose size differs from the source's)
    kwargs = dict(built["kwargs"])
    overlay = {"file": str(folder / WEIGHTS), "num_classes": kwargs["num_classes"]}
    if "in_chans" in kwargs:  # the file's first conv already has the run's channels: no adaptation
        overlay["input_size"] = (kwargs["in_chans"], *json.loads((folder / CONFIG).read_text())["pretrained_cfg"]["input_size"][1:])
    model = timm.create_model(built["name"], pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
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
    details = {"library": built["library"], "architecture": built["name"], "builder_kwargs": built["kwargs"], "loaded_with": how}
    if built.get("first_conv"):
        details["first_conv_code"] = built["first_conv"]["code"]
    return files, diff, details
