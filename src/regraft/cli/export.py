"""regraft export: a run's model as ONNX, TorchScript, torch.export, safetensors or an hf folder."""

from __future__ import annotations

import argparse

HELP = "export a run's model (onnx, torchscript, exported, safetensors, hf), checked against PyTorch"
DESCRIPTION = """\
Export a finished run's model and write model.json beside it (architecture, classes, input
size, mean/std, interpolation, crop). Before anything is written, random batches of 2 and 3
images go through the eager model and the export loaded back (onnxruntime for ONNX); the
largest absolute logit difference is printed, and an export that differs by more than --atol
is refused.

  onnx         model.onnx, dynamic batch axis; runs with onnxruntime alone
               ('regraft predict model.onnx IMAGES'); needs pip install 'regraft[export]'
  torchscript  model.pt (torch.jit.trace); torch.jit.load(PATH)
  exported     model.pt2 (torch.export, dynamic batch); torch.export.load(PATH).module()
  safetensors  model.safetensors, the state dict; see docs/export.md to load it
  hf           a folder (config.json, model.safetensors, README.md model card) that
               timm.create_model('local-dir:PATH', pretrained=True) or torchvision loads
               without regraft; refused for runs with hidden head layers or surgery

Default output: RUN/export/model.<ext> (hf: RUN/export/hf/). An export never goes into a run
folder or over another run's files. Exports are single-view: --tta is not part of them.
"""

FORMATS = ("onnx", "torchscript", "exported", "safetensors", "hf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by 'regraft train'")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="what to write (default onnx)")
    p.add_argument("--out", metavar="FILE", help="file to write, or a folder for model.<ext> (default RUN/export/; hf: the folder)")
    p.add_argument("--weights", default="best", choices=("best", "ema"), help="the best epoch's weights or the EMA of --ema (default best)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    p.add_argument("--atol", type=float, metavar="X", help="largest logit difference accepted (default 1e-3)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from regraft.export import DEFAULT_ATOL, export

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    result = export(args.run, format=args.format, out=args.out, opset=args.opset, atol=atol, weights=args.weights)
    if args.json:
        print(json.dumps({
            "path": str(result.path), "model_json": str(result.model_json), "format": result.format.value,
            "max_abs_diff": result.max_abs_diff, "atol": result.atol, "batch_sizes": list(result.batch_sizes),
            **result.details,
        }, indent=2))
        return 0
    sizes = " and ".join(map(str, result.batch_sizes))
    if result.format.value == "hf":
        files = ", ".join(result.details["files"])
        print(f"wrote {result.path}/ ({files}; {result.details['library']} layout, {result.details['weights']} weights)")
        print(f"loaded back with {result.details['loaded_with'].replace('PATH', str(result.path))}")
        print(f"max abs diff vs the run's model: {result.max_abs_diff:.3g} (batches of {sizes}; atol {result.atol:g})")
    else:
        size_mb = result.path.stat().st_size / 1e6
        print(f"wrote {result.path} ({result.format.value}, {size_mb:.1f} MB)")
        print(f"wrote {result.model_json} (classes, preprocessing)")
        print(f"max abs diff vs eager PyTorch: {result.max_abs_diff:.3g} (batches of {sizes}; atol {result.atol:g})")
    print("single view: test-time augmentation (--tta) is not part of the export")
    return 0
