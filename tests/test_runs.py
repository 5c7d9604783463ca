"""regraft.runs: the run-folder contract. Marker, what overwrite may delete, one writer, stale
locks and temp files, atomic writes that fail in one line, and run files read as untrusted data."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from regraft.config import Config
from regraft.errors import RunError, RunInUseError, WriteError
from regraft.runs import (
    MANIFEST,
    OWNER_FILE,
    RUN_MARKER,
    RunDir,
    RunKind,
    atomic_write_bytes,
    is_run_folder,
    load_checkpoint,
    lock_scope,
    prepare_resume,
    read_config,
    read_json_file,
    read_marker,
    stale_temp_files,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders): "byte-for-byte as it was"."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = None if p.is_dir() else p.read_bytes()
    return out


def make_run(path: Path, *, kind: str = "train") -> RunDir:
    """A finished-looking run made through the contract: marker, files in the manifest, lock released."""
    with RunDir.create(path, kind=kind) as run:
        run.write_text("config.yaml", "model: test_resnet\n")
        run.write_json("summary.json", {"best_val_acc": 0.5})
        atomic_write_bytes(run.checkpoint, b"checkpoint bytes")
    return run


def test_create_writes_a_marker_with_id_and_kind(tmp_path):
    run = make_run(tmp_path / "run")
    marker = read_marker(run.path)
    assert is_run_folder(run.path) and marker.kind == "train" and len(marker.id) == 32
    assert json.loads((run.path / RUN_MARKER).read_text())["id"] == marker.id
    listed = (run.path / MANIFEST).read_text().split()
    assert listed == ["config.yaml", "summary.json", "checkpoints/last.pt"]
    assert not (run.path / OWNER_FILE).exists()  # released: no holder on record


def test_a_folder_of_documents_is_refused_and_left_untouched(tmp_path):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    (docs / "photos").mkdir()
    before = snapshot(docs)
    for overwrite in (False, True):
        with pytest.raises(RunError, match=r"documents is not empty and is not a regraft run folder \(it holds photos/, thesis.txt\)"):
            RunDir.create(docs, overwrite=overwrite)
    assert snapshot(docs) == before  # not even a lock file


def test_out_naming_a_file_or_the_data_folder_is_refused(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    with pytest.raises(RunError, match="is a file, not a folder"):
        RunDir.create(target)
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    for out in (data, data / "runs" / "exp1"):
        with pytest.raises(RunError, match="inside the data folder"):
            RunDir.create(out, data=data)
    assert sorted(p.name for p in data.rglob("*")) == ["cat"]


def test_an_existing_run_needs_overwrite_and_a_run_of_another_kind_is_never_replaced(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run.path)
    with pytest.raises(RunError, match="already holds a run; pass --resume to continue it, --overwrite"):
        RunDir.create(run.path)
    with pytest.raises(RunError, match="holds a regraft train run; an lr-find run never replaces it"):
        RunDir.create(run.path, kind=RunKind.LR_FIND, overwrite=True)
    assert snapshot(run.path) == before
    lr = make_run(tmp_path / "lr", kind="lr-find")
    RunDir.create(lr.path, kind="lr-find").close()  # an lr-find replaces the previous lr-find
    assert not (lr.path / "summary.json").exists()


def test_overwrite_deletes_only_what_the_run_wrote(tmp_path):
    run = make_run(tmp_path / "run")
    (run.path / "my_notes.txt").write_text("mine")
    (run.path / "checkpoints" / "keep.pt").write_bytes(b"mine too")
    old_id = read_marker(run.path).id
    new = RunDir.create(run.path, overwrite=True)
    new.close()
    left = {str(p.relative_to(run.path)) for p in run.path.rglob("*")}
    assert left == {RUN_MARKER, ".regraft-run.lock", "my_notes.txt", "checkpoints", "checkpoints/keep.pt"}
    assert read_marker(run.path).id != old_id


def test_overwrite_never_follows_a_link_or_a_hostile_manifest_out_of_the_run(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "last.pt").write_bytes(b"not the run's")
    (outside / "secret.txt").write_text("not the run's")
    run = make_run(tmp_path / "run")
    (run.path / "checkpoints" / "last.pt").unlink()
    (run.path / "checkpoints").rmdir()
    (run.path / "checkpoints").symlink_to(outside)  # a planted link where the run's folder was
    (run.path / "logs").symlink_to(outside)
    with (run.path / MANIFEST).open("a") as fh:
        fh.write(f"../outside/secret.txt\n{outside / 'secret.txt'}\ncheckpoints/../../outside/secret.txt\n")
    RunDir.create(run.path, overwrite=True).close()
    assert sorted(p.name for p in outside.iterdir()) == ["last.pt", "secret.txt"]
    assert not (run.path / "logs").exists() and (run.path / "checkpoints").is_symlink()


def test_a_damaged_marker_is_never_cleared(tmp_path):
    run = make_run(tmp_path / "run")
    (run.path / RUN_MARKER).write_text("{not json")
    before = snapshot(run.path)
    with pytest.raises(RunError, match=r"\.regraft-run is not valid JSON .* the run marker is damaged"):
        RunDir.create(run.path, overwrite=True)
    assert snapshot(run.path) == before


def test_overwriting_a_comparison_clears_the_runs_it_made(tmp_path):
    cmp = RunDir.create(tmp_path / "cmp", kind="compare")
    for strategy in ("head", "full"):
        make_run(cmp.path / strategy)
    atomic_write_bytes(cmp.path / "comparison.md", b"table")
    (cmp.path / "full" / "mine.txt").write_text("kept")
    cmp.close()
    assert (cmp.path / MANIFEST).read_text().split() == ["head", "full", "comparison.md"]
    RunDir.create(cmp.path, kind="compare", overwrite=True).close()
    assert sorted(p.name for p in cmp.path.iterdir()) == [RUN_MARKER, ".regraft-run.lock", "full"]
    # the sub-run that still holds a user's file stays a (now empty) run folder around it
    assert sorted(p.name for p in (cmp.path / "full").iterdir()) == [RUN_MARKER, ".regraft-run.lock", "mine.txt"]


_HOLDER = textwrap.dedent("""
    import sys, time
    from regraft.runs import RunDir
    run = RunDir.create(sys.argv[1], command="regraft train data --out RUN")
    run.write_text("config.yaml", "model: test_resnet\\n")  # a run under way: the folder is not empty
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=SRC)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for overwrite in (False, True):  # told who writes it, not merely that it holds a run
            with pytest.raises(RunInUseError, match=rf"run is in use by pid {holder.pid} on .*'regraft train data --out RUN', started"):
                RunDir.create(folder, overwrite=overwrite)
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            RunDir.open(folder, lock=True)
    finally:
        holder.kill()
        holder.wait()
    run = RunDir.open(folder, lock=True)  # the kernel dropped the dead holder's lock
    assert run.locked
    run.close()


def test_a_stale_lock_of_a_dead_process_is_broken_with_a_note(tmp_path, caplog):
    folder = tmp_path / "run"
    make_run(folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / OWNER_FILE).write_text(json.dumps(
        {"pid": dead.pid, "host": os.uname().nodename, "command": "regraft train killed", "started": "2026-01-01T00:00:00"}
    ))
    with caplog.at_level(logging.WARNING, logger="regraft.runs"):
        run = RunDir.open(folder, lock=True)
    assert run.locked
    assert f"the lock left by pid {dead.pid}" in caplog.text and "stale" in caplog.text
    run.close()
    assert not (folder / OWNER_FILE).exists()


_BARE_HOLDER = textwrap.dedent("""
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1] + "/.regraft-run.lock", blocking=False)
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_stale_record_never_breaks_a_lock_that_is_held(tmp_path):
    folder = tmp_path / "run"
    make_run(folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "command": "x", "started": "t"}))
    # a live writer that has taken the lock but not yet written its own record
    holder = subprocess.Popen([sys.executable, "-c", _BARE_HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match="in use by another regraft process"):
            RunDir.open(folder, lock=True)
    finally:
        holder.kill()
        holder.wait()


def test_lock_scope_releases_on_error(tmp_path):
    @lock_scope()
    def failing_run() -> None:
        RunDir.create(tmp_path / "run")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        failing_run()
    run = RunDir.open(tmp_path / "run", lock=True)  # would be "in use" if the first lock were kept
    run.close()


def test_a_failed_write_is_one_line_naming_the_path_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match=r"cannot write .*model.safetensors: no space left on the device: free some space") as info:
        atomic_write_bytes(tmp_path / "model.safetensors", b"x" * 1000)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WriteError, match="a part of the path is a file, not a folder"):
        atomic_write_bytes(blocker / "x.json", b"{}")


def test_stale_temp_files_are_found_and_removed_only_by_the_lock_holder(tmp_path):
    run = make_run(tmp_path / "run")
    stale = [run.path / ".model.safetensors.a1b2c3d4.tmp", run.path / "checkpoints" / ".last.pt.zz_99xyz.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 10_000)
    (run.path / "results.tmp").write_text("a user's file")
    assert stale_temp_files(run.path) == sorted(stale)
    assert RunDir(run.path).remove_stale_temp() == []  # not locked: touches nothing
    with RunDir.open(run.path, lock=True) as locked:
        assert locked.remove_stale_temp() == sorted(stale)
    assert not any(p.exists() for p in stale) and (run.path / "results.tmp").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"classes": ["a", "b"', "is not valid JSON"),
        (b"\xff\xfe{}", r"is not UTF-8 text \(byte 0xff at offset 0\)"),
        (b"[1, 2]", "holds a list where an object was expected"),
    ],
)
def test_damaged_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    with pytest.raises(RunError, match=rf"model.json {message}"):
        read_json_file(path)


def test_a_run_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "model.json"
    os.mkfifo(path)
    with pytest.raises(RunError, match="model.json is not a regular file"):
        read_json_file(path)


def test_checkpoints_load_weights_only_and_damage_is_one_line(tmp_path):
    pwned = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_code_running_pickle(pwned))
    with pytest.raises(RunError, match="holds objects other than tensors"):
        load_checkpoint(evil)
    assert not pwned.exists()
    good = tmp_path / "good.pt"
    torch.save({"fit": {"epoch": 1}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(RunError, match=r"truncated.pt cannot be read \(.*truncated or damaged\)"):
        load_checkpoint(truncated)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(RunError, match="holds a list, not regraft's dict"):
        load_checkpoint(tmp_path / "list.pt")


def _code_running_pickle(marker: Path) -> bytes:
    import pickle

    class Payload:  # what a hostile checkpoint carries
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"model": Payload()})


def test_a_run_config_never_carries_trust_or_overwrite(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: test_resnet\nweights: evil.pth\ntrust_checkpoint: true\noverwrite: true\n")
    notes: list[str] = []
    cfg = read_config(path, notes=notes)
    assert cfg.trust_checkpoint is False and cfg.overwrite is False and cfg.weights == "evil.pth"
    assert len(notes) == 2 and "sets trust_checkpoint: True, ignored" in notes[0] and "--trust-checkpoint" in notes[0]
    path.write_bytes(b"model: r\xe9snet\n")
    with pytest.raises(RunError, match=r"config.yaml is not UTF-8 text \(byte 0xe9"):
        read_config(path)


def _resumable(path: Path, *, epoch: int = 1) -> Path:
    cfg = Config(data=str(path.parent / "data"), model="test_resnet", epochs=3, out=str(path))
    with RunDir.create(path) as run:
        run.write_text("config.yaml", cfg.to_yaml())
        run.write_json("model.json", {"classes": ["a", "b"], "num_classes": 2, "architecture": {"head": "fc"}})
        run.checkpoint.parent.mkdir()
        state = {"model": {"fc.weight": torch.zeros(2, 4)}, "optimizer": {}, "fit": {"epoch": epoch}, "config": cfg.to_dict()}
        torch.save(state, run.checkpoint)
    return path


def test_prepare_resume_reads_a_sound_run(tmp_path):
    state = prepare_resume(_resumable(tmp_path / "run"))
    assert state.epoch == 1 and state.checkpoint is not None and state.card["classes"] == ["a", "b"]
    with pytest.raises(RunError, match=r"the data now has classes \['a', 'c'\]"):
        state.check_classes(["a", "c"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 half a zip"), "last.pt cannot be read"),
        (lambda r: (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("weights: DEFAULT", "weights: https://evil.example/w.pth")),
         "config.yaml differs from the config saved in checkpoints/last.pt in weights"),
        (lambda r: (r / "config.yaml").write_text("model: [unclosed\n"), "config.yaml is not valid YAML"),
        (lambda r: (r / "model.json").write_text("{"), "model.json is not valid JSON"),
        (lambda r: (r / "model.json").write_text('{"classes": ["a", "b", "c"], "num_classes": 3, "architecture": {"head": "fc"}}'),
         "lists 3 classes but the checkpoint's head has 2 outputs"),
        (lambda r: (r / "config.yaml").unlink(), "it has no config.yaml"),
        (lambda r: (r / RUN_MARKER).write_text(json.dumps({"id": "x", "kind": "lr-find", "created": "", "regraft": ""})),
         "holds a regraft lr-find run, not a training run"),
    ],
)
def test_prepare_resume_refuses_damage_in_one_line_and_writes_nothing(tmp_path, damage, message):
    run = _resumable(tmp_path / "run")
    damage(run)
    before = snapshot(run)
    with pytest.raises(RunError, match=message):
        prepare_resume(run)
    assert snapshot(run) == before


def test_prepare_resume_without_a_checkpoint_starts_again_unless_the_run_finished(tmp_path):
    run = _resumable(tmp_path / "run")
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / ".last.pt.k1ll3d00.tmp").write_bytes(b"\0" * 1000)  # the write a kill interrupted
    state = prepare_resume(run)
    assert state.checkpoint is None and "starting it again from the beginning" in state.note
    (run / "summary.json").write_text("{}")
    with pytest.raises(RunError, match="it is finished but its checkpoints/last.pt is gone"):
        prepare_resume(run)


def test_a_given_config_must_match_the_checkpoint(tmp_path):
    run = _resumable(tmp_path / "run")
    cfg = read_config(run / "config.yaml")
    prepare_resume(run, config=cfg.merged({"device": "cpu", "workers": 0, "trust_checkpoint": True}))  # volatile keys
    with pytest.raises(RunError, match="the config given differs .* in lr; a resumed run keeps its settings"):
        prepare_resume(run, config=cfg.merged({"epochs": 2, "lr": 0.1}))
