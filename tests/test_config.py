import os
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


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"clip_grad": -1}, "clip_grad must be a positive gradient norm"),
        ({"clip_grad": 0}, "clip_grad must be a positive gradient norm"),
        ({"label_smoothing": 5}, "label_smoothing must be at least 0 and below 1; got 5.0"),
        ({"label_smoothing": 1.0}, "label_smoothing must be at least 0 and below 1"),
        ({"weight_decay": -1}, "weight_decay must be at least 0; got -1.0"),
        ({"patience": 0}, "patience must be at least 1; got 0"),
        ({"warmup_epochs": -0.5}, "warmup_epochs must be at least 0"),
        ({"mixup": -1}, "mixup must be at least 0"),
        ({"cutmix": -0.1}, "cutmix must be at least 0"),
        ({"workers": -1}, "workers must be at least 0"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"grad_accum": 0}, "grad_accum must be at least 1"),
        ({"probe_l2": 0}, "probe_l2 must be positive; got 0.0"),
        ({"time_budget": -5}, "time_budget must be positive; got -5.0"),
        ({"momentum": 1.5}, "momentum must be at least 0 and below 1"),
        ({"ema": 1.0}, "ema must be above 0 and below 1"),
        ({"head_dropout": 1}, "head_dropout must be at least 0 and below 1"),
        ({"head_lr_mult": 0}, "head_lr_mult must be positive"),
        ({"layer_decay": 1.5}, "layer_decay must be above 0 and at most 1"),
        ({"seed": -1}, "seed must be at least 0 and at most 4294967295"),
        ({"img_size": 4}, "img_size must be at least 8"),
        ({"lr": "nan"}, "'lr' must be a finite number; got 'nan'"),
        ({"lr": float("inf")}, "'lr' must be a finite number"),
        ({"mean": [0.5, float("nan"), 0.5]}, "'mean' must be a finite number"),
        ({"lr": 10**400}, "'lr' must be a number"),
        ({"std": [0.2, 0.0, 0.2]}, "std values must be positive"),
        ({"mean": [0.5], "std": [0.2, 0.2, 0.2]}, "mean and std must have the same length"),
        ({"head_hidden": [0]}, "head_hidden widths must be at least 1"),
        ({"cache_ram": "lots"}, "cache_ram must be a size such as 4G"),
        ({"sha256": "abc"}, "sha256 must be 64 hexadecimal digits"),
        ({"interpolation": "lanczos9"}, "interpolation must be one of nearest, bilinear, bicubic"),
        ({"log": ["wandb"]}, "log must list trackers among tensorboard, mlflow; got 'wandb'"),
        ({"optimizer": "sgd", "momentum": 0, "nesterov": True}, "nesterov needs momentum above 0 with sgd"),
    ],
)
def test_numbers_that_cannot_be_right_are_refused(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_dict(values, source="fit()")


def test_every_number_in_range_passes():
    cfg = Config.from_dict({
        "clip_grad": 1.0, "label_smoothing": 0.1, "weight_decay": 0, "patience": 1, "warmup_epochs": 0,
        "mixup": 0.2, "cutmix": 1.0, "workers": 0, "momentum": 0.0, "ema": 0.999, "seed": 2**32 - 1,
        "cache_ram": "1.5G", "sha256": "a" * 64, "mean": [0.5], "std": [0.25],
    })
    assert cfg.clip_grad == 1.0 and cfg.seed == 2**32 - 1


def test_a_recipe_never_grants_trust_or_overwrite(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_resnet\nweights: https://example.org/w.pth\ntrust_checkpoint: true\noverwrite: yes\n")
    notes: list[str] = []
    cfg = load_config(recipe, notes=notes)
    assert cfg.trust_checkpoint is False and cfg.overwrite is False and cfg.weights == "https://example.org/w.pth"
    assert [n.split(":")[0] for n in notes] == [f"{recipe} sets trust_checkpoint", f"{recipe} sets overwrite"]
    # the command line (and a Python argument) still can
    cfg = load_config(recipe, {"trust_checkpoint": True, "overwrite": True})
    assert cfg.trust_checkpoint is True and cfg.overwrite is True
    assert Config.from_dict({"trust_checkpoint": True}).trust_checkpoint is True
    assert Config.from_yaml(recipe).trust_checkpoint is False


def test_unreadable_recipes_are_one_line(tmp_path: Path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model: r\xe9snet\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml is not UTF-8 text \(byte 0xe9 at offset 8\): save it as UTF-8"):
        load_config(latin)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="pipe.yaml is not a regular file"):  # never blocks on the pipe
        load_config(fifo)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


@pytest.mark.parametrize("raw", ["lr=[1,", "x={a: [}", "x=@reserved", 'surgery="unclosed'])
def test_invalid_yaml_in_set_is_one_line(raw):
    with pytest.raises(ConfigError, match=r"^--set \w+: the value .* is not valid YAML \(.*\); put it in quotes$"):
        parse_override(raw)


def test_self_referencing_yaml_values_are_refused():
    key, value = parse_override("unfreeze=[{epoch: 1, train: &a [*a]}]")
    with pytest.raises(ConfigError, match="'unfreeze' is nested more than 32 levels deep"):
        Config.from_dict({key: value})
