"""regraft eval: accuracy, loss, per-class metrics and the confusion matrix of a finished run."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "evaluate a run on its validation split or any folder with its classes"
DESCRIPTION = """\
Evaluate a finished run. Without --data it uses the run's own validation split, batched as
training validated it, in the same numerics (fp32, channels_last) and through the same decode
path, so its accuracy is summary.json's best_val_acc exactly (and its loss to rounding).

--tta flip averages each image with its mirror image; flip+crops uses the centre and four corner
crops, each mirrored (10 views). The plain figures are printed beside the TTA ones.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by 'regraft train'")
    p.add_argument("--data", metavar="DIR", help="a folder of class subfolders (default: the run's validation split)")
    p.add_argument("--weights", default="best", choices=("best", "ema"), help="the best epoch's weights, or the EMA of --ema (default best)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 reproduces training's validation (default); bf16/fp16 autocast is faster on hardware with it")
    p.add_argument("--tta", default="none", choices=("none", "flip", "flip+crops"), help="test-time augmentation (default none)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (default: the run's on its own split, else 64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true", help="print JSON")


def _summary_line(m: dict[str, Any]) -> str | None:
    ref = m.get("summary")
    if not ref or "best_val_acc" not in ref:
        return None
    acc, loss = ref["best_val_acc"], ref.get("best_val_loss")
    shown = f"summary.json: best_val_acc {acc:.4f}" + (f", best_val_loss {loss:.4f}" if loss is not None else "")
    same = m["accuracy"] == acc and (loss is None or abs(m["loss"] - loss) <= 1e-5)
    if same:
        return f"{shown}: reproduced"
    why = "; summary.json's figures are fp32" if m["precision"] != "fp32" else ""
    return f"{shown}: this evaluation differs{why}"


def _tta_line(m: dict[str, Any]) -> str | None:
    t = m.get("tta")
    if not t:
        return None
    gain = t["accuracy"] - m["accuracy"]
    return (f"{t['views']} TTA ({t['n_views']} views): accuracy {t['accuracy']:.4f} ({gain:+.4f} vs plain)  loss {t['loss']:.4f}  "
            f"macro F1 {t['macro_f1']:.4f}  ECE {t['ece']:.4f}; top-1 changed on {t['changed']} of {t['n_images']} images")


def run(args: argparse.Namespace) -> int:
    import json

    from regraft.inference import evaluate_run

    m = evaluate_run(args.run, data=args.data, batch_size=args.batch_size, device=args.device,
                     weights=args.weights, precision=args.precision, tta=args.tta)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    console.print(f"{m['data']}: {m['n_images']} images  accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  "
                  f"macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}", highlight=False)
    console.print(f"weights: {m['weights']}; numerics: {m['precision']}, batches of {m['batch_size']}", highlight=False)
    for line in (_summary_line(m), _tta_line(m)):
        if line:
            console.print(line, highlight=False)
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
