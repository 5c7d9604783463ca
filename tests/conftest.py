"""Shared fixtures: small generated image folders and tiny models, all CPU, all fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import make_image_folder, run_cli

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




@pytest.fixture
def cli():
    return run_cli
