"""regraft.data.scan and ``regraft scan``: every bad file named, duplicates, leakage, empty
classes, imbalance, layout problems collected rather than raised; exit codes and JSON."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regraft.data import scan
from regraft.errors import DataError
from tests.helpers import (
    BAD_KINDS,
    chromium,
    images_loaded_in_chromium,
    make_messy_folder,
    run_cli,
    user_error,
)
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


# ----------------------------------------------------------------------------- the deep scan (--model)

DEEP = ["--model", "test_resnet", "--weights", "none", "--img-size", "32", "--workers", "0", "--batch-size", "16"]
_TINTS = {"blue": (40, 60, 200), "red": (200, 40, 40), "yellow": (210, 200, 40)}


def _photo(tint: tuple[int, int, int], rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A tinted photograph-like image: smooth structure and grain (so hashes tell images apart)."""
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    mixed = 0.45 * smooth + 0.55 * np.array(tint, dtype=np.float32) + rng.normal(0, 5, smooth.shape)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory) -> dict:
    """A folder of 3 tinted classes with 3 images filed under the wrong class and 2 copies (1 a leak),
    deep-scanned once through the CLI (JSON, page, fixes) and once more (for the store)."""
    tmp = tmp_path_factory.mktemp("deep")
    rng = np.random.default_rng(0)
    root = tmp / "noisy"
    wrong = {}
    for split, n in (("train", 14), ("val", 5)):
        for name, tint in _TINTS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                _photo(tint, rng).save(root / split / name / f"{name}_{i:02d}.jpg", quality=92)
    for split, true, filed, i in (("train", "blue", "red", 3), ("train", "red", "yellow", 7), ("val", "yellow", "blue", 2)):
        dst = root / split / filed / f"x{i:02d}.jpg"
        (root / split / true / f"{true}_{i:02d}.jpg").rename(dst)
        wrong[str(dst)] = (true, filed)
    original, other = root / "train" / "blue" / "blue_05.jpg", root / "train" / "yellow" / "yellow_04.jpg"
    Image.open(original).resize((33, 33), Image.BILINEAR).save(root / "val" / "blue" / "copy_a.jpg", quality=90)
    Image.open(other).save(root / "train" / "yellow" / "copy_b.jpg", quality=35)
    copies = [{str(original), str(root / "val" / "blue" / "copy_a.jpg")}, {str(other), str(root / "train" / "yellow" / "copy_b.jpg")}]
    env = {"REGRAFT_CACHE_DIR": str(tmp / "cache")}
    page, fixes = tmp / "scan.html", tmp / "fixes.csv"
    first = run_cli("scan", str(root), *DEEP, "--json", "--html", str(page), "--fixes", str(fixes), env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli("scan", str(root), *DEEP, "--top", "3", env=env)
    assert second.returncode == 0, second.stderr
    return {"root": root, "wrong": wrong, "copies": copies, "data": json.loads(first.stdout), "page": page,
            "fixes": fixes, "text": second.stdout, "stderr": second.stderr, "tmp": tmp}


def test_deep_scan_finds_the_planted_labels_and_copies_first(deep_run):
    data, wrong = deep_run["data"], deep_run["wrong"]
    issues = data["label_issues"]
    assert {i["path"] for i in issues[: len(wrong)]} == set(wrong)
    for issue in issues[: len(wrong)]:
        assert (issue["suggested"], issue["given"]) == wrong[issue["path"]]
    assert len(issues) <= len(wrong) + 1
    assert [{p["a"], p["b"]} for p in data["near_duplicates"]] == deep_run["copies"]  # the leak first, nothing else
    assert [p["leak"] for p in data["near_duplicates"]] == [True, False]
    assert data["deep_scan"]["model"]["name"] == "timm:test_resnet" and data["deep_scan"]["probe"]["folds"] == 5
    assert data["ok"] is False and any("suspected label errors" in p for p in data["problems"])


def test_deep_scan_writes_fixes_and_reuses_the_store(deep_run):
    rows = list(csv.DictReader(deep_run["fixes"].open()))
    excluded = {r["path"] for r in rows if r["action"] == "exclude"}
    assert excluded >= {os.path.relpath(p, deep_run["root"]) for p in deep_run["wrong"]}
    assert "val/blue/copy_a.jpg" in {r["path"] for r in rows if "leak" in r["reason"]}
    assert "59 computed" not in deep_run["stderr"] and "0 computed, 59 from the store" in deep_run["stderr"]
    text = deep_run["text"]
    assert "suspected label errors (most suspect first):" in text and "LEAK" in text
    assert "... and" not in text.split("near-duplicates")[1]  # 2 pairs fit in --top 3


def test_deep_scan_page_embeds_every_thumbnail_and_renders_in_chromium(deep_run):
    html = deep_run["page"].read_text()
    assert "script-src 'none'" in html and 'src="http' not in html and html.count('src="data:image/jpeg;base64,') >= 10
    for path in deep_run["wrong"]:
        assert f'alt="{path}"' in html
    if chromium() is None:
        pytest.skip("no chromium on this machine")
    loaded, total, broken = images_loaded_in_chromium(html, deep_run["tmp"])
    assert total >= 10 and loaded == total, broken


def test_deep_scan_options_need_a_model(cli, toy_data, tmp_path):
    user_error(cli("scan", str(toy_data), "--html", str(tmp_path / "x.html")), "--html needs the deep scan: add --model M")
    user_error(cli("scan", str(toy_data), "--fixes", str(tmp_path / "f.csv")), "--fixes needs the deep scan")
