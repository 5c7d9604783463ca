"""A run's data findings (issue 20, item 3): the probe's cached features, analysed once, give
``data_findings.json``, the report's "data" section and ``summary.json``'s ``data`` totals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from regraft.audit.findings import FINDINGS_FILE
from tests.helpers import TINY, ok, run_cli, save_tiny_pretrained
from tests.imagegen import make_image_folder


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_tiny_pretrained(tmp_path / "pretrained.pth")


def _planted(root: Path) -> tuple[Path, Path, Path]:
    """A 3-class folder with one blue training image filed under red, one training image copied
    into val/, and one unreadable training file."""
    make_image_folder(root, classes=("blue", "green", "red"), per_class=12, val_per_class=4, size=32)
    flipped = root / "train" / "red" / "blue_flipped.png"
    shutil.move(root / "train" / "blue" / "blue_000.png", flipped)
    copy = root / "val" / "green" / "green_copy.png"
    shutil.copy(root / "train" / "green" / "green_005.png", copy)
    (root / "train" / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return flipped, copy, root / "train" / "green" / "green_005.png"


@pytest.mark.slow
def test_a_probe_run_reports_its_copies_and_suspects(tmp_path, weights):
    data = tmp_path / "data"
    flipped, copy, original = _planted(data)
    run = tmp_path / "run"
    proc = ok(run_cli("train", str(data), *TINY, "--weights", str(weights), "--strategy", "probe", "--out", str(run)))
    assert "data findings:" in proc.stdout
    findings = json.loads((run / FINDINGS_FILE).read_text())
    assert findings["images"] == 3 * 12 + 3 * 4 + 1  # every readable image and the copy; not the broken file
    leaks = {frozenset((p["a"], p["b"])) for p in findings["leaks"]}
    assert frozenset((str(original), str(copy))) in leaks
    assert all("broken.png" not in json.dumps(item) for item in findings["label_issues"] + findings["leaks"])
    suspects = [i["path"] for i in findings["label_issues"]]
    assert str(flipped) in suspects
    flagged = next(i for i in findings["label_issues"] if i["path"] == str(flipped))
    assert (flagged["given"], flagged["suggested"]) == ("red", "blue")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"] == {"label_issues": findings["label_issues_total"], "leaks": findings["leaks_total"]}
    html = (run / "report.html").read_text()
    assert "blue_flipped.png" in html and "green_copy.png" in html


@pytest.mark.slow
def test_findings_can_be_turned_off(tmp_path, weights):
    data = tmp_path / "data"
    _planted(data)
    run = tmp_path / "run"
    ok(run_cli("train", str(data), *TINY, "--weights", str(weights), "--strategy", "probe", "--out", str(run),
               "--set", "data_findings=false"))
    assert not (run / FINDINGS_FILE).exists()
    assert "data" not in json.loads((run / "summary.json").read_text())


def test_findings_without_validation_images_judge_the_training_images_alone():
    """The cross-validated regime holds no image out: the run's findings have no validation rows."""
    from regraft.audit.findings import run_findings

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(30) % 3
    x = centres[y] + torch.randn(30, 16, generator=g)
    y_given = y.clone()
    y_given[0] = 1  # one image filed under the wrong class
    paths = [f"train/{int(c)}/{i}.png" for i, c in enumerate(y_given)]
    found = run_findings(x, y_given, x[:0], y[:0], classes=["a", "b", "c"], train_paths=paths, val_paths=[])
    assert found["images"] == 30 and found["leaks_total"] == 0
    assert found["label_issues"][0]["path"] == paths[0] and found["label_issues"][0]["suggested"] == "a"


@pytest.mark.slow
def test_a_run_without_a_validation_split_still_gets_its_findings(tmp_path, weights):
    data = make_image_folder(tmp_path / "flat", classes=("blue", "green", "red"), per_class=8, size=32, split=False)
    run = tmp_path / "run"
    proc = ok(run_cli("train", str(data), *TINY, "--weights", str(weights), "--strategy", "probe", "--out", str(run)))
    assert "data findings:" in proc.stdout, proc.stdout
    findings = json.loads((run / FINDINGS_FILE).read_text())
    assert findings["images"] == 24 and findings["leaks_total"] == 0
