"""regraft.data.fixes: the fix loop's CSV, written by the scan, edited by a person, applied by train."""

from __future__ import annotations

from pathlib import Path

import pytest

from regraft.data import discover
from regraft.data.fixes import Fix, apply_fixes, read_fixes, write_fixes
from regraft.errors import DataError
from tests.helpers import make_image_folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "d", classes=("blue", "green", "red"), per_class=4, val_per_class=2, size=16)


def test_written_rows_read_back_with_paths_relative_to_the_data(data, tmp_path):
    splits = discover(data)
    rows = [Fix(splits.train[0].path, "blue", "red", "relabel", "label issue"),
            Fix(splits.val[1].path, "blue", "", "exclude", "leak, with a comma")]
    target = write_fixes(tmp_path / "fixes.csv", rows, root=data)
    text = target.read_text()
    assert text.splitlines()[0] == "path,given,suggested,action,reason"
    assert "train/blue/blue_000.png,blue,red,relabel" in text and str(data) not in text
    back = read_fixes(target)
    assert [r.action for r in back.rows] == ["relabel", "exclude"] and back.rows[1].reason == "leak, with a comma"
    assert back.source == str(target)


def test_apply_excludes_relabels_and_keeps(data, tmp_path):
    splits = discover(data)
    blue0, blue_val, red1 = splits.train[0].path, splits.val[0].path, splits.train[9].path
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        "path,given,suggested,action,reason\n"
        f"train/blue/blue_000.png,blue,red,relabel,\n"
        f"{blue_val},blue,,exclude,\n"
        f"{red1},red,,keep,\n"
        "train/blue/gone.png,blue,,exclude,\n"
    )
    cleaned, applied = apply_fixes(splits, read_fixes(fixes))
    assert applied.excluded == [blue_val] and applied.relabelled == [(blue0, "blue", "red")]
    assert applied.not_found == ["train/blue/gone.png"]
    assert applied.describe().endswith("1 images excluded, 1 relabelled, 1 paths not in the data")
    assert len(cleaned.val) == len(splits.val) - 1 and blue_val not in {s.path for s in cleaned.val}
    assert {s.path: s.label for s in cleaned.train}[blue0] == splits.classes.index("red")
    assert len(splits.train) == len(cleaned.train) and splits.train[0].label == 0  # the input is untouched


def test_a_path_only_file_excludes_every_path(data, tmp_path):
    splits = discover(data)
    fixes = tmp_path / "drop.csv"
    fixes.write_text("path\n" + "\n".join(s.path for s in splits.train[:2]) + "\n")
    cleaned, applied = apply_fixes(splits, read_fixes(fixes))
    assert len(applied.excluded) == 2 and len(cleaned.train) == len(splits.train) - 2


@pytest.mark.parametrize(("text", "message"), [
    ("file,label\nx.png,red\n", "no 'path' column .* the header must read path,given,suggested,action,reason"),
    ("path,action\ntrain/blue/blue_000.png,delete\n", "line 2: unknown action 'delete'; use one of exclude, relabel, keep"),
    ("path,action\ntrain/blue/blue_000.png,relabel\n", "line 2: action relabel needs the new class in the 'suggested' column"),
])
def test_bad_files_name_the_line_and_the_fix(tmp_path, text, message):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(text)
    with pytest.raises(DataError, match=message):
        read_fixes(fixes)
    with pytest.raises(DataError, match="cannot read the fixes file .*missing.csv"):
        read_fixes(tmp_path / "missing.csv")


def test_fixes_that_do_not_fit_the_data_are_refused(data, tmp_path):
    splits = discover(data)
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("path,suggested,action\ntrain/blue/blue_000.png,purple,relabel\n")
    with pytest.raises(DataError, match="cannot relabel .* as 'purple': no such class"):
        apply_fixes(splits, read_fixes(fixes))
    fixes.write_text("path\nelsewhere/a.png\nelsewhere/b.png\n")
    with pytest.raises(DataError, match="none of its 2 paths is an image of .*another data folder"):
        apply_fixes(splits, read_fixes(fixes))
    fixes.write_text("path\n" + "\n".join(s.path for s in splits.train if s.label == 1) + "\n")
    with pytest.raises(DataError, match="leaves class 'green' without training images"):
        apply_fixes(splits, read_fixes(fixes))


@pytest.mark.slow
def test_train_exclude_trains_on_the_cleaned_set_and_records_it(data, tmp_path):
    import json

    from tests.helpers import TINY, ok, run_cli, user_error

    fixes = tmp_path / "fixes.csv"
    fixes.write_text("path,given,suggested,action\ntrain/blue/blue_000.png,blue,red,relabel\n"
                     "train/green/green_001.png,green,,exclude\nval/red/red_000.png,red,,keep\n")
    run = tmp_path / "run"
    out = ok(run_cli("train", str(data), *TINY, "--weights", "none", "--epochs", "1", "--out", str(run),
                     "--exclude", str(fixes)))
    assert "fixes: " in out.stdout + out.stderr and "1 images excluded, 1 relabelled" in out.stdout + out.stderr
    applied = json.loads((run / "fixes_applied.json").read_text())
    assert [p.endswith("green_001.png") for p in applied["excluded"]] == [True]
    assert applied["relabelled"][0][1:] == ["blue", "red"]
    assert "exclude:" in (run / "config.yaml").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,action\ntrain/blue/blue_000.png,delete\n")
    user_error(run_cli("train", str(data), *TINY, "--weights", "none", "--epochs", "1", "--out", str(tmp_path / "r2"),
                       "--exclude", str(bad)), "unknown action 'delete'")
