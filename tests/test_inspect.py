"""regraft inspect: the module table, the head, JSON, recipes' surgery and the weights report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from regraft.cli.main import main

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # batches of 2; spin-waiting threads only slow a shared CPU


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inspect_json_in_a_subprocess(cli):
    result = cli("inspect", "timm:test_resnet", "--img-size", "32", "--json", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["model"], info["zoo"], info["head"], info["input_size"]) == ("test_resnet", "timm", "fc", [3, 32, 32])
    rows = {row["path"]: row for row in info["modules"]}
    assert set(rows[""]) >= {"path", "type", "out_shape", "params", "trainable"}
    assert rows["fc"] == rows["fc"] | {"type": "Linear", "out_shape": [2, 1000], "trainable": True, "head": True}
    assert rows[""]["params"] == info["params"] == sum(r["params"] for r in info["modules"] if r["depth"] == 1)
    assert info["load_report"] is None and info["surgery"] is None


def test_inspect_prints_an_indented_table_with_the_head_marked(capsys):
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    fc = next(line for line in lines if " fc " in line)
    assert "Linear" in fc and "(2, 1000)" in fc and "<- head" in fc
    assert any("  layer1 " in line for line in lines) and not any("layer1.0" in line for line in lines)
    assert "head: fc" in out


FAMILY = [
    ("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"), ("efficientnet_b0", "classifier.1"),
    ("convnext_tiny", "classifier.2"), ("swin_t", "head"), ("timm:test_vit", "head"),
    ("timm:test_convnext", "head.fc"), ("timm:test_efficientnet", "classifier"),
]


@pytest.mark.parametrize(("name", "head"), FAMILY, ids=[f[0] for f in FAMILY])
def test_inspect_json_finds_the_head_across_families(name, head, capsys):
    size = "160" if name == "timm:test_vit" else "32"
    assert main(["inspect", name, "--img-size", size, "--depth", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == head
    assert info["modules"][0]["out_shape"] == [2, 1000]


def test_inspect_applies_a_recipes_surgery_and_shows_what_changed(tmp_path: Path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("head_hidden: [16]\nsurgery:\n  - {op: insert_before, path: fc, module: {type: Dropout, p: 0.2}}\n")
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--config", str(recipe), "--num-classes", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == "fc.1"
    assert info["modules"][0]["out_shape"] == [2, 3]
    assert info["surgery"]["ops"][0].startswith("replace_head fc: Linear(")
    assert info["surgery"]["out_shape_after"] == [2, 3]
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--config", str(recipe), "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "surgery: insert_before fc: Dropout(0.2) at fc.0" in out


def test_inspect_names_the_module_a_broken_recipe_breaks(tmp_path: Path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("surgery:\n  - {op: insert_after, path: fc, module: {type: BatchNorm2d}}\n")
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regraft: error: surgery op 0 (insert_after fc): module 'fc.1' (BatchNorm2d) would get input of shape (2, 1000)")
    assert "expects 4-D input with 1000 channels" in err


def test_inspect_loads_weights_and_shows_the_report(tmp_path: Path, capsys):
    pytest.importorskip("regraft.weights")
    from regraft import zoo

    source = zoo.build("timm:test_resnet")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--weights", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["load_report"] is not None and info["load_report"]["coverage"] == pytest.approx(1.0)
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--depth", "0", "--weights", str(path)]) == 0
    assert "trunk coverage" in capsys.readouterr().out


def test_inspect_unknown_model_is_one_line(capsys):
    assert main(["inspect", "resnet1888"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regraft: error: unknown model 'resnet1888'") and err.count("\n") == 1


def _saved(tmp_path: Path, state: dict, name: str = "weights.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_inspect_weights_take_trains_rename_and_skip_from_flags_and_recipe(tmp_path: Path, capsys):
    from regraft import zoo

    state = {k.replace("layer", "stage"): v for k, v in zoo.build("timm:test_resnet").state_dict().items()}
    path = _saved(tmp_path, state)
    args = ["inspect", "timm:test_resnet", "--img-size", "32", "--depth", "0", "--weights", str(path), "--json"]
    assert main([*args, "--rename", "stage{}=layer{}", "--skip", "layer4"]) == 0
    report = json.loads(capsys.readouterr().out)["load_report"]
    assert report["renamed"]["stage1.0.conv1.weight"] == "layer1.0.conv1.weight"
    assert report["skipped"]["stage4.0.conv1.weight"] == "--skip layer4"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rename: {'stage{}': 'layer{}'}\nkeep_head: true\nmin_coverage: 1.0\n")
    assert main([*args, "--config", str(recipe)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["load_report"]["coverage"] == pytest.approx(1.0) and info["load_report"]["head_status"] == "kept"
    assert info["notes"] == []


def test_inspect_weights_need_and_take_trust_checkpoint(tmp_path: Path, capsys):
    from regraft import zoo

    path = _saved(tmp_path, zoo.build("timm:test_resnet"), "whole_model.pt")  # a pickled module
    args = ["inspect", "timm:test_resnet", "--img-size", "32", "--depth", "0", "--weights", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "refused to unpickle" in err and "--trust-checkpoint" in err and err.count("\n") == 1
    assert main([*args, "--trust-checkpoint"]) == 0
    out = capsys.readouterr().out
    assert "trunk coverage       100.0%" in out and "head                 replaced" in out


def test_inspect_says_when_train_would_refuse_the_weights(tmp_path: Path, capsys):
    import timm

    path = _saved(tmp_path, timm.create_model("test_efficientnet").state_dict())
    assert main(["inspect", "timm:test_resnet", "--img-size", "32", "--depth", "0", "--weights", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["notes"] and info["notes"][0].startswith("train would refuse these weights: trunk coverage")
