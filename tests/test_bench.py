"""The benchmark instruments themselves (bench/): the phase timer, the suite's tasks, views and goals.

No training here: these check that the measuring is honest (phases add up, the test split never
reaches a contestant, tasks are the same from the same seed, a missed goal is reported as missed).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _phases  # noqa: E402
import _suite_report  # noqa: E402
import _tasks  # noqa: E402
import small_data  # noqa: E402


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".complete"}


# ----------------------------------------------------------------------------- the phase timer


def test_phases_are_exclusive_and_add_up_to_the_wall_time():
    timer = _phases.PhaseTimer()
    inner = timer.wrap(lambda: time.sleep(0.10), "inner")
    outer = timer.wrap(lambda: (time.sleep(0.05), inner()), "outer")
    t0 = time.perf_counter()
    timer.start()
    outer()
    time.sleep(0.03)
    timer.stop()
    wall = time.perf_counter() - t0
    assert timer.seconds["inner"] == pytest.approx(0.10, abs=0.04)
    assert timer.seconds["outer"] == pytest.approx(0.05, abs=0.04)  # the nested call is not counted twice
    assert timer.seconds["other"] == pytest.approx(0.03, abs=0.04)
    assert sum(timer.seconds.values()) == pytest.approx(wall, abs=0.01)
    assert dict(timer.calls) == {"outer": 1, "inner": 1}
    assert timer.cpu["inner"] < 0.05  # sleeping costs no CPU


def test_cpu_seconds_are_charged_to_the_phase_that_burns_them():
    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    timer = _phases.PhaseTimer()
    busy, idle = timer.wrap(lambda: spin(0.2), "busy"), timer.wrap(lambda: time.sleep(0.2), "idle")
    timer.start()
    busy()
    idle()
    timer.stop()
    assert timer.cpu["busy"] == pytest.approx(0.2, abs=0.05)
    assert timer.cpu["idle"] < 0.05
    head, rows = timer.table(python_start=0.5)
    assert head[:5] == ["phase", "wall s", "wall share", "CPU s", "CPU share"]
    assert [r[0] for r in rows] == ["python start", "other", "busy", "idle", "total"]


def test_calls_on_other_threads_are_thread_seconds_not_main_thread_wall():
    timer = _phases.PhaseTimer()
    work = timer.wrap(lambda: time.sleep(0.05), "decode")
    timer.start()
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timer.stop()
    assert "decode" not in timer.seconds
    assert timer.thread_seconds["decode"] == pytest.approx(0.10, abs=0.05)


def test_install_patches_copies_reports_missing_hooks_and_uninstall_restores():
    import builtins
    import importlib

    import regraft.data.imageio as imageio
    import regraft.data.views as transforms  # a module that imports decode_resized by name

    original = imageio.decode_resized
    assert transforms.decode_resized is original  # imported by name: the copy must be patched too
    import_before = builtins.__import__
    timer = _phases.PhaseTimer()
    timer.install((("regraft.data.imageio", "decode_resized", "decode"), ("regraft.data.imageio", "no_such_step", "x"),
                   ("regraft.no_such_module", "f", "y")))
    try:
        assert transforms.decode_resized is imageio.decode_resized is not original
        assert builtins.__import__ is not import_before
        assert timer.missing == ["regraft.data.imageio.no_such_step", "regraft.no_such_module.f"]
        timer.start()
        importlib.import_module("json")  # already loaded: costs nothing, charged nowhere
        timer.stop()
        assert "imports" not in timer.calls
    finally:
        timer.uninstall()
    assert transforms.decode_resized is imageio.decode_resized is original
    assert builtins.__import__ is import_before


def test_every_default_hook_exists_in_regraft_today():
    timer = _phases.PhaseTimer()
    timer.install(imports=False)
    timer.uninstall()
    assert timer.missing == []


# ----------------------------------------------------------------------------- tasks and views


def test_digits_task_is_made_the_same_from_its_seed_and_has_no_val_split(tmp_path):
    a = _tasks.digits(tmp_path / "a")
    b = _tasks.digits(tmp_path / "b")
    assert _folder_bytes(a) == _folder_bytes(b)
    assert sorted(p.name for p in a.iterdir() if p.is_dir()) == ["test", "train"]
    for split, n in (("train", 20), ("test", 40)):
        counts = {c.name: len(list(c.iterdir())) for c in (a / split).iterdir()}
        assert counts == {str(k): n for k in range(10)}
    with Image.open(next((a / "train" / "3").iterdir())) as img:
        assert img.size == (64, 64)
    assert _folder_bytes(_tasks.digits(tmp_path / "c", seed=1)) != _folder_bytes(a)


def test_texture_and_face_tasks_have_three_disjoint_splits(tmp_path):
    for make, classes, counts in ((_tasks.texture_crops, {"brick", "grass", "gravel"}, (30, 10, 30)),
                                  (_tasks.faces, {"face", "background"}, (30, 20, 50))):
        root = make(tmp_path / make.__name__)
        for split, n in zip(("train", "val", "test"), counts, strict=True):
            assert {c.name: len(list(c.iterdir())) for c in (root / split).iterdir()} == dict.fromkeys(classes, n)
        if make is _tasks.faces:  # each lfw_subset image lands in one split only
            pixels = [np.asarray(Image.open(p)).tobytes() for p in sorted(root.rglob("*.png"))]
            assert len(set(pixels)) == len(pixels)


def _tiny_task(root: Path, *, val: bool) -> Path:
    splits = {"train": 10, "test": 3} | ({"val": 2} if val else {})
    for split, n in splits.items():
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(root / split / cls / f"{i}.png")
    return root


def test_views_never_hold_the_test_split_and_carve_val_when_missing(tmp_path):
    root = _tiny_task(tmp_path / "noval", val=False)
    visible, with_val = small_data.views(root, into=tmp_path / "views")
    assert sorted(p.name for p in visible.iterdir()) == ["train"]
    assert sorted(p.name for p in with_val.iterdir()) == ["train", "val"]
    for cls in ("a", "b"):  # 80/20 per class, every training image in exactly one side
        val_names = {p.name for p in (with_val / "val" / cls).iterdir()}
        train_names = {p.name for p in (with_val / "train" / cls).iterdir()}
        assert len(val_names) == 2 and not val_names & train_names and len(val_names | train_names) == 10
    linked = visible / "train" / "a" / "0.png"
    assert linked.stat().st_ino == (root / "train" / "a" / "0.png").stat().st_ino

    root = _tiny_task(tmp_path / "withval", val=True)
    visible, with_val = small_data.views(root, into=tmp_path / "views")
    assert visible == with_val
    assert sorted(p.name for p in visible.iterdir()) == ["train", "val"]


def test_a_folder_task_without_test_split_is_refused(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(SystemExit, match="train/ and test/"):
        small_data.task_root(str(tmp_path))


# ----------------------------------------------------------------------------- the goal table


def _raw(regraft_acc: float, regraft_wall: float) -> dict:
    run = {"val_kind": "val", "val_acc": 0.9, "detail": ""}
    return {
        ("t", "regraft", 0): run | {"test_acc": regraft_acc, "wall_s": regraft_wall, "cpu_s": 1},
        ("t", "sklearn-probe", 0): run | {"test_acc": 0.90, "wall_s": 20.0, "cpu_s": 1},
        ("t", "fastai", 0): run | {"test_acc": 0.85, "wall_s": 60.0, "cpu_s": 1},
        ("t", "plain", 0): {"error": "plain failed: boom"},
    }


def test_goals_met_and_missed_are_reported_as_such():
    names = ["regraft", "sklearn-probe", "fastai", "plain"]
    met = "\n".join(_suite_report.goal_rows(_raw(0.92, 25.0), ["t"], names, [0]))
    assert "sklearn-probe (0.900)" in met and "met (+2.0 points)" in met and "met (0.42x fastai)" in met
    assert "Accuracy goal met on 1 of 1 tasks, wall-time goal on 1 of 1." in met
    assert "1 / 1 = 1.00x" in met
    missed = "\n".join(_suite_report.goal_rows(_raw(0.89, 40.0), ["t"], names, [0]))
    assert "NOT met (-1.0 points)" in missed and "NOT met (0.67x fastai)" in missed
    assert "Accuracy goal met on 0 of 1 tasks, wall-time goal on 0 of 1." in missed
    rows = "\n".join(_suite_report.result_rows(_raw(0.92, 25.0), ["t"], names, [0]))
    assert "| t | plain | failed |" in rows and "plain failed: boom" in rows
