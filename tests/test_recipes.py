"""The five tutorial recipes (recipes/*.yaml, docs/recipes/*.md), each run on tiny generated data.

Every test runs its recipe through the real CLI, overriding only what CI's two CPU cores need
(32 px, 1 epoch, small batches, no loader workers, and no network: VGG loads ``--weights none``,
ResNet-18's ``IMAGENET1K_V1`` comes from a ``TORCH_HOME`` cache holding a random ResNet-18 under
the real file name). It then runs the Python of the recipe's page, with ``regraft.training.run.train``
patched to record each Config and, where cheap enough, to train it with the same overrides.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import regraft.training.run
from regraft import zoo
from regraft.config import Config, load_config
from tests.helpers import run_cli
from tests.imagegen import make_image_folder

pytestmark = pytest.mark.slow  # end-to-end: trains real (tiny) runs through the CLI

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DOCS = ROOT / "docs" / "recipes"
SCENARIOS = ("vgg19_two_ways", "vgg16_cifar10", "hotdog_resnet18", "mobilenet_v2_local", "backbone_neck")

# what CI's CPUs need, and nothing else
CI = {"img_size": 32, "epochs": 1, "batch_size": 8, "workers": 0}
CI_FLAGS = ["--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A torch hub cache whose ResNet-18 ``IMAGENET1K_V1`` file is a random ResNet-18 (no network here)."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(zoo.build("resnet18").state_dict(), checkpoints / "resnet18-f37072fd.pth")
    return home


@pytest.fixture
def offline_weights(torch_home, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


# ---------------------------------------------------------------------------- helpers


def regraft_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m regraft ARGS`` on one thread (TORCH_HOME is inherited from the test's env)."""
    proc = run_cli(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def recipe(name: str, **overrides: Any) -> Config:
    return load_config(RECIPES / f"{name}.yaml", overrides or None)


def settings(cfg: Config, *ignore: str) -> dict[str, Any]:
    """A config's values without where the data and the run folder are."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out", *ignore)}


def read_json(run: Path, name: str) -> Any:
    return json.loads((run / name).read_text())


def audit_rows(run: Path) -> list[dict[str, Any]]:
    return read_json(run, "freeze_audit.json")


def trainable_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["trainable_params"] > 0]


def assert_no_frozen_in_optimizer(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["lr"] is not None:  # an optimizer group
            assert r["frozen_params"] == 0, r
        else:
            assert r["trainable_params"] == 0, r


def doc_python(name: str, constants: dict[str, Any]) -> str:
    """The ``python`` blocks of docs/recipes/NAME.md, with the named top-level constants replaced."""
    text = (DOCS / f"{name}.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    assert code, f"docs/recipes/{name}.md has no python block"
    for key, value in constants.items():
        code, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", code, flags=re.M)
        assert n == 1, f"docs/recipes/{name}.md: constant {key} not found once"
    return code


def run_doc(name: str, constants: dict[str, Any], monkeypatch, cwd: Path, *, train: bool) -> tuple[dict, list[Config]]:
    """Execute a page's Python in ``cwd``; ``train=False`` records each run's Config without training."""
    calls: list[Config] = []
    real: Callable = regraft.training.run.train

    def recording_train(cfg: Config, **kwargs: Any):
        calls.append(cfg)
        return real(cfg.merged(CI), **kwargs) if train else None

    monkeypatch.setattr(regraft.training.run, "train", recording_train)
    monkeypatch.chdir(cwd)
    namespace: dict[str, Any] = {"__name__": f"docs_recipes_{name}"}
    exec(compile(doc_python(name, constants), str(DOCS / f"{name}.md"), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace, calls


def drop_weights(run: Path) -> None:
    """VGG runs leave ~2 GB of weights and checkpoint; pytest keeps its last temp folders."""
    (run / "model.safetensors").unlink()
    (run / "checkpoints" / "last.pt").unlink()


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        names = f.keys()  # a safe_open handle is not iterable itself
        return {k: tuple(f.get_slice(k).get_shape()) for k in names}


# ---------------------------------------------------------------------------- the pages


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_page_shows_its_recipe_verbatim(name: str) -> None:
    page = (DOCS / f"{name}.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, flags=re.S)
    assert (RECIPES / f"{name}.yaml").read_text() in blocks
    assert f"docs/recipes/{name}.md" in (RECIPES / f"{name}.yaml").read_text()
    assert f"({name}.md)" in (DOCS / "README.md").read_text()
    recipe(name)  # a valid Config


# ---------------------------------------------------------------------------- 1. VGG-19, two ways

VGG19_CLASSIFIER_2 = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 2 + 2)


def test_vgg19_two_ways(tmp_path, monkeypatch) -> None:
    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=4, val_per_class=2)
    run = tmp_path / "run"
    regraft_cli("train", str(data), "--config", str(RECIPES / "vgg19_two_ways.yaml"), "--weights", "none",
                *CI_FLAGS, "--out", str(run))

    # way 2: fc1, fc2 and the new output layer train; the optimizer holds nothing frozen
    rows = audit_rows(run)
    assert_no_frozen_in_optimizer(rows)
    assert {r["stage"] for r in trainable_rows(rows)} == {"fc1", "fc2", "head"}
    assert {r["stage"] for r in rows if r["lr"] is None} == {f"block{i}" for i in range(1, 6)}
    assert {r["group"]: r["lr"] for r in trainable_rows(rows)} == {
        "fc1": 5e-5, "fc1/no_decay": 5e-5, "fc2": 5e-5, "fc2/no_decay": 5e-5, "head": 5e-4, "head/no_decay": 5e-4}
    assert sum(r["trainable_params"] for r in rows) == VGG19_CLASSIFIER_2
    assert read_json(run, "summary.json")["trainable_params"] == VGG19_CLASSIFIER_2
    # preprocessing as the weights expect, at the test's 32 px
    pre, want = read_json(run, "model.json")["preprocessing"], zoo.data_config("vgg19", weights="IMAGENET1K_V1")
    assert (pre["mean"], pre["std"], pre["interpolation"], pre["crop_pct"]) == (IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875)
    assert (list(want.mean), list(want.std), want.interpolation, want.crop_pct, want.input_size) == (
        pre["mean"], pre["std"], pre["interpolation"], pre["crop_pct"], (3, 224, 224))
    assert pre["input_size"] == [3, 32, 32] and pre["resize"] == 36

    # the page's Python: the same layers, the same LRs, the same settings as the recipe
    ns, calls = run_doc("vgg19_two_ways", {"DATA": str(data), "WEIGHTS": "none"}, monkeypatch, tmp_path, train=False)
    assert ns["plan"].trainable == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert {g["name"]: g["lr"] for g in ns["groups"]} == {
        "fc1": 5e-5, "fc1/no_decay": 5e-5, "fc2": 5e-5, "fc2/no_decay": 5e-5, "head": 5e-4, "head/no_decay": 5e-4}
    assert all(p.requires_grad for g in ns["groups"] for p in g["params"])
    assert sum(len(g["params"]) for g in ns["groups"]) == 6
    assert [settings(c) for c in calls] == [settings(recipe("vgg19_two_ways", weights="none"))]

    # way 1 (--strategy full): nothing frozen, the new layer still at 10x
    from regraft.strategies import plan

    full = plan(ns["model"], strategy="full", cfg=recipe("vgg19_two_ways", strategy="full"), steps_per_epoch=1).audit()
    assert all(r["frozen_params"] == 0 and r["lr"] is not None for r in full)
    assert {r["lr"] for r in full if r["stage"] == "head"} == {5e-4}
    assert {r["lr"] for r in full if r["stage"] != "head"} == {5e-5}
    assert sum(r["trainable_params"] for r in full) == sum(p.numel() for p in ns["model"].parameters())
    drop_weights(run)


# ---------------------------------------------------------------------------- 2. VGG-16 to 10 classes

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_vgg16_cifar10(tmp_path, monkeypatch) -> None:
    data = make_image_folder(tmp_path / "cifar10", classes=CIFAR10, per_class=2, val_name="test", val_per_class=1)
    run = tmp_path / "run"
    flags = [*CI_FLAGS[:4], "--batch-size", "20", "--workers", "0"]  # 20 images: one step
    proc = regraft_cli("train", str(data), "--config", str(RECIPES / "vgg16_cifar10.yaml"), "--weights", "none",
                       *flags, "--out", str(run))

    # a loss line per epoch
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"epoch \d+/1 +train loss \d+\.\d+", ln)]
    assert len(lines) == 1
    with (run / "metrics.csv").open() as f:
        assert [math.isfinite(float(r["train_loss"])) for r in csv.DictReader(f)] == [True]

    # the structure after surgery: the first dropout gone, the new output layer moved up to classifier.5
    diff = read_json(run, "surgery.json")
    assert [op.split(":")[0] for op in diff["ops"]] == ["delete classifier.2"]
    assert [(r["path"], r["type"]) for r in diff["removed"]] == [("classifier.2", "Dropout")]
    moved = {(m["from"], m["to"]) for m in diff["moved"]}
    assert {("classifier.6", "classifier.5"), ("classifier.3", "classifier.2")} <= moved
    assert diff["out_shape_after"] == [2, 10]
    assert read_json(run, "model.json")["architecture"]["surgery"] == recipe("vgg16_cifar10").surgery

    # features frozen; the whole classifier at one LR, SGD with momentum 0.9, no weight decay
    rows = audit_rows(run)
    assert_no_frozen_in_optimizer(rows)
    assert {r["stage"] for r in rows if r["lr"] is None} == {f"block{i}" for i in range(1, 6)}
    assert {(r["lr"], r["weight_decay"]) for r in trainable_rows(rows)} == {(0.001, 0.0)}
    assert sum(r["trainable_params"] for r in rows) == 102_764_544 + 16_781_312 + 40_970
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert (resolved["optimizer"], resolved["momentum"], resolved["strategy"]) == ("sgd", 0.9, "head")

    # the page's Python, step by step: the same structure, parameter for parameter
    ns, calls = run_doc("vgg16_cifar10", {"DATA": str(data), "WEIGHTS": "none", "IMG": 32, "EPOCHS": 1, "BATCH": 20},
                        monkeypatch, tmp_path, train=False)
    model = ns["model"]
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Linear", "ReLU", "Dropout", "Linear"]
    assert model.classifier[5].out_features == 10
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == safetensors_shapes(run / "model.safetensors")
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    group = ns["optimizer"].param_groups[0]
    assert (group["lr"], group["momentum"], len(ns["optimizer"].param_groups)) == (0.001, 0.9, 1)
    assert len(ns["losses"]) == 1 and math.isfinite(ns["losses"][0])
    assert [settings(c) for c in calls] == [settings(recipe("vgg16_cifar10", weights="none"))]
    drop_weights(run)


# ---------------------------------------------------------------------------- 3. ResNet-18, hot dog


def hotdog(root: Path) -> Path:
    return make_image_folder(root, classes=("hotdog", "not-hotdog"), per_class=6, val_name="test", val_per_class=3)


def test_hotdog_resnet18(tmp_path, monkeypatch, offline_weights) -> None:
    data = hotdog(tmp_path / "hotdog")
    run = tmp_path / "run"
    proc = regraft_cli("train", str(data), "--config", str(RECIPES / "hotdog_resnet18.yaml"), *CI_FLAGS, "--out", str(run))

    # the ImageNet weights, all but the 1000-class fc, which is dropped by shape
    report = read_json(run, "load_report.json")
    assert report["source"] == "IMAGENET1K_V1" and report["coverage"] == 1.0
    assert len(report["loaded"]) == 120 and report["unexpected"] == [] and report["mismatched"] == {}
    assert report["missing"] == ["fc.weight", "fc.bias"]
    assert sorted(report["skipped"]) == ["fc.bias", "fc.weight"]
    assert all("old head" in v for v in report["skipped"].values())
    # every layer trains; fc at 10x; weight decay on weights only
    rows = audit_rows(run)
    assert all(r["frozen_params"] == 0 for r in rows)
    assert {r["lr"] for r in rows if r["stage"] == "head"} == {6.4e-2}
    assert {r["lr"] for r in rows if r["stage"] != "head"} == {6.4e-3}
    assert {r["weight_decay"] for r in rows if r["group"].endswith("/no_decay")} == {0.0}
    assert {r["weight_decay"] for r in rows if not r["group"].endswith("/no_decay")} == {0.001}
    # Resize(256) + CenterCrop(224) scaled to 32 px, ImageNet normalisation; test/ is the validation split
    pre = read_json(run, "model.json")["preprocessing"]
    assert (pre["resize"], pre["input_size"], pre["mean"], pre["std"]) == (36, [3, 32, 32], IMAGENET_MEAN, IMAGENET_STD)
    summary = read_json(run, "summary.json")
    assert summary["n_val"] == 6 and summary["images_per_sec"] > 0
    with (run / "metrics.csv").open() as f:
        assert {"train_loss", "train_acc", "val_acc", "images_per_sec"} <= set(next(csv.DictReader(f)))
    assert re.search(r"epoch 1/1 +train loss .* acc .* val loss .* acc .* img/s", proc.stdout)

    # the page's Python: Xavier head, the groups, then both runs, trained
    ns, calls = run_doc("hotdog_resnet18", {"DATA": str(data)}, monkeypatch, tmp_path, train=True)
    fc = ns["model"].fc
    assert torch.all(fc.bias == 0) and fc.weight.abs().max() <= math.sqrt(6 / (512 + 2))
    assert {g["name"]: g["lr"] for g in ns["groups"]}["head"] == 6.4e-2
    assert {g["lr"] for g in ns["groups"] if g["stage"] != "head"} == {6.4e-3}
    finetune, scratch = calls
    assert settings(finetune) == settings(recipe("hotdog_resnet18"))
    assert settings(scratch) == settings(recipe("hotdog_resnet18", strategy="scratch", weights="none", lr=6.4e-2))
    scratch_rows = audit_rows(ns["scratch"].run.path)
    assert {r["lr"] for r in scratch_rows} == {6.4e-2}  # one LR for all
    assert ns["scratch"].summary["trunk_coverage"] == 0.0 and ns["finetune"].summary["trunk_coverage"] == 1.0
    assert (tmp_path / "runs" / "hotdog-comparison.png").stat().st_size > 0


# ---------------------------------------------------------------------------- 4. MobileNetV2, local .pth


def test_mobilenet_v2_local(tmp_path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    checkpoint = zoo.build("mobilenet_v2").state_dict()
    torch.save(checkpoint, work / "mobilenet_v2.pth")  # the recipe's own `weights: mobilenet_v2.pth`
    data = make_image_folder(tmp_path / "flowers", classes=("daisy", "roses", "tulips"), per_class=4,
                             val_per_class=2)
    out = tmp_path / "mnv2"
    proc = regraft_cli("compare", str(data), "--config", str(RECIPES / "mobilenet_v2_local.yaml"),
                       "--strategies", "head,partial,full", *CI_FLAGS, "--out", str(out), cwd=work)

    # classifier keys dropped by name; a non-strict load that shows missing and unexpected keys
    assert re.search(r"skipped +2 +classifier\.1\.weight \(--skip classifier\)", proc.stdout)
    assert re.search(r"missing +2 +classifier\.1\.weight, classifier\.1\.bias", proc.stdout)
    assert re.search(r"unexpected +0", proc.stdout)
    stages = {"head": {"head"}, "partial": {f"features.{i}" for i in range(14, 19)} | {"head"},
              "full": {f"features.{i}" for i in range(19)} | {"head"}}
    for strategy, trains in stages.items():
        run = out / strategy
        report = read_json(run, "load_report.json")
        assert report["missing"] == ["classifier.1.weight", "classifier.1.bias"] and report["unexpected"] == []
        assert sorted(report["skipped"]) == ["classifier.1.bias", "classifier.1.weight"]
        assert all("--skip classifier" in v for v in report["skipped"].values())
        rows = audit_rows(run)
        assert_no_frozen_in_optimizer(rows)
        assert {r["stage"] for r in trainable_rows(rows)} == trains
        assert {r["lr"] for r in trainable_rows(rows)} == {1e-4}
        # what is frozen is bitwise the checkpoint (BatchNorm statistics included); what trains moved
        weights = load_file(str(run / "model.safetensors"))
        frozen = [k for k in checkpoint if k.startswith("features.") and ".".join(k.split(".")[:2]) not in trains]
        assert frozen if strategy != "full" else not frozen
        assert all(torch.equal(weights[k], checkpoint[k]) for k in frozen)
        assert torch.equal(weights["features.18.0.weight"], checkpoint["features.18.0.weight"]) == (strategy == "head")
    assert (out / "comparison.png").stat().st_size > 0
    assert all(f"| {s} |" in (out / "comparison.md").read_text() for s in stages)

    # the page's Python: by name and by shape, then the three runs through regraft.training.compare
    ns, calls = run_doc("mobilenet_v2_local", {"DATA": str(data)}, monkeypatch, work, train=True)
    assert ns["report"].missing == ["classifier.1.weight", "classifier.1.bias"] and ns["report"].unexpected == []
    assert all("--skip" in v for v in ns["report"].skipped.values()) and len(ns["report"].skipped) == 2
    assert sorted(ns["by_shape"].skipped) == ["classifier.1.bias", "classifier.1.weight"]
    assert all("old head: 1000 classes" in v for v in ns["by_shape"].skipped.values())
    assert [c.strategy for c in calls] == ["head", "partial", "full"]
    want = settings(recipe("mobilenet_v2_local"), "strategy", "overwrite")
    assert all(settings(c, "strategy", "overwrite") == want for c in calls)
    assert [s["strategy"] for s in ns["result"].summaries] == ["head", "partial", "full"]


# ---------------------------------------------------------------------------- 5. a backbone for another task


def test_backbone_neck(tmp_path, monkeypatch, offline_weights) -> None:
    data = make_image_folder(tmp_path / "parts", classes=("blue", "red"), per_class=6, val_per_class=3)
    run = tmp_path / "run"
    regraft_cli("train", str(data), "--config", str(RECIPES / "backbone_neck.yaml"), *CI_FLAGS, "--out", str(run))

    diff = read_json(run, "surgery.json")
    assert [op.split(":")[0] for op in diff["ops"]] == ["extract upto layer3", "insert_before head.0"]
    assert read_json(run, "load_report.json")["coverage"] == 1.0
    # the backbone frozen, two LRs for the new layers: the neck at lr, the final Linear at 10x
    rows = audit_rows(run)
    assert_no_frozen_in_optimizer(rows)
    # the trunk keeps ResNet-18's stages up to layer3 (extract keeps the stages of what it keeps)
    frozen = [(r["group"], r["frozen_params"]) for r in rows if r["lr"] is None]
    assert [g for g, _ in frozen] == ["stem", "layer1", "layer2", "layer3"] and sum(n for _, n in frozen) == 2_782_784
    by_lr: dict[float, int] = {}
    for r in trainable_rows(rows):
        by_lr[r["lr"]] = by_lr.get(r["lr"], 0) + r["trainable_params"]
    assert by_lr == {1e-3: 256 * 256 * 9 + 2 * 256, 1e-2: 256 * 2 + 2}

    # the run loads back as the new model; its trunk is bitwise the pretrained one
    from regraft.inference import load_run
    from regraft.surgery import Grafted

    model = load_run(run).model
    assert isinstance(model, Grafted) and not hasattr(model.trunk, "layer4")
    assert [type(m).__name__ for m in model.head] == ["Sequential", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert [type(m).__name__ for m in model.head[0]] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert (model.head[3].in_features, model.head[3].out_features) == (256, 2)
    pretrained = torch.load(offline_weights, weights_only=True)
    trunk = {k.removeprefix("trunk."): v for k, v in model.state_dict().items() if k.startswith("trunk.")}
    assert len(trunk) == len([k for k in pretrained if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")])
    assert all(torch.equal(v, pretrained[k]) for k, v in trunk.items())
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)

    # the page's Python: the recipe as one call, then a feature-pyramid neck loaded non-strictly
    ns, calls = run_doc("backbone_neck", {"DATA": str(data)}, monkeypatch, tmp_path, train=True)
    assert settings(calls[0]) == settings(recipe("backbone_neck"))
    report = ns["report"]
    assert "backbone.conv1.weight" in report.loaded and report.prefixes
    assert report.unexpected and all(k.startswith("layer4.") for k in report.unexpected)
    assert {k.split(".")[0] for k in report.missing} == {"neck", "fc"}
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert {g["name"]: g["lr"] for g in ns["groups"]} == {
        "neck": 1e-3, "neck/no_decay": 1e-3, "head": 1e-2, "head/no_decay": 1e-2}
    fpn_rows = audit_rows(ns["pyramid"].run.path)
    assert [r["group"] for r in fpn_rows if r["lr"] is None] == ["backbone"]
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ns["reloaded"].model(x), ns["model"].eval()(x), atol=1e-6)
