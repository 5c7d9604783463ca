from pathlib import Path

import pytest

from regraft.config import Config, load_config, parse_override
from regraft.errors import ConfigError


def test_defaults_and_roundtrip(tmp_path: Path):
    cfg = Config.from_dict({"model": "resnet18", "epochs": 3, "lr": "1e-3", "skip": "fc.*,aux.*"})
    assert cfg.lr == 0.001 and cfg.skip == ["fc.*", "aux.*"] and cfg.epochs == 3
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert Config.from_yaml(path) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epoch": 3}, "unknown key 'epoch'; did you mean 'epochs'"),
        ({"epochs": "three"}, "'epochs' must be an integer; got 'three'"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"strategy": "fancy"}, "strategy must be one of auto, scratch, probe, head, partial, full, lp-ft, gradual"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"val_fraction": 1.5}, "val_fraction must be between 0 and 1"),
        ({"train_bn": "maybe"}, "'train_bn' must be true or false"),
        ({"head_hidden": 5}, "'head_hidden' must be a list of an integer"),
        ({"train": ["fc"], "freeze": ["layer1"]}, "give 'train' or 'freeze', not both"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_dict(values)


def test_flags_override_recipe(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: vgg16\nepochs: 7\nlr: 1.0e-3\n")
    cfg = load_config(recipe, {"epochs": 2, "lr": None})
    assert (cfg.model, cfg.epochs, cfg.lr) == ("vgg16", 2, 0.001)


def test_recipe_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)


def test_parse_override():
    assert parse_override("head_hidden=[256, 128]") == ("head_hidden", [256, 128])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("nothing")


def test_explicit_none_clears_a_recipe_key(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: vgg16\nfreeze_to: features\n")
    assert load_config(recipe, {"freeze_to": None}).freeze_to == "features"  # a flag not given
    assert load_config(recipe, {}, explicit={"freeze_to": None}).freeze_to is None  # --set freeze_to=null
