"""``regraft scan DATA``: list everything wrong with a data folder before training on it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "check a data folder: counts, sizes, unreadable files, duplicates, leakage, imbalance"
DESCRIPTION = """\
Read every image of a data folder once and report images per class and split, sizes and modes,
every unreadable, truncated, empty or non-image file by path, exact duplicates, images shared by
train and validation (leakage) or by two classes, empty classes and class imbalance.

Exit status: 0, or 1 with --strict when a problem was found (2 when DATA cannot be scanned).

examples:
  regraft scan data/pets
  regraft scan data/ --train-csv train.csv --val-csv val.csv --json > scan.json
  regraft scan data/pets --strict && regraft train data/pets --model resnet18
"""

_LIST_LIMIT = 20  # groups of duplicates/leakage shown in the human output (all of them in --json)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="data folder (train/ + val/, class subfolders, or the CSV root)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    p.add_argument("--train-csv", metavar="FILE", help="CSV/TSV of path,label for training (paths relative to DATA)")
    p.add_argument("--val-csv", metavar="FILE", help="CSV/TSV of path,label for validation")
    p.add_argument("--classes-file", metavar="FILE", help="class names, one per line (default DATA/classes.txt if present)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="validation share when DATA has no split (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    p.add_argument("--imbalance", type=float, default=3.0, metavar="X", help="flag train when its largest class has X times the smallest (default 3)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="decoding threads (default: CPUs, at most 8)")


def run(args: argparse.Namespace) -> int:
    from regraft.data import scan

    report = scan(
        args.data, val_fraction=args.val_fraction, seed=args.seed, train_csv=args.train_csv,
        val_csv=args.val_csv, classes_file=args.classes_file, imbalance_threshold=args.imbalance,
        threads=args.workers,
    )
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        _print_report(report, quiet=getattr(args, "quiet", False))
    return 1 if args.strict and not report.ok else 0


def _print_report(report: Any, *, quiet: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    n_train, n_val = (sum(report.counts[s].values()) for s in ("train", "val"))
    console.print(
        f"[bold]{escape(report.root)}[/]  layout [cyan]{report.layout}[/], {len(report.classes)} classes, "
        f"{n_train} train + {n_val} validation images"
    )
    if not quiet:
        table = Table("class", "train", "val", "unreadable", box=None, pad_edge=False)
        bad_per_class = _count_bad(report)
        for name in report.classes:
            bad = bad_per_class.get(name, 0)
            table.add_row(escape(name), str(report.counts["train"][name]), str(report.counts["val"][name]), str(bad) if bad else "")
        console.print(table)
        _print_summary(console, report)
    _print_problems(console, report)


def _count_bad(report: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in report.bad_files:
        counts[b.label] = counts.get(b.label, 0) + 1
    return counts


def _print_summary(console: Any, report: Any) -> None:
    from rich.markup import escape

    if report.sizes:
        w, h = report.sizes["width"], report.sizes["height"]
        console.print(
            f"sizes: width {w['min']}..{w['max']} (median {w['median']:g}), height {h['min']}..{h['max']} "
            f"(median {h['median']:g}); {report.sizes['tiny']} under {report.sizes['tiny_below_px']} px"
        )
    console.print("modes: " + ", ".join(f"{m} {n}" for m, n in report.modes.items()))
    console.print("formats: " + ", ".join(f"{f} {n}" for f, n in report.formats.items()))
    if report.imbalance:
        console.print("imbalance (largest/smallest class): " + ", ".join(f"{s} {r:g}x" for s, r in report.imbalance.items()))
    if report.ignored:
        console.print(f"ignored {len(report.ignored)} non-image files, e.g. {escape(report.ignored[0])}")


def _print_problems(console: Any, report: Any) -> None:
    from rich.markup import escape

    if report.ok:
        console.print("[green]no problems found[/]")
        return
    console.print(f"[bold red]{len(report.problems)} problems:[/]")
    for line in report.problems:
        console.print(f"  - {escape(line)}")
    if report.bad_files:
        # one line per file, never wrapped, so that the paths can be copied or grepped
        console.print("[bold]unusable files (training skips them):[/]")
        width = max(len(b.kind) for b in report.bad_files)
        for b in report.bad_files:
            console.print(f"  {b.kind:<{width}}  {escape(b.path)}: {escape(b.reason)}", soft_wrap=True)
    shown = {tuple(g) for g in report.leakage + report.label_conflicts}
    others = [g for g in report.duplicates if tuple(g) not in shown]
    for title, groups in (("in train and validation", report.leakage), ("under two classes", report.label_conflicts), ("identical files", others)):
        if not groups:
            continue
        console.print(f"[bold]{title}:[/]")
        for group in groups[:_LIST_LIMIT]:
            console.print("  " + "  =  ".join(escape(p) for p in group), soft_wrap=True)
        if len(groups) > _LIST_LIMIT:
            console.print(f"  ... and {len(groups) - _LIST_LIMIT} more groups (all of them with --json)")
