"""regraft lr-find: a learning-rate range test with a plot and a suggested LR."""

from __future__ import annotations

import argparse

from regraft.cli import train as train_cli

HELP = "learning-rate range test: plot and suggested --lr (the model is left untouched)"
DESCRIPTION = """\
Builds the model and optimizer exactly as 'regraft train' would with the same flags (weights,
strategy, freezing, parameter groups), raises the LR exponentially batch by batch while
recording the loss, and suggests the LR where the loss falls fastest. Writes OUT/lr_find.png.

Example:
  regraft lr-find data/hotdog --model resnet18 --strategy full
  regraft train data/hotdog --model resnet18 --strategy full --lr <suggestion>
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    train_cli.add_arguments(p)
    p.add_argument("--start-lr", type=float, default=1e-7, metavar="LR")
    p.add_argument("--end-lr", type=float, default=1.0, metavar="LR")
    p.add_argument("--steps", type=int, default=100, metavar="N", help="batches in the ramp (default 100)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from regraft.training.lr_find import lr_find_run

    cfg = train_cli.config_from_args(args)
    out = Path(cfg.out or "runs/lr-find")
    result, plot = lr_find_run(cfg, out=out, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps)
    if args.json:
        print(json.dumps({"suggestion": result.suggestion, "lrs": result.lrs, "losses": result.losses, "plot": str(plot)}))
    else:
        print(f"suggested --lr {result.suggestion:.2e}  (plot: {plot})")
    return 0
