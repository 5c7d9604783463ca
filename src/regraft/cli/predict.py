"""regraft predict: top-k classes for images or folders, from a run (or an exported ONNX model)."""

from __future__ import annotations

import argparse

HELP = "predict classes for images or folders with a trained run"
DESCRIPTION = """\
Predict the top-k classes of images or folders of images, from a run folder or from an
exported model.onnx (with its model.json beside it; onnxruntime only, no torch). Both decode
and compute like training's validation (fp32), so they give the same classes and
probabilities within 1e-4.

--tta flip / flip+crops averages the probabilities of 2 / 10 views of each image (the plain
top-1 is shown beside); it works for .onnx files too.

A multi-label run prints every label whose probability is above its threshold (chosen on
validation, kept in model.json), or "no label above its threshold".
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder, or an exported model.onnx with its model.json")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images or folders of images")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="how many classes per image (default 5)")
    p.add_argument("--weights", default="best", choices=("best", "ema"), help="a run's best weights or the EMA of --ema (default best)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="fp32 (default) or bf16/fp16 autocast")
    p.add_argument("--tta", default="none", choices=("none", "flip", "flip+crops"), help="test-time augmentation (default none)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from regraft.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1; got {args.topk}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer; got {args.batch_size}")
    if str(args.run).endswith(".onnx"):
        if args.weights != "best" or args.precision != "fp32":
            raise ConfigError("--weights and --precision apply to a run folder: an .onnx file holds one set of fp32 weights; drop them")
        from regraft.export import predict_onnx

        results = predict_onnx(args.run, args.paths, topk=args.topk, batch_size=args.batch_size, tta=args.tta)
    else:
        from regraft.inference import predict

        results = predict(args.run, args.paths, topk=args.topk, batch_size=args.batch_size, device=args.device,
                          weights=args.weights, precision=args.precision, tta=args.tta)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}: {r['error']}")
                continue
            print(_line(r))
    return 1 if any("error" in r for r in results) and all("error" in r for r in results) else 0


def _line(r: dict) -> str:
    """``path: cat 0.973, dog 0.012``; multi-label: the labels above their thresholds."""
    if "labels" in r:
        chosen = r["labels"]
        shown = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in chosen) if chosen else "no label above its threshold"
        line = f"{r['path']}: {shown}"
        if "plain" in r:
            line += "  (plain: " + (", ".join(t["class"] for t in r["plain"]) or "none") + ")"
        return line
    line = f"{r['path']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
    if "plain" in r:
        line += f"  (plain: {r['plain']['class']} {r['plain']['prob']:.3f})"
    return line
