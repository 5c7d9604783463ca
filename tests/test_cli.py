"""End-to-end: the real `regraft` command in a subprocess on generated image folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY, ok, run_cli, user_error


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One scratch run on a separable two-class toy folder, shared by the tests below."""
    from tests.imagegen import make_image_folder

    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "data", classes=("blue", "red"), per_class=16, val_per_class=8, size=32)
    run = root / "run"
    proc = ok(run_cli("train", str(data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "4", "--lr", "3e-3", "--out", str(run)))
    return data, run, proc


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from regraft.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['--help'], ['--version'], ['train', '--help']):\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    ok(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True))
    version = ok(run_cli("--version"))
    assert version.stdout.startswith("regraft ")


@pytest.mark.slow
def test_train_writes_the_run_contract(trained):
    _, run, proc = trained
    for name in ("config.yaml", "model.safetensors", "model.json", "metrics.csv", "summary.json",
                 "load_report.json", "freeze_audit.json", "checkpoints/last.pt", "environment.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for key in ("best_val_acc", "best_epoch", "epochs", "train_seconds", "num_classes", "classes",
                "trainable_params", "total_params", "strategy", "model", "weights"):
        assert key in summary, key
    assert summary["classes"] == ["blue", "red"] and summary["num_classes"] == 2
    assert summary["epochs"] == 4 and summary["strategy"] == "scratch"
    assert summary["trainable_params"] == summary["total_params"]
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc,lr,images_per_sec")
    card = json.loads((run / "model.json").read_text())
    assert card["classes"] == ["blue", "red"] and card["preprocessing"]["input_size"] == [3, 32, 32]
    assert "epoch 4/4" in proc.stdout and "img/s" in proc.stdout


@pytest.mark.slow
def test_eval_reproduces_best_val_acc(trained):
    _, run, _ = trained
    summary = json.loads((run / "summary.json").read_text())
    out = json.loads(ok(run_cli("eval", str(run), "--json")).stdout)
    assert out["accuracy"] == summary["best_val_acc"]
    assert {"accuracy", "loss", "per_class", "n_images"} <= set(out)
    assert out["n_images"] == 16 and set(out["per_class"]) == {"blue", "red"}


@pytest.mark.slow
def test_predict_well_above_chance(trained):
    data, run, _ = trained
    out = json.loads(ok(run_cli("predict", str(run), str(data / "val"), "--topk", "2", "--json")).stdout)
    assert len(out) == 16
    correct = sum(Path(r["path"]).parent.name == r["top"][0]["class"] for r in out)
    assert correct / len(out) >= 0.85
    assert all(abs(sum(t["prob"] for t in r["top"]) - 1.0) < 1e-4 for r in out)


@pytest.mark.slow
def test_config_reproduces_the_run(trained, tmp_path):
    _, run, _ = trained
    again = tmp_path / "again"
    ok(run_cli("train", "--config", str(run / "config.yaml"), "--out", str(again), "-q"))
    a = json.loads((run / "summary.json").read_text())
    b = json.loads((again / "summary.json").read_text())
    assert a["best_val_acc"] == b["best_val_acc"] and a["best_epoch"] == b["best_epoch"]
    assert yaml.safe_load((again / "config.yaml").read_text())["out"] == str(again)


@pytest.mark.slow
def test_flat_folder_is_split(flat_data, tmp_path):
    run = tmp_path / "flat-run"
    ok(run_cli("train", str(flat_data), *TINY, "--weights", "none", "--epochs", "1", "--val-fraction", "0.3", "--out", str(run), "-q"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["blue", "green", "red"]
    assert summary["n_val"] == 9 and summary["n_train"] == 21  # stratified: 3 of each class's 10


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "{tmp}/nope", "--model", "test_resnet"], "nope"),
        (["train", "{data}", "--model", "resnet181"], "unknown model 'resnet181'"),
        (["train", "{data}", "--model", "test_resnet", "--epochs", "0"], "epochs must be at least 1"),
        (["train", "{data}", "--model", "test_resnet", "--strategy", "magic"], "strategy must be one of"),
        (["train", "{data}", "--model", "test_resnet", "--set", "epoch=3"], "unknown key 'epoch'; did you mean 'epochs'"),
        (["train", "{data}", "--model", "test_resnet", "--weights", "{tmp}/missing.pth"], "missing.pth"),
        (["train", "--model", "test_resnet"], "no data given"),
        (["train", "--resume", "{tmp}"], "config.yaml"),
        (["eval", "{tmp}/not-a-run"], "not-a-run"),
        (["predict", "{tmp}/not-a-run", "x.jpg"], "not-a-run"),
        (["train", "{data}", "--model", "test_resnet", "--config", "{tmp}/none.yaml"], "config file not found"),
    ],
)
def test_user_errors_are_one_line(args, fragment, toy_data, tmp_path):
    filled = [a.format(tmp=tmp_path, data=toy_data) for a in args]
    user_error(run_cli(*filled), fragment)


@pytest.mark.slow
def test_existing_run_is_not_overwritten(trained, tmp_path):
    data, run, _ = trained
    before = (run / "model.safetensors").read_bytes()
    user_error(run_cli("train", str(data), *TINY, "--weights", "none", "--out", str(run)), "already holds a run")
    assert (run / "model.safetensors").read_bytes() == before


def test_bad_recipe_key_is_named(toy_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_resnet\nlearning_rate: 0.1\n")
    user_error(run_cli("train", str(toy_data), "--config", str(recipe)), "unknown key 'learning_rate'")


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("eval", str(tmp_path / "missing"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_numerics_are_recorded_and_eval_reproduces_them(toy_data, tmp_path):
    # bf16 autocast is the default on CPUs with AMX; asked for here so that every CPU runs this path
    run = tmp_path / "bf16"
    proc = ok(run_cli("train", str(toy_data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "2",
                      "--precision", "bf16", "--out", str(run)))
    assert "numerics: bf16 autocast, channels_last (--precision fp32 for full precision); evaluation in fp32" in proc.stdout + proc.stderr
    env = json.loads((run / "environment.json").read_text())
    assert env["precision"] == "bf16" and env["channels_last"] is True
    summary = json.loads((run / "summary.json").read_text())
    out = json.loads(ok(run_cli("eval", str(run), "--json")).stdout)
    assert out["accuracy"] == summary["best_val_acc"]
    best = [r for r in csv.DictReader((run / "metrics.csv").open()) if int(r["epoch"]) == summary["best_epoch"]][0]
    assert abs(out["loss"] - summary["best_val_loss"]) < 1e-5  # evaluated in fp32, as training's validation was
    assert abs(out["loss"] - float(best["val_loss"])) < 1e-4  # metrics.csv keeps 6 significant digits

    fp32 = tmp_path / "fp32"
    proc = ok(run_cli("train", str(toy_data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "1",
                      "--precision", "fp32", "--no-channels-last", "--out", str(fp32)))
    assert "numerics: fp32; evaluation in fp32\n" in proc.stdout + proc.stderr
    env = json.loads((fp32 / "environment.json").read_text())
    assert env["precision"] == "fp32" and env["channels_last"] is False


@pytest.mark.slow
def test_unreadable_val_image_with_decode_cache_off_keeps_every_plot(tmp_path):
    from tests.imagegen import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=8, val_per_class=4, size=32)
    bad = data / "val" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    run = tmp_path / "run"
    proc = ok(run_cli("train", str(data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "1",
                      "--no-decode-cache", "--out", str(run)))
    assert "top_losses.png skipped" not in proc.stderr + proc.stdout
    assert str(bad) in (run / "skipped_files.txt").read_text().splitlines()
    for name in ("top_losses.png", "confusion_matrix.png", "curves.png", "report.html"):
        assert (run / name).is_file(), name
