"""Shared fixtures: small generated image folders and tiny models, all CPU, all fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagegen import make_image_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REGRAFT_NO_PROGRESS", "1")


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    """A train/val folder of two colour-separable classes at 32 px."""
    return make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=12, size=32)


@pytest.fixture
def flat_data(tmp_path: Path) -> Path:
    """One folder of class subfolders (no split), three classes."""
    return make_image_folder(
        tmp_path / "flat", classes=("blue", "green", "red"), per_class=10, size=32, split=False
    )


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run ``python -m regraft ARGS`` in a subprocess and return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "regraft", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli
