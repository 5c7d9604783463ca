"""Multi-label runs and class imbalance end to end, through the CLI, on small generated data.

A multi-label CSV with overlapping labels (and images without a label) trains, keeps its
per-label thresholds in model.json, and eval, predict, the ONNX runtime and the hf export all
decide with them; a 10:1 imbalanced folder is balanced by --balance auto, which says so.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY, ok, run_cli, user_error
from tests.imagegen import make_image_folder, make_multilabel_data


def _weights_file(path: Path) -> Path:
    """test_resnet's random weights as a local file: 'pretrained' weights that load without a network."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ml")
    data = make_multilabel_data(root / "data", n_train=40, n_val=20, empty_every=7)
    run = root / "run"
    ok(run_cli("train", str(data), *TINY, "--train-csv", "train.csv", "--val-csv", "val.csv", "--task", "multilabel",
               "--weights", "none", "--strategy", "scratch", "--epochs", "3", "--lr", "3e-3", "--mixup", "0.2",
               "--multilabel-loss", "asl", "--out", str(run), "-q"))
    return run, data


@pytest.mark.slow
def test_a_multilabel_run_keeps_map_thresholds_and_per_label_figures(ml_run):
    run, _ = ml_run
    summary = json.loads((run / "summary.json").read_text())
    card = json.loads((run / "model.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert summary["task"] == card["task"] == "multilabel" and summary["primary"] == "val_map"
    assert {"val_map", "val_f1_macro", "val_f1_micro", "val_loss"} <= set(rows[0]) and "val_acc" not in rows[0]
    kept = next(r for r in rows if r["kept"] == "1")
    assert float(kept["val_map"]) == pytest.approx(summary["best_val_map"], rel=1e-5)
    assert card["thresholds"] == list(summary["thresholds"].values()) and card["thresholds_source"] == "validation"
    assert set(summary["per_label"]) == set(card["classes"]) == {"blue", "green", "red"}
    assert all(0 < t < 1 for t in card["thresholds"])
    with open(run / "val_predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == ["path", "labels", "predicted", "correct", "p_blue", "p_green", "p_red"] and len(preds) == 20
    assert any(p["labels"] == "" for p in preds) and any(";" in p["labels"] for p in preds)  # none, and overlapping
    for p in preds:  # each decision is the probability against its label's threshold
        chosen = [c for c, t in zip(card["classes"], card["thresholds"], strict=True) if float(p[f"p_{c}"]) > t]
        assert p["predicted"] == ";".join(chosen)
    assert (run / "curves.png").is_file() and not (run / "confusion_matrix.png").exists()
    assert 'id="per-label"' in (run / "report.html").read_text()


@pytest.mark.slow
def test_eval_reproduces_the_map_and_predict_lists_labels_above_their_thresholds(ml_run):
    run, data = ml_run
    summary = json.loads((run / "summary.json").read_text())
    m = json.loads(ok(run_cli("eval", str(run), "--json", "--device", "cpu")).stdout)
    assert m["task"] == "multilabel" and m["map"] == summary["best_val_map"] and m["n_images"] == 20
    assert abs(m["loss"] - summary["best_val_loss"]) <= 1e-5
    assert m["f1_macro"] == pytest.approx(summary["f1_macro_at_thresholds"])
    text = ok(run_cli("eval", str(run), "--device", "cpu", "--tta", "flip")).stdout
    assert "summary.json: best_val_map" in text and "reproduced" in text and "flip TTA (2 views): mAP" in text
    images = sorted((data / "images").glob("val_*.png"))[:6]
    got = json.loads(ok(run_cli("predict", str(run), *map(str, images), "--json", "--device", "cpu")).stdout)
    card = json.loads((run / "model.json").read_text())
    for r in got:
        probs = {t["class"]: t["prob"] for t in r["top"]}
        want = [c for c, t in zip(card["classes"], card["thresholds"], strict=True) if probs[c] > t]
        assert sorted(d["class"] for d in r["labels"]) == sorted(want)
    lines = ok(run_cli("predict", str(run), *map(str, images), "--device", "cpu")).stdout.splitlines()
    for line, r in zip(lines, got, strict=True):
        shown = ", ".join(f"{d['class']} {d['prob']:.3f}" for d in r["labels"]) or "no label above its threshold"
        assert line == f"{r['path']}: {shown}"


@pytest.mark.slow
def test_onnx_and_hf_exports_carry_the_thresholds_and_decide_the_same(ml_run):
    pytest.importorskip("onnxruntime")
    run, data = ml_run
    val = data / "images"
    ok(run_cli("export", str(run), "--format", "onnx"))
    sidecar = json.loads((run / "export" / "model.json").read_text())
    card = json.loads((run / "model.json").read_text())
    assert sidecar["task"] == "multilabel" and sidecar["thresholds"] == card["thresholds"]
    from_run = json.loads(ok(run_cli("predict", str(run), str(val), "--json", "--device", "cpu")).stdout)
    from_onnx = json.loads(ok(run_cli("predict", str(run / "export" / "model.onnx"), str(val), "--json")).stdout)
    assert len(from_run) == len(from_onnx) == 60
    for a, b in zip(from_run, from_onnx, strict=True):
        assert [d["class"] for d in a["labels"]] == [d["class"] for d in b["labels"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"], strict=True)) <= 1e-4
    ok(run_cli("export", str(run), "--format", "hf"))
    hf = json.loads((run / "export" / "hf" / "config.json").read_text())
    assert hf["regraft"]["task"] == "multilabel" and hf["regraft"]["thresholds"] == card["thresholds"]
    assert "a label is predicted when its probability is above its threshold" in (run / "export" / "hf" / "README.md").read_text()


@pytest.mark.slow
def test_cached_features_with_a_class_balanced_sampler_and_a_cross_validated_probe(tmp_path):
    data = make_multilabel_data(tmp_path / "data", n_train=30, n_val=12, empty_every=5)
    weights = _weights_file(tmp_path / "w.safetensors")
    head = tmp_path / "head"
    out = ok(run_cli("train", str(data), *TINY, "--train-csv", "train.csv", "--val-csv", "val.csv", "--task", "multilabel",
                     "--weights", str(weights), "--strategy", "head", "--epochs", "2", "--balance", "sampler", "--out", str(head)))
    assert "feature cache:" in out.stdout and "balance: sampler (--balance sampler;" in out.stdout
    summary = json.loads((head / "summary.json").read_text())
    assert summary["balance"]["mode"] == "sampler" and summary["primary"] == "val_map"
    # no validation CSV and few images: auto fits the probe by 5-fold cross-validation and stops there;
    # the thresholds come from its out-of-fold probabilities
    auto = tmp_path / "auto"
    ok(run_cli("train", str(data), *TINY, "--train-csv", "train.csv", "--task", "multilabel", "--weights", str(weights),
               "--out", str(auto), "-q"))
    summary = json.loads((auto / "summary.json").read_text())
    assert summary["validation"] == "cv5" and summary["best_stage"] == "probe" and summary["best_val_map_std"] is not None
    assert summary["thresholds_source"] == "cross-validation" and summary["n_train"] == 30
    assert json.loads((auto / "model.json").read_text())["thresholds_source"] == "cross-validation"


# ----------------------------------------------------------------------------- class imbalance


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imb")
    return make_image_folder(root / "data", classes=("blue", "red"), per_class=4, counts={"blue": 40}, size=32)


@pytest.mark.slow
def test_auto_balances_a_ten_to_one_folder_and_says_why(imbalanced, tmp_path):
    run = tmp_path / "auto"
    out = ok(run_cli("train", str(imbalanced), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "2",
                     "--lr", "3e-3", "--out", str(run)))
    line = "balance: loss (the largest class has 10.0x the images of the smallest)"
    assert line in out.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["balance"] == {"mode": "loss", "asked": "auto", "imbalance": 10.0, "reason": line}
    assert set(summary["per_class_recall"]) == {"blue", "red"} and "best_val_balanced_acc" in summary
    m = json.loads(ok(run_cli("eval", str(run), "--json", "--device", "cpu")).stdout)
    assert m["balanced_accuracy"] == pytest.approx(summary["best_val_balanced_acc"], abs=1e-12)
    assert m["per_class"]["red"]["recall"] == summary["per_class_recall"]["red"]
    text = ok(run_cli("eval", str(run), "--device", "cpu")).stdout
    assert f"balanced accuracy {summary['best_val_balanced_acc']:.4f}" in text
    assert "balanced accuracy" in (run / "report.html").read_text()


@pytest.mark.slow
def test_a_sampler_run_resumes_exactly(imbalanced, tmp_path):
    args = [*TINY, "--weights", "none", "--strategy", "scratch", "--lr", "3e-3", "--schedule", "constant", "--balance", "sampler", "-q"]
    ok(run_cli("train", str(imbalanced), *args, "--epochs", "3", "--out", str(tmp_path / "whole")))
    ok(run_cli("train", str(imbalanced), *args, "--epochs", "2", "--out", str(tmp_path / "part")))
    ok(run_cli("train", "--resume", str(tmp_path / "part"), "--epochs", "3", "-q"))
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "part" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["balance"]["mode"] == "sampler"


_DDP_EVAL = """
import gc, json, os, sys, torch
from torch.utils.data import DataLoader, TensorDataset
from regraft.data.sampler import EpochBatchSampler
from regraft.tasks import rules
from regraft.training import loop
from regraft.training.processes import processes

def threads():  # the C++ ones too (Gloo's workers)
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0
before = threads()
procs = processes("cpu")
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(int(sys.argv[2]), 6, generator=g)
model = torch.nn.Linear(6, 3)
torch.nn.init.normal_(model.weight, generator=g)
out = {}
for task, y in (("multilabel", (torch.randn(len(x), 3, generator=g) > 0).float()), ("multiclass", torch.arange(len(x)) % 3)):
    sampler = EpochBatchSampler(len(x), batch_size=4, shuffle=False, rank=procs.index, world_size=procs.count)
    got = loop.evaluate(model, DataLoader(TensorDataset(x, y), batch_sampler=sampler), procs=procs, task=rules(task))
    out[task] = [got.loss, got.n, got.figures]
if torch.distributed.is_initialized():  # torn down at exit instead, its threads may abort the process
    torch.distributed.destroy_process_group()
gc.collect()
# the group is really gone (nothing still holds it, as torch.distributed.nn imported late did), so
# no Gloo thread is left to abort the interpreter at exit
out["threads_left"] = threads() - before
if procs.is_main:
    open(sys.argv[1], "w").write(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("n", [13, 1])  # 1: the second process's shard is empty
def test_two_process_evaluation_gathers_the_same_figures_as_one(tmp_path, n):
    script = tmp_path / "ddp_eval.py"
    script.write_text(_DDP_EVAL)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    got = {}
    for procs in (1, 2):
        out = tmp_path / f"{procs}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), str(script), str(out), str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[procs] = json.loads(out.read_text())
        assert got[procs]["threads_left"] == 0
    for task in ("multilabel", "multiclass"):
        (loss1, n1, fig1), (loss2, n2, fig2) = got[1][task], got[2][task]
        assert n1 == n2 == n and loss2 == pytest.approx(loss1, rel=1e-6)
        assert fig1.keys() == fig2.keys() and all(fig2[k] == pytest.approx(v, abs=1e-6) for k, v in fig1.items())


# ----------------------------------------------------------------------------- mistakes: one line, exit 2


def test_mistakes_are_one_line(tmp_path, toy_data):
    data = make_multilabel_data(tmp_path / "ml", n_train=6, n_val=3)
    (data / "bad.csv").write_text("path,labels\nimages/train_000.png,red;violet\n")
    base = ["train", str(toy_data), *TINY, "--weights", "none", "--out", str(tmp_path / "r")]
    user_error(run_cli(*base, "--task", "tags"), "task must be one of multiclass, multilabel; got 'tags'")
    user_error(run_cli(*base, "--balance", "oversample"), "balance must be one of auto, none, loss, sampler; got 'oversample'")
    user_error(run_cli(*base, "--multilabel-loss", "asl"), "multilabel_loss asl applies to task multilabel; add --task multilabel")
    user_error(run_cli(*base, "--task", "multilabel", "--label-sep", ""), "label_sep must be the 1 to 8 characters")
    user_error(run_cli("train", str(data), *TINY, "--weights", "none", "--task", "multilabel", "--train-csv", "train.csv",
                       "--val-csv", "bad.csv", "--out", str(tmp_path / "r2")), "bad.csv:2: label 'violet' is not one of the 3 labels")
    (data / "one.csv").write_text("path,labels\nimages/train_000.png,red;green;blue\n")
    user_error(run_cli("train", str(data), *TINY, "--weights", "none", "--task", "multilabel", "--train-csv", "one.csv",
                       "--val-csv", "val.csv", "--out", str(tmp_path / "r3")), "1 training image; training needs at least 2")
    user_error(run_cli("compare", str(data), *TINY, "--task", "multilabel", "--train-csv", "train.csv", "--strategies",
                       "scratch,full", "--out", str(tmp_path / "c")), "compare ranks strategies by accuracy")
