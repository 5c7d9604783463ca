"""One answer everywhere, end to end, and test-time augmentation.

The slow tests train a tiny run in bf16 (so training's numerics differ from inference's)
through the CLI on JPEGs larger than its input, and check that eval reproduces its summary and
that predict from the run and from its ONNX export agree. The TTA tests use a constructed model
whose mirrored view outvotes the plain one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from regraft.inference import evaluate_run, load_run, predict
from tests.helpers import TINY, ok, run_cli, user_error
from tests.imagegen import class_colour, make_photo

# ----------------------------------------------------------------------------- TTA on a constructed case


class LeftBright(nn.Module):
    """Says class 0 when the left half of the input is brighter than the right, else class 1
    (a constant logit of 3); a mirrored view thus votes against the plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(20.0))
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        z = torch.relu(x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))) * self.gain
        return self.fc(torch.stack([z, torch.full_like(z, 3.0)], dim=1))


@pytest.fixture(scope="module")
def left_bright_run(tmp_path_factory) -> tuple[Path, Path]:
    from regraft.runs import RunDir

    root = tmp_path_factory.mktemp("lb")
    run = RunDir(root / "run")
    run.path.mkdir()
    run.write_json("model.json", {
        "format": "regraft-run/1", "architecture": {"zoo": "custom", "name": "LeftBright", "head": "fc", "head_hidden": [], "surgery": []},
        "num_classes": 2, "classes": ["left", "right"],
        "preprocessing": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "crop_pct": 1.0},
    })
    run.save_weights(LeftBright())
    data = root / "data" / "right"  # all labelled "right": the plain view gets them wrong
    data.mkdir(parents=True)
    for i, step in enumerate((0.2, 0.22, 0.25)):  # left half brighter: 3 < gain * step < 6, so the mirror outvotes it
        arr = np.full((32, 32, 3), 128, np.uint8)
        arr[:, :16] = 128 + int(255 * step / 2)
        Image.fromarray(arr).save(data / f"{i}.png")
    return run.path, root / "data"


def test_tta_flip_changes_predictions_on_a_constructed_case_and_is_reported_beside_the_plain_figure(left_bright_run):
    run, data = left_bright_run
    loaded = load_run(run, model=LeftBright())
    m = evaluate_run(loaded, data=str(data), device="cpu", tta="flip")
    assert m["accuracy"] == 0.0 and m["tta"]["accuracy"] == 1.0
    assert m["tta"]["changed"] == 3 and m["tta"]["n_views"] == 2 and m["tta"]["views"] == "flip"
    assert m["tta"]["loss"] < m["loss"]
    results = predict(loaded, [data], device="cpu", tta="flip", topk=2)
    assert [r["top"][0]["class"] for r in results] == ["right"] * 3
    assert [r["plain"]["class"] for r in results] == ["left"] * 3
    plain = predict(loaded, [data], device="cpu", topk=1)
    assert [r["top"][0]["class"] for r in plain] == ["left"] * 3 and "plain" not in plain[0]


def test_onnx_predictions_apply_the_same_tta(left_bright_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from regraft.export import export, predict_onnx

    run, data = left_bright_run
    loaded = load_run(run, model=LeftBright())
    result = export(loaded, format="onnx", out=tmp_path / "lb.onnx")
    assert json.loads(result.model_json.read_text())["exports"]["onnx"]["views"] == 1  # the file itself is single-view
    for tta in ("none", "flip", "flip+crops"):
        want = predict(loaded, [data], device="cpu", tta=tta, topk=2)
        got = predict_onnx(result.path, [data], tta=tta, topk=2)
        for g, w in zip(got, want, strict=True):
            assert [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]]
            assert np.allclose([t["prob"] for t in g["top"]], [t["prob"] for t in w["top"]], atol=1e-4)
            assert g.get("plain", {}).get("class") == w.get("plain", {}).get("class")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run trained in bf16 (so its training numerics differ from inference's) on 300x400
    JPEGs at --img-size 64, with EMA weights."""
    root = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 6)):
        for name in ("blue", "red"):
            d = root / "data" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                make_photo(class_colour(name), rng, width=300 + 100 * (i % 2), height=400 - 100 * (i % 2)).save(d / f"{i}.jpg", quality=90)
    args = [a if a != "32" else "64" for a in TINY]
    ok(run_cli("train", str(root / "data"), *args, "--weights", "none", "--strategy", "scratch", "--lr", "3e-3", "--epochs", "2",
               "--precision", "bf16", "--ema", "0.5", "--out", str(root / "run"), "-q"))
    return root / "run", root / "data" / "val"


@pytest.mark.slow
def test_eval_reproduces_the_summary_of_a_bf16_run_exactly(trained):
    run, _ = trained
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads((run / "environment.json").read_text())["precision"] == "bf16"
    m = json.loads(ok(run_cli("eval", str(run), "--json", "--device", "cpu")).stdout)
    assert m["accuracy"] == summary["best_val_acc"] and m["n_images"] == summary["n_val"] == 12
    assert abs(m["loss"] - summary["best_val_loss"]) <= 1e-5
    text = ok(run_cli("eval", str(run), "--device", "cpu", "--tta", "flip")).stdout
    assert "summary.json: best_val_acc" in text and "reproduced" in text and "flip TTA (2 views): accuracy" in text
    ema = json.loads(ok(run_cli("eval", str(run), "--json", "--weights", "ema", "--device", "cpu")).stdout)
    assert ema["weights"] == "ema" and ema["n_images"] == 12


@pytest.mark.slow
def test_predict_from_the_run_and_from_its_onnx_export_agree_on_large_jpegs(trained):
    pytest.importorskip("onnxruntime")
    run, val = trained
    ok(run_cli("export", str(run), "--format", "onnx"))
    from_run = json.loads(ok(run_cli("predict", str(run), str(val), "--json", "--topk", "2", "--device", "cpu")).stdout)
    from_onnx = json.loads(ok(run_cli("predict", str(run / "export" / "model.onnx"), str(val), "--json", "--topk", "2")).stdout)
    assert len(from_run) == len(from_onnx) == 12
    for a, b in zip(from_run, from_onnx, strict=True):
        assert a["path"] == b["path"] and [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"], strict=True)) <= 1e-4
    user_error(run_cli("predict", str(run / "export" / "model.onnx"), str(val), "--weights", "ema"), "--weights and --precision apply to a run folder")
