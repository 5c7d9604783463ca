"""The plain PyTorch fine-tuning loop, written the way the tutorials write it (the baseline).

As in PyTorch's "Finetuning torchvision models" and "Transfer learning" tutorials and the Dive
into Deep Learning fine-tuning chapter: ``ImageFolder`` + ``transforms.Compose`` +
``DataLoader``; a new ``nn.Linear`` head; SGD with momentum 0.9 and weight decay, the new head
at 10x the body's learning rate; per batch ``zero_grad``, forward, loss, ``backward``, ``step``,
``loss.item()`` and the batch's correct count; the best validation epoch's weights kept.

The only departures from a tutorial are the ones a fair comparison needs: the weights' own
normalisation (mean/std 0.5 for the EfficientNet-Lite0 package, not ImageNet's), the same
worker count as regraft, and, on a GPU, ``torch.autocast(bfloat16)`` and channels_last when asked.

Also a command line, used by ``bench/memory.py`` to measure the loop in its own process::

    python bench/_plain.py DATA --model resnet18 --epochs 1 --batch-size 16 --img-size 224
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE0 = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the EfficientNet-Lite0 package's normalisation


def norm_for(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return LITE0 if "lite" in model_name else IMAGENET


def transforms(img: int, mean, std, *, train: bool):
    from torchvision import transforms as T

    if train:
        return T.Compose([T.RandomResizedCrop(img), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    return T.Compose([T.Resize(int(img / 0.875)), T.CenterCrop(img), T.ToTensor(), T.Normalize(mean, std)])


def loaders(root: str | Path, *, img: int, mean, std, batch_size: int, workers: int, pin: bool = False, val: str = "val"):
    """``ImageFolder`` train and validation loaders, as in the tutorials."""
    from torchvision import datasets

    root = Path(root)
    train = datasets.ImageFolder(root / "train", transforms(img, mean, std, train=True))
    valid = datasets.ImageFolder(root / val, transforms(img, mean, std, train=False))
    kw = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    return (
        torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, **kw),
        torch.utils.data.DataLoader(valid, batch_size=batch_size, shuffle=False, **kw),
        train.classes,
    )


def build(model_name: str, num_classes: int, *, weights: str | None = None) -> nn.Module:
    """The architecture from torchvision or timm with a new ``nn.Linear`` head.

    ``weights``: a state-dict file, loaded with regraft's key matcher (the EfficientNet-Lite0
    package names its keys differently from timm; a tutorial user would rename them by hand).
    """
    import timm
    import torchvision

    if hasattr(torchvision.models, model_name):
        model = getattr(torchvision.models, model_name)(weights=None)
    else:
        model = timm.create_model(model_name, pretrained=False)
    if weights:
        from regraft.weights import load_weights

        load_weights(model, weights, head=_head_name(model))
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.reset_classifier(num_classes)
    return model


def _head_name(model: nn.Module) -> str:
    return "fc" if isinstance(getattr(model, "fc", None), nn.Linear) else "classifier"


def head_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_submodule(_head_name(model)).parameters())


def sgd(model: nn.Module, *, lr: float = 1e-3, head_mult: float = 10.0, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """SGD, momentum 0.9, weight decay; the new head at ``head_mult`` times the body's LR."""
    head = {id(p) for p in head_params(model)}
    body = [p for p in model.parameters() if id(p) not in head]
    return torch.optim.SGD(
        [{"params": body}, {"params": head_params(model), "lr": lr * head_mult}],
        lr=lr, momentum=0.9, weight_decay=weight_decay,
    )


@dataclass
class LoopOptions:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False
    channels_last: bool = False


def train_epoch(
    model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, opts: LoopOptions,
    *, on_step: Callable[[int], None] | None = None, max_steps: int | None = None,
) -> tuple[float, float]:
    """One epoch of the tutorial loop; returns (mean loss, accuracy)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, running_corrects, seen = 0.0, 0, 0
    for step, (inputs, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        inputs, labels = inputs.to(opts.device, non_blocking=True), labels.to(opts.device, non_blocking=True)
        if opts.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        with torch.autocast(opts.device.type, dtype=torch.bfloat16, enabled=opts.bf16):
            outputs = model(inputs)
            loss = criterion(outputs, labels)
        _, preds = torch.max(outputs, 1)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * inputs.size(0)
        running_corrects += int(torch.sum(preds == labels.data))
        seen += inputs.size(0)
        if on_step is not None:
            on_step(step)
    return running_loss / max(seen, 1), running_corrects / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, opts: LoopOptions, *, max_steps: int | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` in eval mode over ``loader``."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (inputs, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        inputs, labels = inputs.to(opts.device, non_blocking=True), labels.to(opts.device, non_blocking=True)
        if opts.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(opts.device.type, dtype=torch.bfloat16, enabled=opts.bf16):
            outputs = model(inputs)
        loss_sum += float(criterion(outputs.float(), labels))
        correct += int((outputs.argmax(1) == labels).sum())
        seen += inputs.size(0)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


@dataclass
class RecipeResult:
    model: nn.Module
    classes: list[str]
    history: list[dict[str, float]]
    best_val_acc: float
    final_val_acc: float
    best_epoch: int
    seconds: float


def recipe(
    root: str | Path, *, model_name: str, weights: str | None, epochs: int = 5, batch_size: int = 32,
    img: int = 224, lr: float = 1e-3, workers: int = 0, seed: int = 0, log: Callable[[str], None] = print,
) -> RecipeResult:
    """The whole tutorial recipe: new head, head at 10x LR, SGD with weight decay, ``epochs``
    epochs, the best validation epoch's weights kept (as the torchvision tutorial does)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    mean, std = norm_for(model_name)
    train_loader, val_loader, classes = loaders(root, img=img, mean=mean, std=std, batch_size=batch_size, workers=workers)
    model = build(model_name, len(classes), weights=weights)
    optimizer = sgd(model, lr=lr)
    opts = LoopOptions()
    best_acc, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(epochs):
        e0 = time.perf_counter()
        train_loss, train_acc = train_epoch(model, train_loader, optimizer, opts)
        val_loss, val_acc = evaluate(model, val_loader, opts)
        history.append(dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                            seconds=time.perf_counter() - e0))
        log(f"plain epoch {epoch + 1}/{epochs} train loss {train_loss:.4f} acc {train_acc:.3f} val loss {val_loss:.4f} "
            f"acc {val_acc:.3f} {time.perf_counter() - e0:.1f}s")
        if val_acc > best_acc:
            best_acc, best_epoch, best_state = val_acc, epoch + 1, copy.deepcopy(model.state_dict())
    final_acc = history[-1]["val_acc"] if history else float("nan")
    if best_state is not None:
        model.load_state_dict(best_state)
    return RecipeResult(model, classes, history, best_acc, final_acc, best_epoch, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the tutorial fine-tuning recipe (bench baseline)")
    p.add_argument("data")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--weights", default=None, help="a state-dict file (default: random init)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    result = recipe(args.data, model_name=args.model, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
                    img=args.img_size, lr=args.lr, workers=args.workers)
    print(f"plain recipe: best val acc {result.best_val_acc:.4f} at epoch {result.best_epoch} in {result.seconds:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
