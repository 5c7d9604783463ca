"""regraft models: list model names in torchvision and timm."""

from __future__ import annotations

import argparse

HELP = "list model names in torchvision and timm (glob or substring)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="glob ('*resnet*') or substring; all models when omitted")
    p.add_argument("--zoo", choices=("torchvision", "timm"), help="list only one zoo")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from regraft.zoo import list_models

    refs = list_models(args.pattern, zoo=args.zoo)
    if args.json:
        print(json.dumps([{"zoo": r.zoo, "name": r.name} for r in refs], indent=2))
        return 0
    if not refs:
        print(f"no model matches '{args.pattern}'")
        return 1
    for r in refs:
        print(f"{r.zoo:<12} {r.name}")
    n_tv = sum(r.zoo == "torchvision" for r in refs)
    print(f"{len(refs)} models ({n_tv} torchvision, {len(refs) - n_tv} timm); use 'timm:NAME' or 'torchvision:NAME' to pick a zoo")
    return 0
