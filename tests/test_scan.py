"""regraft.data.scan and ``regraft scan``: every bad file named, duplicates, leakage, empty
classes, imbalance, layout problems collected rather than raised; exit codes and JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from regraft.data import scan
from regraft.errors import DataError
from tests.helpers import BAD_KINDS, make_messy_folder
from tests.imagegen import make_image_folder


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "messy"
    return root, make_messy_folder(root)


def test_scan_names_every_bad_file_with_its_kind(messy):
    root, f = messy
    report = scan(root)
    assert {b.path: b.kind for b in report.bad_files} == {str(f[k]): kind for k, kind in BAD_KINDS.items()}
    assert all(b.split == "train" and b.label == "cat" for b in report.bad_files)
    assert report.counts["train"] == {"cat": 13, "dog": 4}  # hidden files and notes.txt not counted
    assert report.readable["train"] == {"cat": 10, "dog": 4}
    assert {"I;16", "CMYK", "P", "RGBA", "L", "RGB"} <= set(report.modes)
    assert report.formats == {"JPEG": 15, "PNG": 4}  # readable files of both splits
    assert str(f["notes"]) in report.ignored
    assert not report.ok and report.problems[0].startswith("3 unusable files (")


def test_scan_finds_leakage_duplicates_and_label_conflicts(messy):
    root, f = messy
    shutil.copy(f["gray"], root / "train" / "dog" / "gray_copy.png")  # same image, another class
    shutil.copy(root / "train" / "dog" / "good_0.jpg", root / "train" / "dog" / "again.jpg")
    report = scan(root)
    good0 = str(root / "train" / "cat" / "good_0.jpg")
    assert report.leakage == [sorted([good0, str(f["leak"])])]
    assert report.label_conflicts == [sorted([str(f["gray"]), str(root / "train" / "dog" / "gray_copy.png")])]
    assert sorted([str(root / "train" / "dog" / "again.jpg"), str(root / "train" / "dog" / "good_0.jpg")]) in report.duplicates
    assert len(report.duplicates) == 3
    assert any("in both train and validation (leakage)" in p for p in report.problems)
    assert any("under more than one class" in p for p in report.problems)


def test_clean_folder_has_no_problems(toy_data):
    report = scan(toy_data)
    assert report.ok and report.problems == [] and report.bad_files == []
    assert report.layout == "split:val" and report.imbalance == {"train": 1.0, "val": 1.0}
    assert report.sizes["width"] == {"min": 32, "median": 32, "max": 32}
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_layout_problems_are_collected_not_raised(toy_data):
    (toy_data / "train" / "green").mkdir()
    make_image_folder(toy_data / "val", classes=("purple",), per_class=2, size=16, split=False)
    report = scan(toy_data)
    assert any("class 'green' has no images" in p for p in report.layout_problems)
    assert any("class folders not in the class list: purple" in p for p in report.layout_problems)
    assert "train/green" in report.empty_classes and "val/green" in report.empty_classes
    with pytest.raises(DataError, match="data folder not found"):
        scan(toy_data / "nope")


def test_imbalance_is_flagged_above_the_threshold(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("big",), per_class=8, size=16, val_per_class=2)
    make_image_folder(root, classes=("small",), per_class=2, size=16, val_per_class=2, seed=1)
    report = scan(root)
    assert report.imbalance["train"] == 4.0
    assert any("class imbalance in train" in p for p in report.problems)
    assert scan(root, imbalance_threshold=5.0).ok


def test_csv_bad_rows_become_problems(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("cat", "dog"), per_class=3, size=16, split=False)
    (root / "classes.txt").write_text("cat\ndog\n")  # found without being named
    (root / "train.csv").write_text("cat/cat_000.png,cat\ndog/dog_000.png,dog\ncat/cat_001.png,horse\ndog/gone.png,dog\n")
    report = scan(root, train_csv="train.csv")
    assert any("train.csv:3: label 'horse'" in p for p in report.layout_problems)
    assert [(Path(b.path).name, b.kind) for b in report.bad_files] == [("gone.png", "missing")]


# ----------------------------------------------------------------------------- the command


def test_cli_json_and_strict_exit_codes(cli, messy, toy_data):
    root, f = messy
    out = cli("scan", str(root), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {b["path"] for b in data["bad_files"]} == {str(f[k]) for k in BAD_KINDS}
    assert data["ok"] is False and data["leakage"]
    assert cli("scan", str(root), "--strict", "--json").returncode == 1
    assert cli("scan", str(toy_data), "--strict").returncode == 0


def test_cli_human_output_lists_every_bad_path(cli, messy):
    root, f = messy
    out = cli("scan", str(root))
    assert out.returncode == 0, out.stderr
    for kind in BAD_KINDS:
        assert str(f[kind]) in out.stdout
    assert "leakage" in out.stdout and "split:val" in out.stdout


def test_cli_missing_folder_is_one_line_and_exit_2(cli, tmp_path):
    out = cli("scan", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert out.stderr.startswith("regraft: error: data folder not found") and out.stderr.count("\n") == 1
