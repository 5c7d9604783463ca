"""regraft compare: several strategies on the same split, seed and budget, side by side."""

from __future__ import annotations

import argparse

from regraft.cli import train as train_cli

HELP = "train several strategies on one split and budget and compare them"
DESCRIPTION = """\
Trains MODEL on DATA once per strategy (scratch from random weights, the others from --weights),
all with the same split, seed and epoch budget, into OUT/<strategy>; writes OUT/comparison.md
(table and verdict) and OUT/comparison.png (validation accuracy and loss per epoch).

Example:
  regraft compare data/hotdog --model resnet18 --strategies scratch,head,full,lp-ft --epochs 5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    train_cli.add_arguments(p)
    p.add_argument("--strategies", required=True, metavar="S1,S2,...", help="comma-separated strategies, e.g. scratch,head,full,lp-ft")


def run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from regraft.cli._progress import make_progress
    from regraft.errors import ConfigError
    from regraft.training.compare import compare, parse_strategies

    if args.resume:
        raise ConfigError("compare cannot --resume; resume one strategy's run with 'regraft train --resume OUT/STRATEGY'")
    strategies = parse_strategies(args.strategies)
    cfg = train_cli.config_from_args(args)
    out = cfg.out or f"runs/compare-{(cfg.model or 'model').replace(':', '-').replace('/', '-')}-{datetime.now():%Y%m%d-%H%M%S}"
    result = compare(cfg, strategies=strategies, out=out, callbacks=make_progress(args.quiet), overwrite=cfg.overwrite)
    print()
    print(result.table)
    print(result.verdict)
    print(f"comparison: {result.out / 'comparison.md'}, {result.out / 'comparison.png'}")
    return 0
