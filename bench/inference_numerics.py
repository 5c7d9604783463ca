"""The numerics of inference, measured: why INFERENCE_NUMERICS is fp32 + channels_last, and what
the one decode path (JPEG draft decoding) costs and buys.

    PYTHONPATH=src python bench/inference_numerics.py [--models resnet18,efficientnet_b0] [--onnx]

Prints markdown tables (random weights, 224 px, batch 16, no downloads):

1. per model: fp32 forward time contiguous vs channels_last, their largest logit difference,
   whether channels_last results depend on the weights' layout, bf16 autocast's largest logit
   difference from fp32 (and, with ``--onnx``, onnxruntime's difference from eager fp32);
2. decoding a 4000x3000 JPEG to the 224 px evaluation input: draft decoding (regraft's one
   path) vs a full-size decode, time and largest input difference.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, cpus  # noqa: E402


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _onnx_diff(model: torch.nn.Module, x: torch.Tensor, want: torch.Tensor) -> float:
    import contextlib

    import onnxruntime as ort

    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(model, (x[:2],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - want.numpy()).max())


def model_rows(names: list[str], *, reps: int, onnx: bool) -> list[str]:
    import copy

    import timm

    from regraft.inference import INFERENCE_NUMERICS, Numerics

    rows = ["| model | fp32 contiguous s/batch | fp32 channels_last s/batch | speed-up | max logit diff CL vs contiguous "
            "| CL result independent of weight layout | bf16 max logit diff | bf16 top-1 flips | onnxruntime max diff |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        x = torch.randn(16, 3, 224, 224)
        contiguous = Numerics(precision="fp32", channels_last=False)
        cl_model = INFERENCE_NUMERICS.prepare(copy.deepcopy(model))
        t_plain = _time(lambda m=model, n=contiguous, x=x: n(m, x), reps)
        t_cl = _time(lambda m=cl_model, x=x: INFERENCE_NUMERICS(m, x), reps)
        plain, cl = contiguous(model, x), INFERENCE_NUMERICS(cl_model, x)
        mixed = INFERENCE_NUMERICS(model, x)  # contiguous weights, channels_last input
        bf16 = Numerics(precision="bf16")(cl_model, x)
        flips = int((bf16.argmax(1) != cl.argmax(1)).sum())
        ort = f"{_onnx_diff(model, x, cl):.1e}" if onnx else "—"
        same = "yes" if torch.equal(mixed, cl) else f"no ({(mixed - cl).abs().max():.1e})"
        rows.append(f"| {name} | {t_plain:.3f} | {t_cl:.3f} | {t_plain / t_cl:.2f}x | {(plain - cl).abs().max():.1e} | {same} "
                    f"| {(bf16 - cl).abs().max():.1e} | {flips}/16 | {ort} |")
    return rows


def decode_rows(*, reps: int) -> list[str]:
    from PIL import Image

    from regraft.data import build_transforms
    from regraft.data.imageio import load_image
    from regraft.zoo import DataConfig

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000]
    photo = np.stack([(xx / 16) % 256, (yy / 12) % 256, ((xx + yy) / 28) % 256], -1) + rng.normal(0, 12, (3000, 4000, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    path = Path("/tmp/regraft-bench-4000x3000.jpg")
    path.write_bytes(buf.getvalue())
    tf = build_transforms(DataConfig(), train=False)
    t_draft = _time(lambda: tf.load(str(path)), reps)
    t_full = _time(lambda: tf(load_image(path)), reps)
    diff = float((tf.load(str(path)) - tf(load_image(path))).abs().max())
    return ["| 4000x3000 JPEG -> 224 px input | draft decode (regraft) | full decode | speed-up | max input diff (normalised units) |",
            "| --- | --- | --- | --- | --- |",
            f"| one image | {t_draft:.3f} s | {t_full:.3f} s | {t_full / t_draft:.1f}x | {diff:.3f} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,efficientnet_b0,convnext_atto,vit_tiny_patch16_224")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--onnx", action="store_true", help="also export each model to ONNX and compare (slow)")
    args = ap.parse_args()
    print(f"{cpu_model()}, {cpus()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("\n".join(model_rows(args.models.split(","), reps=args.reps, onnx=args.onnx)))
    print()
    print("\n".join(decode_rows(reps=args.reps)))


if __name__ == "__main__":
    main()
