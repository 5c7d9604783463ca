"""The warm runner (tests/zygote.py) is faithful: a command forked from the warm process gives what
``python -m regraft`` gives from a cold interpreter (exit status, stdout, stderr), in the test's
working directory and environment. Every CLI test relies on this."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import zygote
from tests.helpers import make_image_folder, run_cli


def _warm_and_cold(monkeypatch, *args: str, cwd: Path, env: dict[str, str] | None = None):
    run_cli("--version")  # the warm process exists
    if zygote._zygote is None or not zygote._zygote.usable:
        pytest.skip("the warm runner is off on this machine (its warning says why)")
    sent = zygote._zygote.sent
    warm = run_cli(*args, cwd=cwd, env=env)
    assert zygote._zygote.sent == sent + 1, "the command did not run warm"
    monkeypatch.setenv("REGRAFT_TEST_ZYGOTE", "0")
    cold = run_cli(*args, cwd=cwd, env=env)
    monkeypatch.delenv("REGRAFT_TEST_ZYGOTE")
    return warm, cold


def test_a_command_in_the_tests_folder_and_environment_gives_what_a_cold_one_gives(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=3, size=16)
    (tmp_path / "data" / "train" / "red" / "broken.png").write_bytes(b"not an image")
    warm, cold = _warm_and_cold(monkeypatch, "scan", "data", cwd=tmp_path)  # a path relative to cwd
    assert warm.returncode == cold.returncode == 0
    assert warm.stdout == cold.stdout and "broken.png" in warm.stdout
    assert warm.stderr == cold.stderr


def test_a_user_error_is_the_same_one_line_and_exit_2(tmp_path, monkeypatch):
    warm, cold = _warm_and_cold(monkeypatch, "train", "missing", "--model", "test_resnet", cwd=tmp_path)
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr == cold.stderr and warm.stderr.startswith("regraft: error: data folder not found")
    assert str(tmp_path / "missing") in warm.stderr


def test_an_uncaught_exception_is_a_traceback_and_exit_1_and_the_environment_reaches_the_command(tmp_path, monkeypatch):
    # REGRAFT_DEBUG=1 (given to this command only) makes regraft re-raise instead of printing one line
    warm, cold = _warm_and_cold(monkeypatch, "train", "missing", "--model", "test_resnet", cwd=tmp_path,
                                env={"REGRAFT_DEBUG": "1"})
    assert warm.returncode == cold.returncode == 1
    assert "Traceback (most recent call last)" in warm.stderr and "Traceback (most recent call last)" in cold.stderr
    assert warm.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1]
    assert warm.stderr.splitlines()[-1].startswith("regraft.errors.DataError: data folder not found")
