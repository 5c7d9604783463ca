"""``regraft train --tta flip``: the probe is also measured with each validation image and its
mirror averaged (one extra pass over the validation images), beside its plain figure, and
``regraft eval RUN --tta flip`` reproduces that figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY, ok, run_cli, save_tiny_pretrained, user_error


def _sided(root: Path, *, per_class: int, val_per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Class ``left`` has a bright bar on the left, ``right`` on the right: a mirror swaps them,
    so flip-TTA changes predictions (it averages an image with its opposite)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for cls in ("left", "right"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(rng.normal(90, 20, size=(size, size, 3)), 0, 255)
                lo = int(rng.integers(0, size // 4))
                cols = slice(lo, lo + size // 4) if cls == "left" else slice(size - lo - size // 4, size - lo)
                arr[:, cols] = 230
                Image.fromarray(arr.astype(np.uint8)).save(root / split / cls / f"{cls}_{i:03d}.png")
    return root


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_tiny_pretrained(tmp_path / "pretrained.pth")


@pytest.mark.slow
def test_the_probes_tta_figure_is_what_eval_tta_measures(tmp_path, weights):
    data = _sided(tmp_path / "data", per_class=12, val_per_class=8)
    run = tmp_path / "run"
    proc = ok(run_cli("train", str(data), *TINY, "--weights", str(weights), "--strategy", "probe", "--tta", "flip",
                      "--out", str(run)))
    assert "with TTA flip: val acc" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    tta = summary["probe"]["tta"]
    assert tta["views"] == "flip" and tta["plain"]["acc"] == pytest.approx(summary["best_val_acc"], abs=1e-9)
    assert tta["changed"] > 0  # a mirror swaps the classes: averaging with it changes predictions
    measured = json.loads(ok(run_cli("eval", str(run), "--tta", "flip", "--json")).stdout)
    assert measured["accuracy"] == pytest.approx(summary["best_val_acc"], abs=1e-9)
    assert measured["tta"]["accuracy"] == pytest.approx(tta["acc"], abs=1e-9)
    assert measured["tta"]["loss"] == pytest.approx(tta["loss"], rel=1e-4)


@pytest.mark.slow
def test_tta_on_a_strategy_without_a_probe_says_where_to_measure_it(tmp_path):
    data = _sided(tmp_path / "data", per_class=4, val_per_class=2)
    proc = ok(run_cli("train", str(data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "1",
                      "--tta", "flip", "--out", str(tmp_path / "r")))
    assert "--tta flip measures the probe, which strategy scratch does not fit: measure the run with 'regraft eval RUN --tta flip'" in proc.stdout
    assert "tta" not in json.loads((tmp_path / "r" / "summary.json").read_text()).get("probe", {})


def test_train_tta_takes_none_or_flip(tmp_path):
    data = _sided(tmp_path / "data", per_class=2, val_per_class=2)
    user_error(run_cli("train", str(data), *TINY, "--tta", "flip+crops", "--out", str(tmp_path / "r")),
               "tta must be one of none, flip")
