"""Two processes on one CPU through both launchers (torchrun, accelerate launch) give what one process gives.

Gradient training: with a model without batch statistics or dropout (timm's test_convnext:
LayerNorm), two processes at batch 4 see, step by step, the same 8 images as one process at
batch 8 (the sampler deals each process every other image of the same permutation), and DDP's
mean of the two means is the mean of the 8: the weights agree to float tolerance. The probe runs
once, on the main process, so auto's probe gives the same head bitwise. Only the main process
prints and writes the run folder's files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_image_folder, ok, run_cli, save_tiny_pretrained

pytestmark = pytest.mark.slow  # end-to-end: several processes train tiny runs

COMMON = ["--img-size", "32", "--seed", "0", "--workers", "0", "--device", "cpu", "--epochs", "2", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    return make_image_folder(root / "data", classes=("blue", "red"), per_class=16, val_per_class=8, size=32)


def _launch(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", REGRAFT_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "regraft", *args]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
        if accelerate is None:
            pytest.skip("the accelerate command is not installed beside this Python")
        cmd = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "regraft", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_torchrun_two_processes_train_like_one_process_at_twice_the_batch(data, tmp_path):
    scratch = ["--model", "test_convnext", "--weights", "none", "--strategy", "scratch", "--augment", "none", "--lr", "1e-3"]
    one = tmp_path / "one"
    ok(run_cli("train", str(data), *scratch, *COMMON, "--batch-size", "8", "--out", str(one), env={"OMP_NUM_THREADS": "1"}))
    two = tmp_path / "two"
    proc = _launch("torchrun", ["train", str(data), *scratch, *COMMON, "--batch-size", "4", "--out", str(two)])
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s2["n_train"] == 32 and s2["n_val"] == 16  # every image once, no padding
    assert s2["best_val_acc"] == s1["best_val_acc"] and abs(s2["best_val_loss"] - s1["best_val_loss"]) < 1e-4
    # only the main process writes the run's files and reports; -q keeps even it quiet
    assert "best val acc" not in proc.stdout and "regraft: error" not in proc.stderr


def test_accelerate_launch_runs_the_probe_once_and_matches_one_process(data, tmp_path):
    weights = save_tiny_pretrained(tmp_path / "pretrained.pth")
    probe = ["--model", "test_resnet", "--weights", str(weights), "--strategy", "probe", "--batch-size", "4"]
    one = tmp_path / "one"
    ok(run_cli("train", str(data), *probe, *COMMON, "--out", str(one), env={"OMP_NUM_THREADS": "1"}))
    two = tmp_path / "two"
    _launch("accelerate", ["train", str(data), *probe, *COMMON, "--out", str(two)])
    a, b = _weights(one), _weights(two)
    for key in a:  # the same features, the same solve, on the main process: the same head
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s2["best_stage"] == "probe" and s2["best_val_acc"] == s1["best_val_acc"]
    assert s2["probe"]["l2"] == s1["probe"]["l2"]
    rows = (two / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # the header and the probe's one row: no process wrote a second record
