"""regraft inspect: a model's module tree with paths, output shapes, parameters and the head."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "show a model's module tree: dotted paths, output shapes, parameters, trainable, the head"
DESCRIPTION = """\
Build MODEL (random weights unless --weights), run one dry forward pass at its input size and
list every module: its dotted path (the name surgery, freezing and --train take), type, output
shape, parameter count, whether it trains, and which module is the head.

The steps run in train's order and through train's code: the head for --num-classes, the
weights (with the recipe's and the flags' rename/skip/keep_head, and --trust-checkpoint), then
the recipe's 'surgery:' list; what changed is printed, a broken surgery names the module that no
longer fits, and with --num-classes the output must have that many logits, as in training.

Examples:
  regraft inspect resnet18 --depth 1
  regraft inspect vgg16 --img-size 64 --json
  regraft inspect mobilenet_v2 --weights mobilenet_v2.pth --rename backbone.= --skip fc
  regraft inspect vgg16 --config recipe.yaml --num-classes 10
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL", help="torchvision or timm name (or 'model' in --config)")
    p.add_argument("--weights", metavar="W", help="load these weights first and show the load report (default: none)")
    p.add_argument("--img-size", type=int, metavar="N", help="input size for the dry pass (default: the model's own)")
    p.add_argument("--depth", type=int, metavar="N", help="show modules at most N levels deep (default: all)")
    p.add_argument("--config", metavar="RECIPE", help="apply the recipe's head settings and surgery list first")
    p.add_argument("--num-classes", type=int, metavar="N", help="replace the head for N classes first")
    p.add_argument("--rename", action="append", metavar="OLD=NEW", help="checkpoint key rename, as for train; repeatable")
    p.add_argument("--skip", action="append", metavar="GLOB", help="leave checkpoint keys matching GLOB out, as for train; repeatable")
    p.add_argument("--keep-head", action="store_true", help="load the checkpoint's classifier: its classes are yours")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling arbitrary objects from --weights (only for files you trust)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _load_report(model: Any, weights: str | None, args: argparse.Namespace, cfg: Any) -> tuple[Any, list[str]]:
    """(LoadReport or None, notes): the weights loaded with train's options, flags over the recipe."""
    from regraft.errors import ConfigError
    from regraft.weights import load_weights

    if not weights or weights.lower() == "none":
        return None, []
    rename = dict(cfg.rename) if cfg is not None else {}
    for rule in args.rename or []:
        if "=" not in rule:
            raise ConfigError(f"--rename expects OLD=NEW; got '{rule}'")
        old, new = rule.split("=", 1)
        rename[old] = new
    skip = [*(cfg.skip if cfg is not None else []), *(args.skip or [])]
    report = load_weights(
        model, weights, rename=rename or None, skip=skip or None, keep_head=bool(args.keep_head or (cfg is not None and cfg.keep_head)),
        trust_checkpoint=bool(args.trust_checkpoint), sha256=cfg.sha256 if cfg is not None else None,
    )
    floor = cfg.min_coverage if cfg is not None else 0.9
    if report.coverage < floor:
        return report, [f"train would refuse these weights: trunk coverage {report.coverage:.1%} is below --min-coverage {floor:g}"]
    return report, []


def _head_op(args: argparse.Namespace, cfg: Any) -> dict[str, Any] | None:
    if args.num_classes is None:
        return None
    head: dict[str, Any] = {"op": "replace_head", "num_classes": args.num_classes}
    if cfg is not None:
        head.update(hidden=list(cfg.head_hidden), dropout=cfg.head_dropout, init=cfg.head_init)
    return head


def _change(model: Any, args: argparse.Namespace, cfg: Any, weights: str | None, size: tuple[int, ...]) -> tuple[Any, Any, list[str]]:
    """Train's order: the new head, the weights, the recipe's surgery, the model contract."""
    from regraft import surgery
    from regraft.surgery.diff import SurgeryDiff, snapshot

    before = snapshot(model)
    head_op = _head_op(args, cfg)
    head_diff = surgery.apply(model, [head_op], input_size=size) if head_op else None
    report, notes = _load_report(model, weights, args, cfg)
    ops = list(cfg.surgery) if cfg is not None else []
    ops_diff = surgery.apply(model, ops, input_size=size) if ops else None
    if args.num_classes is not None:
        surgery.check_output_width(model, num_classes=args.num_classes, input_size=size)
    diffs = [d for d in (head_diff, ops_diff) if d is not None]
    diff = diffs[0] if len(diffs) == 1 else None
    if len(diffs) == 2:
        diff = SurgeryDiff.between(
            before, snapshot(model), ops=[*head_diff.ops, *ops_diff.ops],
            out_shape_before=head_diff.out_shape_before, out_shape_after=ops_diff.out_shape_after,
        )
    return report, diff, notes


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
    report, diff, notes = _change(model, args, cfg, weights, size)
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
        "notes": notes,
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
