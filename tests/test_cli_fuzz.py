"""Property: whatever values a user types, regraft answers with exit 0, or exit 2 and exactly one
line on stderr; never a traceback. Drives the real option parsing and config validation of
train, predict, eval, scan and export in-process (training itself is replaced by a stub that
re-validates what it was given; the other commands stop at their missing RUN/DATA)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regraft.cli import train as train_cli
from regraft.cli.main import main
from regraft.config import Config

NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=5), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
)
ODD = st.sampled_from([
    "", "-1", "0", "1", "0.5", "nan", "inf", "-inf", "1e309", "1e-400", "0x10", "1_000", "３", "cuda", "cuda:7",
    "mps", "bogus", "auto", "none", "true", "[1,", "{a: 1}", "[]", "null", "~", "-q", "--", "'", "\x00", "\udcff",
    "a\nb", "../../etc/passwd", "/dev/zero", "4G", "-2G", "12e", "adamw", "lp-ft", "cosine",
])
VALUES = st.one_of(NUMBERS.map(str), ODD, st.text(max_size=8))
CONFIG_KEYS = [f.name for f in dataclasses.fields(Config)]

_CMD_OPTIONS = {
    "predict": ["--topk", "--batch-size", "--device", "--max-image-mb"],
    "eval": ["--batch-size", "--device", "--data", "--max-image-mb"],
    "scan": ["--val-fraction", "--seed", "--imbalance", "--workers", "--train-csv", "--classes-file", "--max-image-mb"],
    "export": ["--format", "--opset", "--atol", "--out"],
}
_TRAIN_OPTIONS = [flag for flag, _, _ in train_cli.FLAGS if flag != "--out"] + ["--config", "--resume", "--rename", "--skip", "--max-image-mb"]
_TRAIN_SWITCHES = [flag for flag, _, _, _ in train_cli.SWITCHES]


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(["train", "train", "train", "predict", "eval", "scan", "export"]))
    if command == "train":
        argv = ["train", "data"]
        for _ in range(draw(st.integers(0, 5))):
            argv += [draw(st.sampled_from(_TRAIN_OPTIONS)), draw(VALUES)]
        argv += draw(st.lists(st.sampled_from(_TRAIN_SWITCHES), max_size=3))
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)))
            argv += ["--set", f"{key}={draw(VALUES)}"]
        return argv
    argv = {"predict": ["predict", "no-run", "x.jpg"], "eval": ["eval", "no-run"], "scan": ["scan", "no-data"],
            "export": ["export", "no-run"]}[command]
    for _ in range(draw(st.integers(1, 4))):
        argv += [draw(st.sampled_from(_CMD_OPTIONS[command])), draw(VALUES)]
    if draw(st.booleans()):
        argv = [draw(st.sampled_from(["-q", "--max-image-mb"]))] + (["1"] if argv[0] == "--max-image-mb" else []) + argv
    return argv


def _fake_train(cfg, *, callbacks=(), resume=False, model=None):
    """Stands in for training: what reaches it must be a Config the one schema accepts."""
    assert isinstance(cfg, Config)
    cfg.validate(source="stub")
    summary = {"best_epoch": 1, "epochs": cfg.epochs, "best_val_acc": 0.5, "train_seconds": 0.0}
    return SimpleNamespace(run=SimpleNamespace(path=Path(cfg.out or "runs/x")), summary=summary)


@pytest.fixture
def cli_in_process(monkeypatch, tmp_path):
    import regraft.training.run

    monkeypatch.chdir(tmp_path)  # relative paths in the drawn values land in an empty folder
    monkeypatch.setattr(regraft.training.run, "train", _fake_train)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # pytest's capture owns logging here
    monkeypatch.delenv("REGRAFT_DEBUG", raising=False)
    monkeypatch.delenv("REGRAFT_MAX_IMAGE_MB", raising=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_is_exit_0_or_one_line_and_exit_2(argv, cli_in_process, capsys, monkeypatch):
    monkeypatch.delenv("REGRAFT_MAX_IMAGE_MB", raising=False)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, f"{argv}\n{err}"
    assert code in (0, 2), f"{argv} -> exit {code}\n{err}"
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("regraft") and "error:" in lines[0], f"{argv}\n{err}"


SETTING_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)), SETTING_VALUES, max_size=6))
def test_the_schema_accepts_or_refuses_with_a_config_error(values):
    from regraft.errors import ConfigError

    try:
        cfg = Config.from_dict(values, source="fit()")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fit(): ")
        return
    assert Config.from_dict(cfg.to_dict()) == cfg  # what passed round-trips
