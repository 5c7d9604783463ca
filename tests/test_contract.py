"""The model contract: num_classes logits out, checked after every change to the network and when a run is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from regraft import surgery
from regraft.cli.main import main
from regraft.errors import RunError, ShapeError, SurgeryError
from regraft.inference import build_model_from_card, load_run
from tests.helpers import TINY, TinyVGG, make_image_folder, user_error

# the VGG-16 tutorial's block after the new output layer ends in Linear(10, 10): right for CIFAR-10 only
BLOCK = [{"op": "insert_after", "path": "classifier.6", "module": ["ReLU", {"type": "Dropout", "p": 0.2}, {"type": "Linear", "out_features": 10}]}]


def test_an_output_width_other_than_the_class_count_names_the_layer_that_sets_it():
    model = TinyVGG()
    surgery.replace_head(model, 3)
    surgery.apply(model, BLOCK, input_size=(3, 16, 16))
    with pytest.raises(SurgeryError, match=r"the model outputs 10 logits but the data has 3 classes: 'classifier\.7\.2' \(Linear\(3, 10\)\) sets the width; give it 3 outputs"):
        surgery.check_output_width(model, num_classes=3, input_size=(3, 16, 16))
    assert surgery.check_output_width(model, num_classes=10, input_size=(3, 16, 16)) == (2, 10)


def test_an_output_that_is_not_logits_and_an_input_that_does_not_fit_are_named():
    conv_only = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(SurgeryError, match=r"outputs shape \(2, 3, 8, 8\) for a batch of 2, not \(batch, 3\) logits \(last module run: '0'\)"):
        surgery.check_output_width(conv_only, num_classes=3, input_size=(3, 8, 8))
    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ShapeError, match=r"module '0' \(Conv2d\)"):
        surgery.check_output_width(gray, num_classes=3, input_size=(3, 8, 8))


def test_training_refuses_the_recipe_before_it_trains(tmp_path: Path, cli):
    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=4, size=16)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"surgery": [{"op": "insert_after", "path": "fc", "module": {"type": "Linear", "out_features": 10}}]}))
    out = tmp_path / "run"
    result = cli("train", str(data), *TINY, "--weights", "none", "--config", str(recipe), "--out", str(out), "--epochs", "1")
    user_error(result, "the model outputs 10 logits but the data has 2 classes: 'fc.1' (Linear(2, 10)) sets the width")
    assert not (out / "model.safetensors").exists()


def test_inspect_checks_the_contract_for_its_num_classes(tmp_path: Path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"surgery": [{"op": "insert_after", "path": "fc", "module": {"type": "Linear", "out_features": 10}}]}))
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--config", str(recipe), "--num-classes", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regraft: error: the model outputs 10 logits but the data has 3 classes: 'fc.1' (Linear(3, 10))")


def _broken_run(root: Path) -> Path:
    """A run folder as the old code left it: 10 logits for 3 classes (the VGG-16 recipe on 3 class folders)."""
    card = {
        "format": "regraft-run/1",
        "architecture": {"zoo": "timm", "name": "test_resnet", "head": "fc", "head_hidden": [], "head_dropout": 0.0,
                         "surgery": [{"op": "insert_after", "path": "fc", "module": {"type": "Linear", "out_features": 10}}]},
        "num_classes": 3, "classes": ["a", "b", "c"],
        "preprocessing": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0, "resize": 32},
    }
    root.mkdir()
    (root / "model.json").write_text(json.dumps(card))
    model = build_model_from_card(card)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    return root


def test_loading_a_run_checks_the_contract_so_eval_and_predict_fail_in_one_line(tmp_path: Path, capsys):
    run = _broken_run(tmp_path / "run")
    with pytest.raises(RunError, match=r"run cannot predict its 3 classes: the model outputs 10 logits but the data has 3 classes: 'fc\.1' \(Linear\(3, 10\)\)"):
        load_run(run)
    image = make_image_folder(tmp_path / "imgs", classes=("a",), per_class=1, size=32, split=False)
    assert main(["predict", str(run), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regraft: error: ") and "cannot predict its 3 classes" in err and err.count("\n") == 1


def test_a_sound_run_still_loads(tmp_path: Path):
    run = _broken_run(tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    card["architecture"]["surgery"] = []
    (run / "model.json").write_text(json.dumps(card))
    model = build_model_from_card(card)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    loaded = load_run(run)
    assert loaded.classes == ["a", "b", "c"] and loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
