"""``--in-chans`` end to end through the CLI, on generated 1-channel (8- and 16-bit PNG) and
4-channel (16-bit TIFF) images: training learns, eval reproduces summary.json, ``predict RUN``
and ``predict model.onnx`` agree, the hf export loads with timm or torchvision alone, a colour
image given to a 1-channel run is read as its luminance (docs/channels.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regraft.inference import load_run
from tests.helpers import TINY, make_run_folder, ok, run_cli
from tests.imagegen import make_band_folder

KINDS = {  # name: (channels, bits, file type, what model.json says about reading and mean/std)
    "gray8": (1, 8, ".png", "L", "weights: the mean of the 3 RGB values"),
    "gray16": (1, 16, ".png", "I;16", "weights: the mean of the 3 RGB values"),
    "bands16": (4, 16, ".tif", "bands;16", "data: 48 of 48 training images"),
}


@pytest.fixture(scope="module", params=list(KINDS))
def trained(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """A run per kind of image: scratch for the 1-channel ones; the 4-channel one from "pretrained"
    3-channel weights (a file of test_resnet's own initialisation), whose first conv is adapted."""
    kind = request.param
    channels, bits, ext, _, _ = KINDS[kind]
    root = tmp_path_factory.mktemp(kind)
    data = make_band_folder(root / "data", channels=channels, depth=bits, ext=ext, per_class=24, val_per_class=8)
    if channels == 1:
        weights = ["--weights", "none", "--strategy", "scratch"]
    else:
        from safetensors.torch import save_file

        from regraft import zoo

        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in zoo.build("timm:test_resnet").state_dict().items()}, root / "rgb.safetensors")
        weights = ["--weights", str(root / "rgb.safetensors"), "--strategy", "full"]
    ok(run_cli("train", str(data), *TINY, *weights, "--in-chans", str(channels), "--lr", "3e-3", "--epochs", "5",
               "--out", str(root / "run"), "-q"))
    return kind, root / "run", data / "val"


@pytest.mark.slow
def test_training_learns_and_the_card_says_how_images_are_read(trained):
    kind, run, _ = trained
    channels, bits, _, mode, stats = KINDS[kind]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_acc"] >= 0.75, summary  # chance is 0.5
    pre = json.loads((run / "model.json").read_text())["preprocessing"]
    assert (pre["channels"], pre["bit_depth"], pre["mode"], pre["mean_std_from"]) == (channels, bits, mode, stats)
    assert pre["input_size"][0] == channels == len(pre["mean"]) == len(pre["std"])
    if channels == 4:
        adapted = json.loads((run / "load_report.json").read_text())["adapted"]
        assert adapted == {"conv1.0.weight": "[16, 3, 3, 3] -> [16, 4, 3, 3]: channel i takes the RGB filter of channel i mod 3, "
                                             "all scaled by 3/4 (4 channels from 3)"}


@pytest.mark.slow
def test_eval_reproduces_the_summary(trained):
    _, run, _ = trained
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads(ok(run_cli("eval", str(run), "--json")).stdout)
    assert metrics["accuracy"] == summary["best_val_acc"]
    assert metrics["loss"] == pytest.approx(summary["best_val_loss"], abs=1e-5)
    assert "reproduced" in ok(run_cli("eval", str(run))).stdout


@pytest.mark.slow
def test_predict_from_the_run_and_from_its_onnx_export_agree(trained):
    _, run, val = trained
    ok(run_cli("export", str(run), "--format", "onnx"))
    eager = json.loads(ok(run_cli("predict", str(run), str(val), "--json", "--topk", "2")).stdout)
    onnx = json.loads(ok(run_cli("predict", str(run / "export" / "model.onnx"), str(val), "--json", "--topk", "2")).stdout)
    assert [r["path"] for r in eager] == [r["path"] for r in onnx] and len(eager) == 16
    for a, b in zip(eager, onnx, strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"], strict=True)) <= 1e-4


@pytest.mark.slow
def test_the_hf_export_loads_with_timm_alone(trained, tmp_path):
    kind, run, _ = trained
    channels = KINDS[kind][0]
    ok(run_cli("export", str(run), "--format", "hf"))
    folder = run / "export" / "hf"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"] == {"in_chans": channels} and config["pretrained_cfg"]["input_size"][0] == channels
    x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        want = load_run(run).model(x).numpy()
    code = (
        "import sys, numpy as np, torch, timm\n"
        f"model = timm.create_model('local-dir:{folder}', pretrained=True).eval()\n"
        f"out = model(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))).detach().numpy()\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n"
        "assert not any(m.startswith('regraft') for m in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(tmp_path / "out.npy") - want).max() < 1e-5


@pytest.mark.slow
def test_a_colour_image_is_read_as_its_luminance_by_a_one_channel_run_and_refused_by_a_four_channel_one(trained, tmp_path):
    kind, run, _ = trained
    colour = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    Image.fromarray(colour).convert("L").save(tmp_path / "gray.png")
    if KINDS[kind][0] == 1:
        both = json.loads(ok(run_cli("predict", str(run), str(tmp_path / "colour.png"), str(tmp_path / "gray.png"), "--json")).stdout)
        assert both[0]["top"] == both[1]["top"]
        return
    done = run_cli("predict", str(run), str(tmp_path / "colour.png"), "--json")
    assert done.returncode == 1  # nothing could be predicted
    assert "it has 3 channels (RGB) but the model takes 4" in json.loads(done.stdout)[0]["error"]


@pytest.mark.slow
def test_a_torchvision_run_of_four_channels_exports_the_lines_that_rebuild_it(tmp_path):
    run = make_run_folder(tmp_path / "run", model="resnet18", classes=("a", "b"), in_chans=4, bit_depth=16)
    ok(run_cli("export", str(run), "--format", "hf"))
    readme = (run / "export" / "hf" / "README.md").read_text()
    lines = readme.split("```python\n")[1].split("```")[0].replace("PATH", str(run / "export" / "hf"))
    assert "model.conv1 = torch.nn.Conv2d(4, 64, kernel_size=(7, 7)" in lines
    assert "divide by 65535" in readme and "4 bands" in readme
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        want = load_run(run).model(x).numpy()
    code = lines + f"import numpy as np\nnp.save({str(tmp_path / 'o.npy')!r}, model(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))).detach().numpy())\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(tmp_path / "o.npy") - want).max() < 1e-5
