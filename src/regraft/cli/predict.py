"""regraft predict: top-k classes for images or folders, from a run (or an exported ONNX model)."""

from __future__ import annotations

import argparse

HELP = "predict classes for images or folders with a trained run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder, or an exported model.onnx with its model.json")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images or folders of images")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="how many classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from regraft.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1; got {args.topk}")
    if str(args.run).endswith(".onnx"):
        from regraft.export import predict_onnx

        results = predict_onnx(args.run, args.paths, topk=args.topk)
    else:
        from regraft.inference import predict

        results = predict(args.run, args.paths, topk=args.topk, batch_size=args.batch_size, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}: {r['error']}")
            else:
                print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 1 if any("error" in r for r in results) and all("error" in r for r in results) else 0
