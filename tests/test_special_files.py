"""Only regular files are read, and only up to the size cap: named pipes, devices and links to
them are reported "not a regular file" (never opened for a blocking read), big files are refused
by their size before reading, and the text files users give (CSV, classes.txt) must be UTF-8."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from regraft.data import check_readable, discover, scan
from regraft.data.files import expand_paths, max_image_bytes, read_text
from regraft.data.imageio import ImageDecodeError, probe_image, read_image_bytes
from regraft.errors import ConfigError, DataError
from tests.helpers import run_cli, user_error
from tests.imagegen import make_image_folder


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A train/val folder whose train/red holds a FIFO, a link to /dev/zero and a 300 MB sparse file, all named .jpg."""
    root = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=4, val_per_class=2, size=16)
    red = root / "train" / "red"
    files = {"fifo": red / "pipe.jpg", "zero": red / "zero.jpg", "big": red / "big.jpg"}
    os.mkfifo(files["fifo"])
    files["zero"].symlink_to("/dev/zero")
    with files["big"].open("wb") as fh:
        fh.truncate(300 * 2**20)  # sparse: costs no disk, reads as 300 MB of zeros
    return root, files


def test_special_files_are_refused_before_reading(hostile):
    _, f = hostile
    t0 = time.perf_counter()
    for kind, what in (("fifo", r"a named pipe \(FIFO\)"), ("zero", "a character device")):
        for reader in (read_image_bytes, probe_image):
            with pytest.raises(ImageDecodeError, match=rf"not a regular file \({what}\)") as info:
                reader(f[kind])
            assert info.value.kind == "not-regular"
    with pytest.raises(ImageDecodeError, match=r"file too large \(300 MB, over the 256 MB limit; raise it with --max-image-mb") as info:
        read_image_bytes(f["big"])
    assert info.value.kind == "too-large"
    assert time.perf_counter() - t0 < 5  # nothing was read: a read of /dev/zero never ends


def test_scan_reports_them_and_training_skips_them(hostile):
    root, f = hostile
    report = scan(root)
    bad = {b.path: (b.kind, b.reason) for b in report.bad_files}
    assert bad == {
        str(f["fifo"]): ("not-regular", "not a regular file (a named pipe (FIFO))"),
        str(f["zero"]): ("not-regular", "not a regular file (a character device)"),
        str(f["big"]): ("too-large", "file too large (300 MB, over the 256 MB limit; raise it with --max-image-mb or REGRAFT_MAX_IMAGE_MB)"),
    }
    assert report.readable["train"] == {"blue": 4, "red": 4}
    splits = discover(root)
    assert sorted(check_readable(splits)) == sorted(map(str, f.values()))


def test_the_size_cap_is_configurable(hostile, monkeypatch):
    root, f = hostile
    small = root / "train" / "blue" / os.listdir(root / "train" / "blue")[0]
    monkeypatch.setenv("REGRAFT_MAX_IMAGE_MB", "0.0001")  # about 100 bytes
    assert max_image_bytes() == int(0.0001 * 2**20)
    with pytest.raises(ImageDecodeError, match=r"file too large \(\d+ bytes, over the 104 bytes limit"):
        read_image_bytes(small)
    monkeypatch.setenv("REGRAFT_MAX_IMAGE_MB", "400")
    assert len(read_image_bytes(f["big"])) == 300 * 2**20
    monkeypatch.setenv("REGRAFT_MAX_IMAGE_MB", "lots")
    with pytest.raises(ConfigError, match="REGRAFT_MAX_IMAGE_MB must be a positive number of megabytes"):
        max_image_bytes()


def test_scan_command_does_not_hang_on_a_pipe_and_takes_max_image_mb(hostile):
    root, f = hostile
    proc = run_cli("scan", str(root), "--json", "--max-image-mb", "1000", timeout=120)
    assert proc.returncode == 0, proc.stderr
    kinds = {b["path"]: b["kind"] for b in json.loads(proc.stdout)["bad_files"]}
    # 300 MB is under 1000 MB: the big file is read now, and found to hold no image
    assert kinds == {str(f["fifo"]): "not-regular", str(f["zero"]): "not-regular", str(f["big"]): "not-image"}
    user_error(run_cli("scan", str(root), "--max-image-mb", "0"), "--max-image-mb must be a positive number of megabytes; got 0")


def test_predict_paths_keep_special_files_so_each_gets_its_error(hostile):
    _, f = hostile
    assert expand_paths([f["fifo"]]) == [f["fifo"]]
    with pytest.raises(DataError, match="no such image or folder"):
        expand_paths([f["fifo"].with_name("missing.jpg")])


# ----------------------------------------------------------------------------- text files


def _csv_root(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "d", classes=("cat", "dog"), per_class=3, size=16, split=False)


def test_non_utf8_csv_and_classes_file_are_one_line(tmp_path):
    root = _csv_root(tmp_path)
    (root / "train.csv").write_bytes("path,label\ncat/0.png,chat\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"the CSV file .*train.csv is not UTF-8 text \(byte 0xe9 at offset 25\): save it as UTF-8"):
        discover(root, train_csv="train.csv")
    (root / "classes.txt").write_bytes(b"cat\n\xffdog\n")
    with pytest.raises(DataError, match=r"the classes file .*classes.txt is not UTF-8 text \(byte 0xff"):
        discover(root)
    (root / "classes.txt").unlink()
    os.mkfifo(root / "pipe.csv")
    with pytest.raises(DataError, match="not a regular file"):
        read_text(root / "pipe.csv", what="CSV file")


def test_an_empty_csv_label_is_refused_not_made_a_class(tmp_path):
    root = _csv_root(tmp_path)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    rows = [f"{n},{n.split('/')[0]}" for n in names]
    rows[2] = f"{names[2]}, "
    (root / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"train.csv:4: empty label in .*; every row needs a path and a class label"):
        discover(root, train_csv="train.csv")
    with pytest.raises(DataError, match="empty label"):
        scan(root, train_csv="train.csv")


def test_a_csv_field_over_the_csv_limit_is_one_line(tmp_path):
    root = _csv_root(tmp_path)
    (root / "train.csv").write_text('path,label\n"' + "x" * 200_000 + '",cat\n')
    with pytest.raises(DataError, match=r"train.csv:\d+: not a readable CSV row"):
        discover(root, train_csv="train.csv")


def test_max_image_mb_in_process_leaves_the_callers_environment(tmp_path, monkeypatch, capsys):
    """``regraft.cli.main`` called from Python (a notebook) sets the cap for its own command only."""
    from regraft.cli.main import main

    root = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=2, val_per_class=1, size=16)
    monkeypatch.delenv("REGRAFT_MAX_IMAGE_MB", raising=False)
    assert main(["scan", str(root), "--json", "--max-image-mb", "2"]) == 0
    assert "REGRAFT_MAX_IMAGE_MB" not in os.environ
    monkeypatch.setenv("REGRAFT_MAX_IMAGE_MB", "300")
    assert main(["scan", str(root), "--json", "--max-image-mb", "2"]) == 0
    assert os.environ["REGRAFT_MAX_IMAGE_MB"] == "300"
