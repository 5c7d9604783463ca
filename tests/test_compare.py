"""Issue 9's commands end to end: compare, lr-find, eval's metrics, and a real run's report in a browser."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from regraft.errors import ConfigError
from regraft.inference import classification_metrics, expected_calibration_error
from regraft.training.compare import parse_strategies
from tests.helpers import CHROMIUM_PROBE, TINY, chromium, ok, run_cli, user_error

pytestmark = pytest.mark.slow  # end-to-end: trains real (tiny) runs through the CLI


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from tests.imagegen import make_image_folder

    root = tmp_path_factory.mktemp("cmp")
    data = make_image_folder(root / "data", classes=("blue", "red"), per_class=16, val_per_class=8, size=32)
    ckpt = root / "pretrained.pth"
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), ckpt)
    return root, data, ckpt


def test_compare_writes_table_plot_and_verdict(toy):
    root, data, ckpt = toy
    out = root / "compare"
    proc = ok(run_cli("compare", str(data), *TINY, "--weights", str(ckpt), "--strategies", "scratch,head,full",
                      "--epochs", "2", "--out", str(out), "-q"))
    table = (out / "comparison.md").read_text()
    for strategy in ("scratch", "head", "full"):
        assert f"| {strategy} |" in table
        assert (out / strategy / "summary.json").is_file()
    assert "| strategy | best val acc | final val acc | val loss | train s | images/s | trainable params |" in table
    assert re.search(r"(beats|does not beat|ties?|scratch)", proc.stdout.splitlines()[-2]), proc.stdout
    assert (out / "comparison.png").stat().st_size > 1000
    summaries = {s: json.loads((out / s / "summary.json").read_text()) for s in ("scratch", "head", "full")}
    assert summaries["scratch"]["weights"] == "none" and summaries["head"]["weights"] == str(ckpt)
    assert summaries["head"]["trainable_params"] < summaries["full"]["trainable_params"]


def test_compare_refuses_bad_strategy_lists(toy):
    _, data, _ = toy
    user_error(run_cli("compare", str(data), "--model", "test_resnet", "--strategies", "scratch,magic"), "unknown strategy 'magic'")
    with pytest.raises(ConfigError, match="at least two strategies"):
        parse_strategies("full")
    assert parse_strategies("full, head,full") == ["full", "head"]


def test_lr_find_suggests_an_lr_that_trains(toy, tmp_path):
    _, data, _ = toy
    out = tmp_path / "lrf"
    found = json.loads(ok(run_cli("lr-find", str(data), *TINY, "--weights", "none", "--strategy", "scratch",
                                  "--steps", "60", "--out", str(out), "--json")).stdout)
    lr = found["suggestion"]
    assert 1e-6 < lr < 1.0 and (out / "lr_find.png").is_file()
    run = tmp_path / "run"
    ok(run_cli("train", str(data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "4",
               "--lr", str(lr), "--out", str(run), "-q"))
    assert json.loads((run / "summary.json").read_text())["best_val_acc"] >= 0.85


def test_lr_find_leaves_the_model_untouched():
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from regraft.training.lr_find import lr_find

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(64, 4)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    result = lr_find(model, loader, opt, num_steps=30)
    assert len(result.lrs) >= 3 and result.suggestion > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert opt.param_groups[0]["lr"] == 0.1 and not opt.state


def test_metrics_precision_recall_f1_and_ece():
    logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 5.0], [1.0, 0.0]])
    targets = torch.tensor([0, 0, 1, 1, 1])
    m = classification_metrics(logits, targets, ["a", "b"])
    assert m["confusion_matrix"] == [[2, 0], [1, 2]]
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["a"]["recall"] == 1.0
    assert m["per_class"]["b"]["precision"] == 1.0 and m["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8) and m["accuracy"] == pytest.approx(0.8)
    # perfectly confident and always right: no calibration error
    assert expected_calibration_error(torch.tensor([[50.0, 0.0]] * 4), torch.zeros(4, dtype=torch.long)) == pytest.approx(0.0, abs=1e-6)


def test_eval_on_another_folder_with_the_runs_classes(toy, tmp_path):
    root, data, _ = toy
    run = root / "compare" / "full"
    if not run.is_dir():
        pytest.skip("needs the compare run")
    out = json.loads(ok(run_cli("eval", str(run), "--data", str(data / "train"), "--json")).stdout)
    assert out["n_images"] == 32 and len(out["confusion_matrix"]) == 2
    assert {"precision", "recall", "f1", "support"} <= set(out["per_class"]["red"]) and "ece" in out
    (tmp_path / "odd" / "green").mkdir(parents=True)
    user_error(run_cli("eval", str(run), "--data", str(tmp_path / "odd")), "green")


def test_a_real_runs_report_renders_in_chromium(toy, tmp_path):
    root, _, _ = toy
    run = root / "compare" / "head"
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (install Debian's 'chromium' package, or set REGRAFT_CHROMIUM)")
    if not run.is_dir():
        pytest.skip("needs the compare run")
    for name in ("curves.png", "confusion_matrix.png", "top_losses.png", "samples.png", "report.html"):
        assert (run / name).is_file(), name
    page = (run / "report.html").read_text(encoding="utf-8")
    assert 'src="http' not in page and 'href="http' not in page
    probe = page.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", CHROMIUM_PROBE + "</body>")
    target = tmp_path / "probe.html"
    target.write_text(probe, encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", target.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="(\d+)/(\d+)"', done.stdout)
    assert match, done.stderr[-1500:]
    assert match.group(1) == match.group(2) and int(match.group(2)) >= 4
