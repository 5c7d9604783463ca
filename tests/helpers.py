"""What several test modules share: the CLI runner and its assertions, tiny models, awkward image
folders, the headless-browser check. Test modules import from here, never from each other."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tests.imagegen import make_image_folder
from tests.zygote import run_warm

__all__ = [
    "run_cli", "TINY", "ok", "user_error", "TinyResNet", "TinyVGG", "tiny_resnet", "make_image_folder",
    "make_messy_folder", "jpeg_bytes", "BAD_KINDS", "chromium", "CHROMIUM_PROBE", "images_loaded_in_chromium",
    "make_run_folder",
]

# ----------------------------------------------------------------------------- the CLI

def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run ``python -m regraft ARGS`` in a process of its own (forked warm: tests/zygote.py) and return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    warm = run_warm(list(args), cwd=cwd, env=full_env, timeout=timeout)
    if warm is not None:
        return warm
    return subprocess.run(
        [sys.executable, "-m", "regraft", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


TINY = ["--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--seed", "0", "--workers", "0"]

def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("regraft: error: ") and fragment in lines[0], lines[0]


# ----------------------------------------------------------------------------- tiny models

def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyResNet(nn.Module):
    """ResNet's layout (conv1, bn1, layer1..layer4, fc) at toy size; shared by the optim/strategies tests."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
        self.layer1, self.layer2, self.layer3, self.layer4 = _block(4, 4), _block(4, 8), _block(8, 8), _block(8, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class TinyVGG(nn.Module):
    """VGG's layout at toy size: conv blocks split by max-pool, classifier fc1, fc2, head."""

    def __init__(self, *, dropout: bool = True, blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        for _ in range(blocks - 1):
            layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        drop = [nn.Dropout()] if dropout else []
        self.classifier = nn.Sequential(
            nn.Linear(32, 16), nn.ReLU(), *drop, nn.Linear(16, 16), nn.ReLU(), *drop, nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet()


# ----------------------------------------------------------------------------- run folders without training


def make_run_folder(
    path: Path, *, model: str = "timm:test_resnet", classes: list[str] | tuple[str, ...] = ("blue", "green", "red"),
    size: int = 32, interpolation: str = "bicubic", head_hidden: tuple[int, ...] = (), head_dropout: float = 0.0,
    surgery: list | None = None, ema: bool = False, seed: int = 0, in_chans: int = 3, bit_depth: int = 8,
) -> Path:
    """A finished-looking run: model.json and model.safetensors (and model_ema.safetensors with
    ``ema``) of a zoo model with a grafted head, no training. The head's weights are scaled up so
    that top-1 is never a near tie. ``in_chans``/``bit_depth``: images of that many channels and bits."""
    from regraft import surgery as rsurgery
    from regraft import zoo
    from regraft.config import Config
    from regraft.runs import RunDir
    from regraft.training.card import model_card

    torch.manual_seed(seed)
    ref = zoo.resolve(model)
    net = zoo.build(ref, in_chans=in_chans if in_chans != 3 else None)
    head = rsurgery.replace_head(net, len(classes), hidden=head_hidden, dropout=head_dropout)
    mean, std = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)) if in_chans == 3 else ((0.5,) * in_chans, (0.25,) * in_chans)
    dcfg = zoo.DataConfig(input_size=(in_chans, size, size), mean=mean, std=std, interpolation=interpolation, crop_pct=0.875,
                          bit_depth=bit_depth)
    if surgery:
        rsurgery.apply(net, surgery, input_size=dcfg.input_size)
        head = rsurgery.find_head(net)
    with torch.no_grad():
        for m in net.get_submodule(head).modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(20)
    cfg = Config(model=model, data=str(path.parent / "data"), weights="none", head_hidden=list(head_hidden),
                 head_dropout=head_dropout, surgery=list(surgery or []))
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.write_json("model.json", model_card(cfg, ref=ref, head=head, classes=list(classes), data_config=dcfg, strategy="full"))
    run.save_weights(net.eval())
    if ema:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.5)
        run.save_weights(net, "model_ema.safetensors")
    return run.path


# ----------------------------------------------------------------------------- awkward folders


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def make_messy_folder(root: Path, *, seed: int = 0) -> dict[str, Path]:
    """train/{cat,dog} + val/{cat,dog} with one file of every awkward kind in train/cat.

    Returns the awkward files by kind: the unusable ones (``empty``, ``truncated``,
    ``text``), the odd-but-fine ones (``rgba``, ``palette``, ``cmyk``, ``deep16``, ``gray``,
    ``rotated``), the ignored ones (``hidden``, ``appledouble``, ``hidden_dir``, ``notes``) and
    ``leak`` (a copy of train/cat/good_0.jpg in val/cat).
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"good_{i}.jpg").write_bytes(jpeg_bytes(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)))
    cat = root / "train" / "cat"
    f = {k: cat / name for k, name in {
        "empty": "empty.jpg", "truncated": "trunc.jpg", "text": "text.jpg", "rgba": "rgba.png",
        "palette": "palette.png", "cmyk": "cmyk.jpg", "deep16": "deep16.png", "gray": "gray.png",
        "rotated": "rotated.jpg", "hidden": ".hidden.jpg", "appledouble": "._good_0.jpg",
        "notes": "notes.txt",
    }.items()}
    f["empty"].write_bytes(b"")
    whole = jpeg_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    f["truncated"].write_bytes(whole[: len(whole) * 6 // 10])
    f["text"].write_text("this is not an image\n")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[:, 8:, 3] = 255  # left half fully transparent (its colour, blue, must not show)
    Image.fromarray(rgba, "RGBA").save(f["rgba"])
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (8, 0, 16, 16))
    pal.save(f["palette"], transparency=0)  # index 0 (left half) transparent
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(f["cmyk"], quality=95)  # red
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(f["deep16"])  # I;16
    Image.fromarray(np.full((16, 16), 90, np.uint8), "L").save(f["gray"])
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:, :20] = (255, 0, 0)  # stored: red left, blue right; orientation 6 = turn 90° clockwise
    upright[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).save(f["rotated"], exif=exif.tobytes(), quality=95)
    f["hidden"].write_bytes(b"junk")
    f["appledouble"].write_bytes(b"junk")
    f["notes"].write_text("labels are folder names\n")
    f["hidden_dir"] = cat / ".thumbnails" / "t.jpg"
    f["hidden_dir"].parent.mkdir()
    f["hidden_dir"].write_bytes(b"junk")
    f["leak"] = root / "val" / "cat" / "leak.jpg"
    shutil.copy(cat / "good_0.jpg", f["leak"])
    return f


BAD_KINDS = {"empty": "empty", "truncated": "truncated", "text": "not-image"}


# ----------------------------------------------------------------------------- a real browser

CHROMIUM_PROBE = """<script>
window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images);
  var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var bad = all.filter(function (i) { return ok.indexOf(i) < 0; }).map(function (i) { return i.alt; });
  document.body.setAttribute("data-images", ok.length + "/" + all.length);
  document.body.setAttribute("data-broken", bad.join(","));
});
</script>
"""


def chromium() -> str | None:
    for name in (os.environ.get("REGRAFT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


def images_loaded_in_chromium(page: str, tmp_path: Path) -> tuple[int, int, str]:
    """Open ``page`` (HTML text) in headless Chromium; ``(images decoded, images in the page, broken alts)``.

    The page's CSP may forbid scripts; this copy allows one inline probe that counts the images
    the browser decoded (img-src is left as the page sets it).
    """
    browser = chromium()
    assert browser is not None, "call only when chromium() found a browser"
    probe_page = re.sub(r"script-src '[^']*'", "script-src 'unsafe-inline'", page)
    probe_page = probe_page.replace("</body>", CHROMIUM_PROBE + "</body>")
    target = tmp_path / "probe.html"
    target.write_text(probe_page, encoding="utf-8")
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", target.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="(\d+)/(\d+)"', done.stdout)
    assert match, f"chromium gave no result (exit {done.returncode}): {done.stderr[-1500:]}"
    broken = re.search(r'data-broken="([^"]*)"', done.stdout)
    return int(match.group(1)), int(match.group(2)), broken.group(1) if broken else ""


# ----------------------------------------------------------------------------- the training loop


def fit_stage(model: nn.Module, plan, train, val, *, epochs: int, run=None, state=None, name: str = "train", **stage_kw):
    """Train ``model`` with ``plan`` (optimizer, scheduler, begin_epoch) for ``epochs`` through the
    one loop on the CPU, as training does; returns the FitState."""
    from regraft.freezing import apply_bn_policy
    from regraft.training import loop
    from regraft.training.numerics import StepNumerics
    from regraft.training.processes import Processes

    device = torch.device("cpu")
    stage_kw.setdefault("after_train_mode", apply_bn_policy)
    stage = loop.Stage(
        name=name, model=model, weights=model, plan=plan, train_loader=train, val_loader=val, last_epoch=epochs,
        numerics=StepNumerics(precision=stage_kw.pop("precision", "fp32"), channels_last=False, device=device), **stage_kw,
    )
    return loop.fit(stage, procs=Processes(device=device), state=state, run=run)


class SimplePlan:
    """The smallest plan the loop needs: SGD with momentum, an optional linear decay of the LR to 0
    over ``steps``, ``begin_epoch``, ``state_dict``."""

    def __init__(self, model: nn.Module, lr: float = 0.05, steps: int | None = 400) -> None:
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, 1 - s / steps))
                          if steps else None)

    def begin_epoch(self, epoch):
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def save_tiny_pretrained(path: Path, seed: int = 5) -> Path:
    """A ``test_resnet`` checkpoint with a 10-class head: the "pretrained weights" of probe runs."""
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), path)
    return path

