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

Balanced accuracy is the mean of the classes' recalls. A multi-label run reports mAP (what its
best_val_map is), macro and micro F1 and exact match at its per-label thresholds, and a table of
each label's AP, threshold, precision, recall and F1; --data is then a folder of label folders.
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
    key, mine = ("best_val_map", "map") if m.get("task") == "multilabel" else ("best_val_acc", "accuracy")
    if not ref or key not in ref:
        return None
    acc, loss = ref[key], ref.get("best_val_loss")
    shown = f"summary.json: {key} {acc:.4f}" + (f", best_val_loss {loss:.4f}" if loss is not None else "")
    same = m[mine] == acc and (loss is None or abs(m["loss"] - loss) <= 1e-5)
    if same:
        return f"{shown}: reproduced"
    why = "; summary.json's figures are fp32" if m["precision"] != "fp32" else ""
    return f"{shown}: this evaluation differs{why}"


def _tta_line(m: dict[str, Any]) -> str | None:
    t = m.get("tta")
    if not t:
        return None
    if m.get("task") == "multilabel":
        return (f"{t['views']} TTA ({t['n_views']} views): mAP {t['map']:.4f} ({t['map'] - m['map']:+.4f} vs plain)  "
                f"loss {t['loss']:.4f}  macro F1 {t['f1_macro']:.4f}; label set changed on {t['changed']} of {t['n_images']} images")
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

    console = Console(soft_wrap=True)
    multilabel = m.get("task") == "multilabel"
    if multilabel:
        console.print(f"{m['data']}: {m['n_images']} images  mAP {m['map']:.4f}  loss {m['loss']:.4f}  macro F1 {m['f1_macro']:.4f}  "
                      f"micro F1 {m['f1_micro']:.4f}  exact match {m['exact_match']:.4f} (at the run's thresholds)", highlight=False)
    else:
        console.print(f"{m['data']}: {m['n_images']} images  accuracy {m['accuracy']:.4f}  balanced accuracy "
                      f"{m['balanced_accuracy']:.4f}  loss {m['loss']:.4f}  macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}",
                      highlight=False)
    console.print(f"weights: {m['weights']}; numerics: {m['precision']}, batches of {m['batch_size']}", highlight=False)
    for line in (_summary_line(m), _tta_line(m)):
        if line:
            console.print(line, highlight=False)
    for table in (_label_table(m),) if multilabel else _class_tables(m):
        console.print(table)
    for path in m["skipped"]:
        console.print(f"skipped unreadable image: {path}", highlight=False)
    return 0


def _class_tables(m: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    table = Table("class", "support", "accuracy", "precision", "recall", "F1")
    for name, v in m["per_class"].items():
        table.add_row(name, str(v["support"]), f"{v['accuracy']:.3f}", f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}")
    cm = Table("true \\ predicted", *m["classes"], title="confusion matrix")
    for name, row in zip(m["classes"], m["confusion_matrix"], strict=True):
        cm.add_row(name, *map(str, row))
    return [table, cm]


def _label_table(m: dict[str, Any]) -> Any:
    from rich.table import Table

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}"

    table = Table("label", "positives", "AP", "threshold", "precision", "recall", "F1")
    for name, v in m["per_label"].items():
        table.add_row(name, str(v["support"]), fmt(v["ap"]), fmt(v["threshold"]), fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]))
    return table
