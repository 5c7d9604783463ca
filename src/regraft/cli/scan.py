"""``regraft scan DATA``: list everything wrong with a data folder before training on it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "check a data folder: unreadable files, duplicates, leakage, imbalance; with --model, label errors and near-copies"
DESCRIPTION = """\
Read every image of a data folder once and report images per class and split, sizes and modes,
every unreadable, truncated, empty or non-image file by path, exact duplicates, images shared by
train and validation (leakage) or by two classes, empty classes and class imbalance.

With --model, also embed every image once with that pretrained network and report
label_issues (images whose label the other images contradict, judged by cross-validated
linear probes so that no image judges itself), near_duplicates (resized, re-encoded or
cropped copies; a pair across train and validation is a leak) and outliers. --html writes a
page of thumbnails, --fixes a CSV to edit and pass to 'regraft train --exclude'.

Exit status: 0, or 1 with --strict when a problem was found (2 when DATA cannot be scanned).

examples:
  regraft scan data/pets
  regraft scan data/ --train-csv train.csv --val-csv val.csv --json > scan.json
  regraft scan data/pets --strict && regraft train data/pets --model resnet18
  regraft scan data/pets --model resnet50 --html scan.html --fixes fixes.csv
  regraft train data/pets --model resnet50 --exclude fixes.csv
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
    deep = p.add_argument_group("deep scan (with --model)")
    deep.add_argument("--model", metavar="M", help="embed every image with this torchvision/timm model and look for label errors, near-copies, outliers")
    deep.add_argument("--weights", default="DEFAULT", metavar="W", help="its weights, as for 'regraft train --weights' (default DEFAULT)")
    deep.add_argument("--img-size", type=int, default=None, metavar="N", help="input size (default: the pretrained config's)")
    deep.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    deep.add_argument("--device", default="auto", metavar="D", help="auto | cpu | cuda | mps (default auto)")
    deep.add_argument("--html", metavar="OUT", help="write a self-contained page of thumbnails of the findings")
    deep.add_argument("--fixes", metavar="FILE.csv", help="write path,given,suggested,action,reason rows to edit for 'regraft train --exclude'")
    deep.add_argument("--top", type=int, default=10, metavar="N", help="findings of each kind printed (default 10; all of them in --json)")


def run(args: argparse.Namespace) -> int:
    from regraft.data import scan
    from regraft.errors import ConfigError

    if args.model is None and (args.html or args.fixes):
        raise ConfigError(f"{'--html' if args.html else '--fixes'} needs the deep scan: add --model M (e.g. --model resnet50)")
    if args.model is not None and args.top < 0:
        raise ConfigError(f"--top must be 0 or more, got {args.top}")
    report = scan(
        args.data, val_fraction=args.val_fraction, seed=args.seed, train_csv=args.train_csv,
        val_csv=args.val_csv, classes_file=args.classes_file, imbalance_threshold=args.imbalance,
        threads=args.workers, fingerprints=args.model is not None,
    )
    deep = _deep(args, report) if args.model is not None else None
    problems = report.problems + (deep.problems() if deep is not None else [])
    if args.json:
        data = report.to_dict()
        if deep is not None:
            data.update(deep.to_dict())
            data["problems"], data["ok"] = problems, not problems
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        _print_report(report, quiet=getattr(args, "quiet", False), deep=deep, top=args.top)
    return 1 if args.strict and problems else 0


def _deep(args: argparse.Namespace, report: Any) -> Any:
    from regraft.audit.scan import deep_scan, fix_rows

    quiet = args.json or getattr(args, "quiet", False)
    notify = (lambda line: None) if quiet else (lambda line: sys.stderr.write(f"{line}\n"))
    deep = deep_scan(report, model=args.model, weights=args.weights, img_size=args.img_size, batch_size=args.batch_size,
                     device=args.device, seed=args.seed, notify=notify)
    if args.html:
        from regraft.audit.page import write_scan_page

        notify(f"wrote {write_scan_page(args.html, report, deep)}")
    if args.fixes:
        from regraft.data.fixes import write_fixes

        notify(f"wrote {write_fixes(args.fixes, fix_rows(deep), root=report.root)}: edit the action column, then "
               f"'regraft train {args.data} --exclude {args.fixes}'")
    return deep


def _print_report(report: Any, *, quiet: bool, deep: Any = None, top: int = 10) -> None:
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
    if deep is not None:
        _print_deep(console, deep, top=top)
    _print_problems(console, report, extra=deep.problems() if deep is not None else [])


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


def _print_problems(console: Any, report: Any, *, extra: list[str] | None = None) -> None:
    from rich.markup import escape

    problems = report.problems + list(extra or [])
    if not problems:
        console.print("[green]no problems found[/]")
        return
    console.print(f"[bold red]{len(problems)} problems:[/]")
    for line in problems:
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


def _print_deep(console: Any, deep: Any, *, top: int) -> None:
    """The deep scan's findings: the probe's figure, then the first ``top`` of each kind."""
    from rich.markup import escape

    p = deep.probe
    console.print(
        f"deep scan: {deep.images} images embedded with {escape(deep.model.get('name', '?'))} "
        f"({deep.model.get('computed', 0)} computed, {deep.model.get('reused', 0)} from the store); linear probe "
        f"{p['validation']} accuracy {p['accuracy']:.3f} ± {p['accuracy_std']:.3f}"
    )
    sections = (
        ("suspected label errors (most suspect first)", deep.label_issues,
         lambda i: f"  {i.score:.2f}  {escape(i.path)}: filed as {escape(i.given)}, looks like {escape(i.suggested)}"),
        ("near-duplicates (leaks first)", deep.near_duplicates,
         lambda d: f"  {d.similarity:.3f}{'  LEAK' if d.leak else ''}  {escape(d.a)}  ~  {escape(d.b)}"),
        ("outliers", deep.outliers, lambda o: f"  {o.score:.2f}  {escape(o.path)}: {escape(o.reason)}"),
    )
    for title, items, line in sections:
        if not items or top == 0:
            continue
        console.print(f"[bold]{title}:[/]")
        for item in items[:top]:
            console.print(line(item), soft_wrap=True)
        if len(items) > top:
            console.print(f"  ... and {len(items) - top} more (all of them with --json or --html)")
