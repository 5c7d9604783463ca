"""The model card (``README.md``) of an hf export: the run's figures, its data, how to load it.

Figures come from the run's ``summary.json`` (single view, fp32: what ``regraft eval RUN``
reproduces); a run without one says so rather than inventing numbers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _figures(summary: dict[str, Any] | None, weights: str) -> list[str]:
    if not summary:
        return ["The run has no `summary.json` (it did not finish training), so no figures are reported."]
    lines = []
    if weights == "ema":
        lines += ["The figures below are those of the best epoch's weights; the EMA weights' validation accuracy "
                  "per epoch is in the run's `metrics.csv` (`val_acc_ema`).", ""]
    primary = str(summary.get("primary") or "val_acc")
    name = "mAP" if primary == "val_map" else "accuracy"
    lines += [
        "| figure | value |",
        "| --- | --- |",
        f"| validation {name} (best epoch {summary.get('best_epoch', '—')}) | {_fmt(summary.get(f'best_{primary}'))} |",
        f"| validation loss | {_fmt(summary.get('best_val_loss'))} |",
        f"| epochs trained | {summary.get('epochs', '—')} (linear-probe epochs: {summary.get('probe_epochs', 0)}) |",
        f"| training / validation images | {summary.get('n_train', '—')} / {summary.get('n_val', '—')} |",
        f"| trainable / total parameters | {summary.get('trainable_params', '—')} / {summary.get('total_params', '—')} |",
        "",
        "Figures are single-view, in float32, on the run's held-out validation split: "
        "`regraft eval RUN` reproduces them.",
    ]
    return lines


def _loading(details: dict[str, Any], card: dict[str, Any]) -> list[str]:
    chans = details["builder_kwargs"].get("in_chans")
    if details["library"] == "timm":
        return [
            "```python",
            "import timm",
            'model = timm.create_model("local-dir:PATH", pretrained=True).eval()   # PATH: this folder',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
            "```",
            "",
            "With an older timm that does not know `local-dir:` (it came in 2025, timm pull request #2476):",
            "",
            "```python",
            f'model = timm.create_model("{details["architecture"]}", pretrained=True, num_classes={card["num_classes"]},'
            + (f" in_chans={chans}," if chans else ""),
            f'                          pretrained_cfg_overlay=dict(file="PATH/model.safetensors", num_classes={card["num_classes"]})).eval()',
            "```",
        ]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in details["builder_kwargs"].items())
    conv = details.get("first_conv_code")
    return [
        "```python",
        *(["import torch"] if conv else []),
        "import torchvision",
        "from safetensors.torch import load_file",
        f'model = torchvision.models.get_model("{details["architecture"]}", weights=None, {kwargs})',
        *([f"{conv}   # the run's {card['preprocessing']['input_size'][0]} input channels"] if conv else []),
        'model.load_state_dict(load_file("PATH/model.safetensors")); model.eval()   # PATH: this folder',
        "```",
    ]


def _decision(card: dict[str, Any]) -> str:
    """How the logits become predictions: softmax, or (multi-label) each sigmoid above its label's threshold."""
    if card.get("task") != "multilabel":
        return "(softmax for probabilities)."
    pairs = ", ".join(f"`{c}` {float(t):.3f}" for c, t in zip(card["classes"], card.get("thresholds") or [], strict=False))
    return ("(multi-label: a sigmoid per label; a label is predicted when its probability is above its threshold, chosen on "
            f"the validation images and listed in `config.json` under `regraft.thresholds`: {pairs}).")


def _reading(pre: dict[str, Any]) -> str:
    """How the run reads images, for the preprocessing section (docs/channels.md)."""
    channels, depth = int(pre["input_size"][0]), int(pre.get("bit_depth", 8))
    scale = "divide by 65535 (16-bit values)" if depth == 16 else "scale to [0, 1]"
    if channels == 3 and depth == 8:
        return f"Read images as RGB, {scale}"
    if channels == 1:
        return (f"Read images as 1 channel ({pre.get('mode', 'L')}: grayscale as stored, colour images as luminance "
                f"0.299 R + 0.587 G + 0.114 B), {scale}")
    if channels == 3:
        return f"Read images as RGB at 16 bits (16-bit grayscale repeated in the three channels), {scale}"
    return f"Read images as {channels} bands (RGBA, CMYK, a .npy array or a multi-band TIFF, bands raw), {scale}"


def model_card(loaded: Any, *, details: dict[str, Any], summary: dict[str, Any] | None, diff: float, run_name: str) -> str:
    """The ``README.md`` text of an hf export of ``loaded`` (a :class:`~regraft.inference.LoadedRun`)."""
    card, library = loaded.card, details["library"]
    pre, classes = card["preprocessing"], list(card["classes"])
    _, h, w = pre["input_size"]
    resize = pre.get("resize") or int(h / float(pre["crop_pct"]))
    weights = str(loaded.weights)
    lines = [
        "---",
        f"library_name: {library}",
        "tags:",
        "- image-classification",
        f"- {library}",
        "- regraft",
        "pipeline_tag: image-classification",
        "---",
        "",
        f"# {run_name}: {details['architecture']} fine-tuned for {len(classes)} classes",
        "",
        (f"Fine-tuned with regraft from `{card.get('weights', '?')}` weights" if card.get("weights") not in (None, "none")
         else "Trained with regraft from random weights") + f" (strategy `{card.get('strategy', '?')}`); this folder holds the run's "
        + ("**EMA weights** (`model_ema.safetensors`)." if weights == "ema" else "**best epoch's weights** (`model.safetensors`)."),
        "",
        "## Figures",
        "",
        *_figures(summary, weights),
        "",
        "## Data",
        "",
        f"{len(classes)} classes; output `i` is `label_names[i]` in `config.json`: " + ", ".join(f"`{c}`" for c in classes[:50])
        + (" …" if len(classes) > 50 else ""),
        "",
        "## Load it",
        "",
        *_loading(details, card),
        "",
        "## Preprocessing",
        "",
        f"{_reading(pre)}; resize the shorter side to {resize} px ({pre['interpolation']}), centre-crop {h}x{w}, "
        f"subtract mean {list(pre['mean'])}, divide by std {list(pre['std'])}; the model outputs logits "
        + _decision(card),
        "regraft decodes JPEGs at least twice that size with the decoder's draft scaling (1/2, 1/4, 1/8 before resizing); "
        "a full-size decode (timm's and torchvision's transforms) gives pixels that differ slightly on such photos.",
        "",
        "## How this folder was checked",
        "",
        f"Before it was written, the folder was loaded with {details['loaded_with']} and compared with the run's model "
        f"on random batches of 2 and 3 images: largest logit difference {diff:.3g}.",
        "The model sees one view per image: test-time augmentation (`regraft eval/predict --tta`) is not part of it.",
        "",
    ]
    return "\n".join(lines)
