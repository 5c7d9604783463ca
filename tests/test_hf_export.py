"""regraft export --format hf: a folder timm (or torchvision) loads without regraft.

The decisive test loads the folder in a fresh interpreter with timm alone (regraft is never
imported there) and compares its logits with the run's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from regraft.errors import ExportError
from regraft.export import export
from regraft.inference import load_run
from tests.helpers import make_run_folder, ok, run_cli, user_error
from tests.imagegen import class_colour, make_image

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = make_run_folder(tmp_path_factory.mktemp("hf") / "run", classes=CLASSES, size=32, ema=True)
    (run / "summary.json").write_text(json.dumps({"best_val_acc": 0.875, "best_val_loss": 0.3125, "best_epoch": 3, "epochs": 4,
                                                  "n_train": 40, "n_val": 16, "probe_epochs": 0}))
    return run


@pytest.fixture(scope="module")
def hf_folder(run_dir) -> Path:
    result = export(run_dir, format="hf")
    assert result.path == run_dir / "export" / "hf" and result.model_json == result.path / "config.json"
    assert result.max_abs_diff < 1e-5 and result.details["library"] == "timm"
    return result.path


def test_the_hf_folder_loads_with_timm_alone_and_gives_the_runs_logits(run_dir, hf_folder, tmp_path):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        want = load_run(run_dir).model(x).numpy()
    code = (
        "import sys, json, numpy as np, torch, timm\n"
        f"model = timm.create_model('local-dir:{hf_folder}', pretrained=True).eval()\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "with torch.no_grad():\n"
        "    out = model(x).numpy()\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n"
        "cfg = timm.data.resolve_data_config(model=model)\n"
        "print(json.dumps({'regraft': any(m.startswith('regraft') for m in sys.modules), 'labels': model.pretrained_cfg.get('label_names'),\n"
        "                  'cfg': {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["regraft"] is False and report["labels"] == CLASSES
    assert report["cfg"] == {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                             "crop_pct": 0.875, "crop_mode": "center"}
    assert np.abs(np.load(tmp_path / "out.npy") - want).max() < 1e-5


def test_timms_own_preprocessing_matches_regrafts_on_images_decoded_at_full_size(run_dir, hf_folder, tmp_path):
    import timm

    model = timm.create_model(f"local-dir:{hf_folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    regraft_tf = load_run(run_dir).transform()
    rng = np.random.default_rng(0)
    for size in (40, 56):  # small enough that JPEG draft decoding does not apply
        path = tmp_path / f"{size}.png"
        make_image(class_colour("red"), size, rng).crop((0, 0, size, size - 7)).save(path)
        from PIL import Image

        ours, theirs = regraft_tf.load(str(path)), transform(Image.open(path).convert("RGB"))
        assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())


def test_the_model_card_reports_the_runs_figures_and_how_to_load(hf_folder):
    card = (hf_folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    for text in ("validation accuracy (best epoch 3) | 0.8750", "| 40 / 16 |", "`blue`, `green`, `red`",
                 'timm.create_model("local-dir:PATH", pretrained=True)', "pretrained_cfg_overlay=dict(file=",
                 "centre-crop 32x32", "test-time augmentation", "largest logit difference"):
        assert text in card, text
    config = json.loads((hf_folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["regraft"]["views"] == 1 and config["regraft"]["weights"] == "best"
    assert not {"url", "hf_hub_id", "tag", "license", "test_input_size"} & set(config["pretrained_cfg"])


def test_the_older_timm_line_of_the_model_card_loads_the_same_model(run_dir, hf_folder):
    import timm

    card = (hf_folder / "README.md").read_text()
    line = 'pretrained_cfg_overlay=dict(file="PATH/model.safetensors", num_classes=3)'
    assert 'timm.create_model("test_resnet", pretrained=True, num_classes=3,' in card and line in card
    model = timm.create_model("test_resnet", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(hf_folder / "model.safetensors"), num_classes=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), load_run(run_dir).model(x), atol=1e-5)


def test_ema_weights_and_a_dropout_head_export_and_reload(tmp_path):
    import timm

    run = make_run_folder(tmp_path / "drop", classes=CLASSES, size=32, head_dropout=0.3, ema=True)
    result = export(run, format="hf", weights="ema", out=tmp_path / "out")
    model = timm.create_model(f"local-dir:{result.path}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), load_run(run, weights="ema").model(x), atol=1e-5)
    assert "EMA weights" in (result.path / "README.md").read_text()
    assert json.loads((result.path / "config.json").read_text())["regraft"]["weights"] == "ema"
    export(run, format="hf", out=tmp_path / "out")  # an earlier hf export is replaced


def test_frozen_batchnorm_layers_get_the_builders_counters_back(tmp_path):
    import timm

    from regraft.freezing import swap_frozen_bn
    from regraft.runs import RunDir

    run = make_run_folder(tmp_path / "frozen", classes=CLASSES, size=32)
    card = json.loads((run / "model.json").read_text())
    card["architecture"]["frozen_bn"] = ["bn1", "layer1.0.bn1"]
    model = load_run(run).model
    assert swap_frozen_bn(model, card["architecture"]["frozen_bn"]) == ["bn1", "layer1.0.bn1"]
    RunDir(run).write_json("model.json", card)
    RunDir(run).save_weights(model)
    result = export(run, format="hf")
    reloaded = timm.create_model(f"local-dir:{result.path}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), load_run(run).model(x), atol=1e-5)


def test_a_torchvision_run_gives_the_two_documented_lines(tmp_path):
    import torchvision
    from safetensors.torch import load_file

    run = make_run_folder(tmp_path / "tv", model="torchvision:resnet18", classes=["a", "b"], size=32, interpolation="bilinear")
    result = export(run, format="hf")
    config = json.loads((result.path / "config.json").read_text())
    assert config["library_name"] == "torchvision" and "architecture" not in config  # timm must not mistake it for its resnet18
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=2)
    model.load_state_dict(load_file(str(result.path / "model.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), load_run(run).model(x), atol=1e-5)
    assert 'torchvision.models.get_model("resnet18", weights=None, num_classes=2)' in (result.path / "README.md").read_text()


def test_runs_the_builders_cannot_make_are_refused_with_the_reason(tmp_path):
    hidden = make_run_folder(tmp_path / "hidden", classes=CLASSES, size=32, head_hidden=(16,))
    with pytest.raises(ExportError, match=r"--format hf cannot write this run: its head has hidden layers \(head_hidden \[16\]\).*use --format onnx or exported"):
        export(hidden, format="hf")
    cut = make_run_folder(tmp_path / "cut", classes=CLASSES, size=32, surgery=[{"op": "insert_before", "path": "fc", "module": {"type": "Dropout", "p": 0.1}}])
    with pytest.raises(ExportError, match=r"surgery changed the network \(1 operation\(s\)\)"):
        export(cut, format="hf")
    assert not (hidden / "export").exists() and not (cut / "export").exists()


def test_an_hf_export_goes_into_a_folder_of_its_own(run_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"already holds other files; --format hf writes config\.json, model\.safetensors and README\.md"):
        export(run_dir, format="hf", out=busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_cli_hf_export_and_refusal(run_dir, tmp_path):
    out = tmp_path / "deploy"
    done = ok(run_cli("export", str(run_dir), "--format", "hf", "--out", str(out)))
    assert f"wrote {out}/ (README.md, config.json, model.safetensors; timm layout, best weights)" in done.stdout
    assert f"timm.create_model('local-dir:{out}', pretrained=True)" in done.stdout and "single view" in done.stdout
    hidden = make_run_folder(tmp_path / "hidden", classes=CLASSES, size=32, head_hidden=(8,))
    user_error(run_cli("export", str(hidden), "--format", "hf"), "its head has hidden layers")
