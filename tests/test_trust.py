"""Issue 17, end to end through the real command: a run folder from a stranger runs no code, regraft
deletes only what it made, one writer per run folder, a failed resume changes nothing, a kill
during the first checkpoint write still resumes, special files are skipped, disk full is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from regraft.runs import OWNER_FILE, RUN_MARKER, load_checkpoint, read_marker
from tests.helpers import TINY, ok, run_cli, user_error
from tests.imagegen import make_image_folder

TRAIN = ["--weights", "none", "--strategy", "scratch", "--lr", "3e-3"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished two-epoch run; tests work on copies of it."""
    root = tmp_path_factory.mktemp("trust")
    data = make_image_folder(root / "data", classes=("blue", "red"), per_class=8, val_per_class=4, size=32)
    run = root / "run"
    ok(run_cli("train", str(data), *TINY, *TRAIN, "--epochs", "2", "--out", str(run), "-q"))
    return data, run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def _evil_pickle(path: Path, marker: Path) -> Path:
    """A .pth that runs ``touch marker`` when unpickled in full."""
    code = (
        "import os, sys, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'state_dict': Payload()}}, {str(path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def _poison(run: Path, weights: str) -> None:
    """What an attacker ships: config.yaml and the checkpoint's own config both name ``weights``
    (with a strategy that loads them) and trust_checkpoint true, consistent with each other."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(weights=weights, strategy="full", trust_checkpoint=True, overwrite=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["config"].update(weights=weights, strategy="full", trust_checkpoint=True)
    torch.save(state, run / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_a_malicious_run_folder_runs_no_code(trained, tmp_path):
    _, run = trained
    pwned = tmp_path / "PWNED"
    evil = _copy(run, tmp_path / "downloaded-run")
    _poison(evil, str(_evil_pickle(tmp_path / "evil.pth", pwned)))
    before = snapshot(evil)
    for args in (["--resume", str(evil)], ["--config", str(evil / "config.yaml"), "--out", str(tmp_path / "rerun")]):
        proc = run_cli("train", *args)
        user_error(proc, "evil.pth: refused to unpickle 'posix.system', which can run code when loaded; pass --trust-checkpoint")
        assert not pwned.exists()
        assert "config.yaml sets trust_checkpoint: True, ignored: a file cannot grant that" in proc.stdout
        assert f"weights: {tmp_path / 'evil.pth'} (a local file, read without running code" in proc.stdout
    assert snapshot(evil) == before
    # trust given on the command itself is honoured: proof that the refusal above came from the file
    proc = run_cli("train", "--config", str(evil / "config.yaml"), "--out", str(tmp_path / "trusted"), "--trust-checkpoint")
    assert proc.returncode == 2 and pwned.exists()


@pytest.mark.slow
def test_a_url_named_by_a_run_config_is_announced_before_the_download(trained, tmp_path):
    _, run = trained
    evil = _copy(run, tmp_path / "downloaded-run")
    url = "http://127.0.0.1:9/weights/evil.pth"  # nothing listens on the discard port
    _poison(evil, url)
    proc = run_cli("train", "--resume", str(evil))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"weights: {url} (a URL: downloaded from 127.0.0.1 unless cached); settings from {evil / 'config.yaml'}" in proc.stdout


@pytest.mark.slow
def test_a_failed_resume_leaves_the_run_byte_for_byte(trained, tmp_path):
    data, run = trained
    broken = _copy(run, tmp_path / "truncated")
    ckpt = broken / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = snapshot(broken)
    user_error(run_cli("train", "--resume", str(broken)), "checkpoints/last.pt cannot be read")
    assert snapshot(broken) == before
    # a failure found after the lock is taken and the model is built: the data gained a class
    changed = _copy(run, tmp_path / "new-class")
    before = snapshot(changed)
    extra = make_image_folder(data, classes=("green",), per_class=2, val_per_class=1, size=32)
    try:
        user_error(run_cli("train", "--resume", str(changed)), "the data now has classes ['blue', 'green', 'red']")
    finally:
        for split in ("train", "val"):
            shutil.rmtree(extra / split / "green")
    assert snapshot(changed) == before


@pytest.mark.slow
def test_a_kill_during_the_first_checkpoint_write_still_resumes(trained, tmp_path):
    _, run = trained
    killed = _copy(run, tmp_path / "killed")
    # what SIGKILL during the first checkpoint write leaves: the run's start files, maybe the first
    # best weights, no checkpoint, and the temporary file of the interrupted write
    for name in ("checkpoints/last.pt", "summary.json", "metrics.csv", "report.html"):
        (killed / name).unlink()
    stale = killed / "checkpoints" / ".last.pt.k1ll3d00.tmp"
    stale.write_bytes(os.urandom(3_000_000))
    (killed / "my-notes.txt").write_text("mine")
    proc = ok(run_cli("train", "--resume", str(killed)))
    assert "has no checkpoint yet (stopped before its first epoch was saved): starting it again from the beginning" in proc.stdout
    assert not stale.exists() and (killed / "my-notes.txt").read_text() == "mine"
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["fit"]["epoch"] == 2
    assert json.loads((killed / "summary.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_two_trainings_on_one_out_the_second_is_refused_naming_the_first(trained, tmp_path):
    data, _ = trained
    out = tmp_path / "shared"
    env = dict(os.environ, REGRAFT_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "regraft", "train", str(data), *TINY, *TRAIN, "--out", str(out), "-q"]
    # the first writer trains for long enough that the second surely arrives while it runs
    first = subprocess.Popen([*args, "--epochs", "200", "--seed", "1"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "last.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run([*args, "--epochs", "1", "--seed", "2", "--overwrite"], capture_output=True, text=True, env=env, timeout=300)
        assert first.poll() is None, "the first run ended before the second one arrived"
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: the first stops cleanly after its last saved epoch
        first.wait(timeout=120)
    user_error(second, f"shared is in use by pid {first.pid} on ")
    assert "--epochs 200 --seed 1" in second.stderr  # the holder's command, so the user knows which run it is
    assert first.returncode == 130 and "continue with 'regraft train --resume" in first.stderr.read()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["seed"], cfg["epochs"]) == (1, 200)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["config"]["seed"] == 1
    assert read_marker(out).kind == "train" and not (out / OWNER_FILE).exists()


@pytest.mark.slow
def test_training_skips_a_fifo_and_a_dev_zero_link(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=6, val_per_class=3, size=32)
    fifo, zero = data / "train" / "red" / "pipe.jpg", data / "train" / "blue" / "zero.jpg"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    run = tmp_path / "run"
    ok(run_cli("train", str(data), *TINY, *TRAIN, "--epochs", "1", "--out", str(run), "-q", timeout=600))
    assert sorted((run / "skipped_files.txt").read_text().split()) == sorted([str(fifo), str(zero)])
    assert json.loads((run / "summary.json").read_text())["n_train"] == 12


# ----------------------------------------------------------------------------- what regraft may delete


def test_overwrite_and_lr_find_never_clear_what_regraft_did_not_make(toy_data, tmp_path):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    user_error(run_cli("train", str(toy_data), *TINY, "--out", str(docs), "--overwrite"),
               "documents is not empty and is not a regraft run folder (it holds thesis.txt)")
    user_error(run_cli("lr-find", str(toy_data), *TINY, "--out", str(docs)), "is not a regraft run folder")
    assert sorted(p.name for p in docs.iterdir()) == ["thesis.txt"]
    before = snapshot(toy_data)
    user_error(run_cli("train", str(toy_data), *TINY, "--out", str(toy_data / "train" / "run"), "--overwrite"),
               "is inside the data folder")
    assert snapshot(toy_data) == before
    target = tmp_path / "a-file"
    target.write_text("keep")
    user_error(run_cli("train", str(toy_data), *TINY, "--out", str(target)), "is a file, not a folder")


@pytest.mark.slow
def test_lr_find_never_clears_a_training_run(trained, tmp_path):
    data, run = trained
    mine = _copy(run, tmp_path / "run")
    before = snapshot(mine)
    user_error(run_cli("lr-find", str(data), *TINY, "--out", str(mine)), "holds a regraft train run; an lr-find run never replaces it")
    assert snapshot(mine) == before
    (mine / "notes.txt").write_text("mine")
    ok(run_cli("train", str(data), *TINY, *TRAIN, "--epochs", "1", "--out", str(mine), "--overwrite", "-q"))
    assert (mine / "notes.txt").read_text() == "mine"
    assert json.loads((mine / "summary.json").read_text())["epochs"] == 1 and (mine / RUN_MARKER).is_file()


# ----------------------------------------------------------------------------- the system says no


def _mount_tmpfs(where: Path, *options: str) -> None:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); the disk-full test needs root and CAP_SYS_ADMIN")


@pytest.mark.slow
def test_disk_full_and_read_only_are_one_line(toy_data, tmp_path):
    full, readonly = tmp_path / "full", tmp_path / "readonly"
    _mount_tmpfs(full, "size=600k")  # the run's start files fit, its 1.5 MB weights do not
    try:
        _mount_tmpfs(readonly, "size=1m", "ro")
        try:
            proc = run_cli("train", str(toy_data), *TINY, *TRAIN, "--epochs", "1", "--out", str(full / "run"), "-q", timeout=600)
            user_error(proc, f"cannot write {full / 'run'}/")
            assert "no space left on the device: free some space or choose another --out" in proc.stderr
            assert not list((full / "run").rglob("*.tmp"))  # the failed write took its temporary file with it
            user_error(run_cli("train", str(toy_data), *TINY, "--out", str(readonly / "run")),
                       f"cannot write {readonly / 'run'}: read-only file system")
        finally:
            subprocess.run(["umount", str(readonly)], check=False)
    finally:
        subprocess.run(["umount", str(full)], check=False)


@pytest.mark.parametrize("command", [["train"], ["lr-find"], ["compare", "--strategies", "probe,scratch"]])
def test_a_mistyped_or_file_data_path_leaves_no_run_folder_behind(tmp_path, command):
    (tmp_path / "notes.txt").write_text("mine")
    for given, said in (("dta", f"data folder not found: {tmp_path / 'dta'}"), ("notes.txt", f"{tmp_path / 'notes.txt'} is a file, not a data folder")):
        user_error(run_cli(command[0], given, *command[1:], "--model", "test_resnet", cwd=tmp_path), said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no runs/<name> made for nothing
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_debug_works_before_the_command(tmp_path):
    proc = run_cli("--debug", "eval", str(tmp_path / "missing"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RunError" in proc.stderr
    user_error(run_cli("eval", str(tmp_path / "missing")), "run folder not found")


def test_where_weights_come_from_is_said_in_words(tmp_path):
    from regraft.cli.train import weights_origin

    local = tmp_path / "w.pth"
    local.write_bytes(b"")
    assert weights_origin("none") is None and weights_origin(None) is None
    assert weights_origin("https://example.org/w.pth") == "a URL: downloaded from example.org unless cached"
    assert weights_origin("hf-hub:org/name") == weights_origin("timm/resnet18.a1_in1k") == "the Hugging Face hub: downloaded unless cached"
    assert weights_origin(str(local)).startswith("a local file, read without running code unless --trust-checkpoint")
    assert weights_origin("DEFAULT") == "the model zoo's published weights: downloaded unless cached"
