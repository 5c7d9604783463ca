"""regraft eval: accuracy, loss, per-class metrics and the confusion matrix of a finished run."""

from __future__ import annotations

import argparse

HELP = "evaluate a run on its validation split or any folder with its classes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by 'regraft train'")
    p.add_argument("--data", metavar="DIR", help="a folder of class subfolders (default: the run's validation split)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from regraft.inference import evaluate_run

    m = evaluate_run(args.run, data=args.data, batch_size=args.batch_size, device=args.device)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{m['data']}: {m['n_images']} images  accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  "
                  f"macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}", highlight=False)
    table = Table("class", "support", "accuracy", "precision", "recall", "F1")
    for name, v in m["per_class"].items():
        table.add_row(name, str(v["support"]), f"{v['accuracy']:.3f}", f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}")
    console.print(table)
    cm = Table("true \\ predicted", *m["classes"], title="confusion matrix")
    for name, row in zip(m["classes"], m["confusion_matrix"], strict=True):
        cm.add_row(name, *map(str, row))
    console.print(cm)
    for path in m["skipped"]:
        console.print(f"skipped unreadable image: {path}", highlight=False)
    return 0
