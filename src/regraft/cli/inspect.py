"""regraft inspect: a model's module tree with paths, output shapes, parameters and the head."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "show a model's module tree: dotted paths, output shapes, parameters, trainable, the head"
DESCRIPTION = """\
Build MODEL (random weights unless --weights), run one dry forward pass at its input size and
list every module: its dotted path (the name surgery, freezing and --train take), type, output
shape, parameter count, whether it trains, and which module is the head.

With --config RECIPE the recipe's head settings (with --num-classes) and 'surgery:' list are
applied first and what changed is printed; a broken surgery names the module that no longer fits.

Examples:
  regraft inspect resnet18 --depth 1
  regraft inspect vgg16 --img-size 64 --json
  regraft inspect mobilenet_v2 --weights mobilenet_v2.pth
  regraft inspect vgg16 --config recipe.yaml --num-classes 10
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL", help="torchvision or timm name (or 'model' in --config)")
    p.add_argument("--weights", metavar="W", help="load these weights first and show the load report (default: none)")
    p.add_argument("--img-size", type=int, metavar="N", help="input size for the dry pass (default: the model's own)")
    p.add_argument("--depth", type=int, metavar="N", help="show modules at most N levels deep (default: all)")
    p.add_argument("--config", metavar="RECIPE", help="apply the recipe's head settings and surgery list first")
    p.add_argument("--num-classes", type=int, metavar="N", help="replace the head for N classes first")
    p.add_argument("--json", action="store_true", help="print JSON")


def _load_report(model: Any, weights: str | None) -> tuple[Any, str | None]:
    """(LoadReport or None, a note when the weights step was skipped)."""
    if not weights or weights.lower() == "none":
        return None, None
    try:
        from regraft.weights import load_weights
    except ImportError as exc:
        return None, f"weights not loaded: regraft.weights is unavailable ({exc})"
    return load_weights(model, weights), None


def _ops(args: argparse.Namespace, cfg: Any) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    if args.num_classes is not None:
        head: dict[str, Any] = {"op": "replace_head", "num_classes": args.num_classes}
        if cfg is not None:
            head.update(hidden=list(cfg.head_hidden), dropout=cfg.head_dropout, init=cfg.head_init)
        ops.append(head)
    if cfg is not None:
        ops += list(cfg.surgery)
    return ops


def inspect_model(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``regraft inspect`` shows, as plain data (the ``--json`` output)."""
    from regraft import surgery, zoo
    from regraft.config import load_config
    from regraft.errors import ConfigError

    cfg = load_config(args.config) if args.config else None
    name = args.model or (cfg.model if cfg is not None else None)
    if not name:
        raise ConfigError("no model given: regraft inspect MODEL (see 'regraft models' for names)")
    weights = args.weights  # only when asked: a recipe's default DEFAULT would need the network
    if args.depth is not None and args.depth < 0:
        raise ConfigError(f"--depth must be 0 or more; got {args.depth}")
    ref = zoo.resolve(name)
    model = zoo.build(ref)
    img = args.img_size or (cfg.img_size if cfg is not None else None)
    dcfg = zoo.data_config(ref, weights=weights).with_overrides(img_size=img)
    size = tuple(dcfg.input_size)
    report, note = _load_report(model, weights)
    ops = _ops(args, cfg)
    diff = surgery.apply(model, ops, input_size=size) if ops else None
    rows = surgery.describe(model, input_size=size, depth=args.depth)
    return {
        "model": ref.name,
        "zoo": ref.zoo,
        "head": next((r.path for r in rows if r.head), None) or _head(surgery, model),
        "input_size": list(size),
        "params": rows[0].params,
        "trainable_params": rows[0].trainable_params,
        "modules": [r.to_dict() for r in rows],
        "load_report": report.to_dict() if report is not None else None,
        "load_report_lines": report.format_lines() if report is not None else [],
        "notes": [note] if note else [],
        "surgery": diff.to_dict() if diff is not None else None,
        "surgery_lines": diff.format_lines() if diff is not None else [],
    }


def _head(surgery: Any, model: Any) -> str | None:
    try:
        return surgery.find_head(model)
    except Exception:  # noqa: BLE001 - a model without a findable head is still worth showing
        return None


def _trainable(row: dict[str, Any]) -> str:
    if row["params"] == 0:
        return "-"
    return {True: "yes", False: "frozen", None: "partial"}[row["trainable"]]


def _print(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    for line in [*info["load_report_lines"], *info["notes"], *info["surgery_lines"]]:
        console.print(line, markup=False)
    title = f"{info['zoo']}:{info['model']} at {tuple(info['input_size'])}"
    table = Table("path", "type", "output", "params", "trains", "", title=title, title_justify="left")
    for row in info["modules"]:
        label = "  " * row["depth"] + (row["path"] or "(model)")
        shape = row["out_shape"]
        shape_text = "-" if shape is None else str(tuple(shape)) if shape and isinstance(shape[0], int) else str(shape)
        table.add_row(
            label, row["type"], shape_text, f"{row['params']:,}", _trainable(row), "<- head" if row["head"] else "",
            style="bold" if row["head"] else None,
        )
    console.print(table)
    console.print(
        f"head: {info['head'] or 'not found'}   parameters: {info['params']:,} "
        f"({info['trainable_params']:,} trainable)   paths are what --train, --freeze and surgery ops take",
        markup=False,
    )


def run(args: argparse.Namespace) -> int:
    import json

    info = inspect_model(args)
    if args.json:
        out = {k: v for k, v in info.items() if not k.endswith("_lines")}
        print(json.dumps(out, indent=2))
        return 0
    _print(info)
    return 0
