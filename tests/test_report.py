"""regraft.report: every figure is a real, non-blank PNG; tables and verdicts read right;
report.html is one self-contained, escaped page that a real browser renders with all images."""

from __future__ import annotations

import base64
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regraft import report
from regraft.errors import RegraftError, RunError
from regraft.report import ReportError
from regraft.runs import RunDir
from tests.helpers import CHROMIUM_PROBE, chromium

HOSTILE = "<script>alert('x')</script>&\"$5 note\""


def _rows(n: int = 6, *, stage_switch: int | None = None, bump: float = 0.0) -> list[dict]:
    rows = []
    for i in range(n):
        row = {
            "epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 1.1 / (i + 1),
            "train_acc": 0.5 + 0.06 * i, "val_acc": min(0.45 + 0.05 * i + bump, 1.0),
            "lr": 1e-3, "images_per_sec": 120.5, "epoch_seconds": 2.0,
        }  # fmt: skip
        if stage_switch is not None:
            row["stage"] = "probe" if i < stage_switch else "finetune"
        rows.append(row)
    return rows


def _png(path: Path) -> Image.Image:
    """Open ``path`` as a PNG and check it is a real, non-blank picture."""
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path).convert("RGB")
    assert im.width > 100 and im.height > 100
    colours = im.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, "figure is (nearly) blank"
    return im


def _images(n: int, size: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------------------- plots


def test_plot_curves_writes_png_and_tolerates_gaps(tmp_path):
    rows = _rows(6, stage_switch=2)
    rows[0]["train_acc"] = None  # lp-ft's probe stage may not record everything
    out = report.plot_curves(rows, tmp_path / "curves.png", title=f"resnet18 · {HOSTILE}")
    assert out == tmp_path / "curves.png"
    im = _png(out)
    assert im.width > im.height  # two panels side by side


def test_plot_curves_without_rows_says_how_to_fix(tmp_path):
    with pytest.raises(ReportError, match="metrics rows are empty; train at least one epoch"):
        report.plot_curves([], tmp_path / "c.png")
    assert issubclass(ReportError, RegraftError)


def test_plots_are_deterministic(tmp_path):
    a = report.plot_curves(_rows(), tmp_path / "a.png")
    b = report.plot_curves(_rows(), tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()


def test_plotting_leaves_matplotlib_global_state_alone(tmp_path):
    import matplotlib

    backend, rc = matplotlib.get_backend(), dict(matplotlib.rcParams)
    report.plot_confusion(np.eye(3, dtype=int) * 5, ["a", "b", "c"], tmp_path / "cm.png")
    report.plot_lr_find([1e-5, 1e-4, 1e-3], [1.0, 0.8, 2.0], 1e-4, tmp_path / "lr.png")
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc
    if "matplotlib.pyplot" in sys.modules:  # nothing registered with pyplot, nothing left open
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


@pytest.mark.parametrize("k", [1, 3, 50])
def test_plot_confusion_scales_with_class_count(tmp_path, k):
    rng = np.random.default_rng(k)
    cm = rng.integers(0, 5, (k, k)) + np.eye(k, dtype=int) * 20
    cm[0] = 0  # a class with no validation images must not divide by zero
    classes = [f"{HOSTILE}{i}" if i % 9 == 0 else f"class_{i}" for i in range(k)]
    im = _png(report.plot_confusion(cm, classes, tmp_path / "cm.png"))
    assert im.width > 1.8 * im.height  # counts and normalised side by side
    if k == 50:
        assert im.width >= 2000  # 50 classes get a bigger canvas, not smaller cells only


def test_plot_confusion_rejects_bad_matrices(tmp_path):
    with pytest.raises(ReportError, match=r"shape \(2, 3\), expected K×K"):
        report.plot_confusion(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ReportError, match="3 class names were given; pass one name per row"):
        report.plot_confusion(np.zeros((2, 2)), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ReportError, match="negative or non-finite"):
        report.plot_confusion(np.array([[1, -1], [0, 2]]), ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_top_losses_grid_takes_the_n_highest(tmp_path):
    items = [(img, "cat", "dog", 0.9, float(i)) for i, img in enumerate(_images(20))]
    big = _png(report.plot_top_losses(items, tmp_path / "top16.png"))
    small = _png(report.plot_top_losses(items, tmp_path / "top4.png", n=4))
    assert big.height > 1.5 * small.height  # 4×4 grid against 2×2
    # other image kinds a caller may have: grayscale HW, float HWC in [0, 1], HWC with one channel
    odd = [
        (np.full((16, 16), 128, np.uint8), "a", "b", 0.5, 1.0),
        (np.linspace(0, 1, 16 * 16 * 3).reshape(16, 16, 3), "a", "b", 0.5, 2.0),
        (np.zeros((16, 16, 1), np.uint8), HOSTILE, HOSTILE, 0.99, 3.0),
    ]
    _png(report.plot_top_losses(odd, tmp_path / "odd.png"))


def test_plot_top_losses_with_nothing_wrong_still_draws(tmp_path):
    im = Image.open(report.plot_top_losses([], tmp_path / "none.png")).convert("L")
    assert np.asarray(im).min() < 100  # the "no misclassified validation images" text


def test_plot_top_losses_rejects_bad_items(tmp_path):
    with pytest.raises(ReportError, match="expected 5: \\(image, true, predicted, probability, loss\\)"):
        report.plot_top_losses([(np.zeros((8, 8, 3), np.uint8), "a", "b")], tmp_path / "x.png")
    with pytest.raises(ReportError, match=r"image of shape \(3, 8, 8\) cannot be drawn; pass HW or HWC"):
        report.plot_top_losses([(np.zeros((3, 8, 8)), "a", "b", 0.5, 1.0)], tmp_path / "x.png")
    with pytest.raises(ReportError, match="n=0 top losses requested"):
        report.plot_top_losses([], tmp_path / "x.png", n=0)


def test_plot_samples(tmp_path):
    _png(report.plot_samples(_images(9), [f"class {i % 3}" for i in range(9)], tmp_path / "samples.png"))
    with pytest.raises(ReportError, match="9 images but 2 labels; pass one label per image"):
        report.plot_samples(_images(9), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ReportError, match="no sample images"):
        report.plot_samples([], [], tmp_path / "x.png")


def test_plot_comparison(tmp_path):
    runs = {name: _rows(5, bump=0.03 * i) for i, name in enumerate(["scratch", "head", "full", "lp-ft"])}
    runs["empty"] = []
    _png(report.plot_comparison(runs, tmp_path / "comparison.png"))
    with pytest.raises(ReportError, match="nothing to compare"):
        report.plot_comparison({"scratch": []}, tmp_path / "x.png")


def test_plot_lr_find(tmp_path):
    lrs = np.logspace(-6, 0, 60)
    losses = 2.0 - np.exp(-((np.log10(lrs) + 3) ** 2)) + np.where(lrs > 0.1, 50.0, 0.0)
    _png(report.plot_lr_find(lrs, losses, 1e-3, tmp_path / "lr_find.png"))
    _png(report.plot_lr_find(lrs, losses, None, tmp_path / "lr_none.png"))
    with pytest.raises(ReportError, match="3 learning rates and 2 losses"):
        report.plot_lr_find([1e-3, 1e-2, 1e-1], [1.0, 2.0], None, tmp_path / "x.png")
    with pytest.raises(ReportError, match="learning rates must be positive"):
        report.plot_lr_find([0.0, 1e-2], [1.0, 2.0], None, tmp_path / "x.png")


# ---------------------------------------- the table (verdict and paired test: test_report_verdict.py)


def _result(strategy: str, acc: float | None, **extra) -> dict:
    return {
        "strategy": strategy, "best_val_acc": acc, "final_val_acc": acc, "best_val_loss": 0.25,
        "train_seconds": 12.34, "images_per_sec": 1234.5, "trainable_params": 11_689_512, **extra,
    }  # fmt: skip


def test_comparison_markdown_table():
    md = report.comparison_markdown([_result("scratch", 0.843), _result("lp-ft", 0.939), _result("head|x", None)])
    lines = md.strip().splitlines()
    assert lines[0] == "| strategy | best val acc | final val acc | val loss | train s | images/s | trainable params | kept |"
    assert lines[1].startswith("| --- | ---: |")
    assert lines[2] == "| scratch | 84.3% | 84.3% | 0.2500 | 12.3 | 1,234.5 | 11,689,512 | — |"
    assert "| lp-ft | **93.9%** | 93.9% |" in lines[3]  # the best accuracy stands out
    assert lines[4].startswith("| head\\|x | — | — |")  # a pipe in a name cannot break the table
    assert md.endswith("\n")
    with pytest.raises(ReportError, match="no results to tabulate"):
        report.comparison_markdown([])


def test_comparison_markdown_falls_back_to_final_loss():
    md = report.comparison_markdown([{"strategy": "full", "best_val_acc": 0.5, "final_val_loss": 0.75}])
    assert "| 0.7500 |" in md


# ------------------------------------------------------------------------------------ report.html

CLASSES = ["cat", "dog", HOSTILE]


def _fake_run(folder: Path) -> Path:
    """A finished run folder as train.py leaves it, written by hand."""
    run = RunDir(folder)
    folder.mkdir(parents=True)
    run.write_text("config.yaml", f"model: resnet18\nstrategy: lp-ft\nweights: DEFAULT\nepochs: 6\nnote: '{HOSTILE}'\n")
    run.write_json("summary.json", {
        "model": "resnet18", "weights": "DEFAULT", "strategy": "lp-ft", "epochs": 6, "best_epoch": 6,
        "best_val_acc": 0.7, "best_val_loss": 0.18, "final_val_acc": 0.7, "train_seconds": 83.2,
        "images_per_sec": 120.5, "num_classes": 3, "classes": CLASSES, "trainable_params": 1539,
        "total_params": 11_178_051, "trunk_coverage": 0.995,
    })  # fmt: skip
    run.write_metrics(_rows(6, stage_switch=2))
    from regraft.weights import LoadReport  # the real class: the page follows its to_dict()

    load = LoadReport(
        source="torchvision:ResNet18_Weights.IMAGENET1K_V1", loaded=[f"layer{i}.weight" for i in range(30)],
        renamed={"module.fc.w": "fc.weight"}, adapted={"conv1.weight": "mean over channels"},
        skipped={"fc.weight": "old head", "fc.bias": "old head"}, unexpected=[HOSTILE],
        coverage=0.995, trunk_params=11_176_512, trunk_params_loaded=11_120_629,
    )  # fmt: skip
    run.write_json("load_report.json", load.to_dict())
    run.write_json("freeze_audit.json", [
        {"group": "trunk", "trainable_params": 0, "frozen_params": 11_176_512, "lr": None, "weight_decay": 0.0},
        {"group": "head", "trainable_params": 1539, "frozen_params": 0, "lr": 1e-3, "weight_decay": 0.05},
    ])  # fmt: skip
    run.write_json("surgery.json", {"replaced": {"fc": "Linear(512, 3)"}})
    report.plot_curves(_rows(6, stage_switch=2), folder / "curves.png")
    report.plot_confusion(np.array([[5, 1, 0], [2, 4, 0], [0, 0, 3]]), CLASSES, folder / "confusion_matrix.png")
    report.plot_top_losses([(img, "cat", "dog", 0.8, 1.6) for img in _images(2)], folder / "top_losses.png")
    report.plot_samples(_images(4), ["cat", "dog", "cat", "dog"], folder / "samples.png")
    (folder / "broken.png").write_bytes(b"not a png at all")  # left out, never shown as a broken image
    return folder


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    return _fake_run(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def page(fake_run) -> str:
    return report.write_html_report(fake_run).read_text(encoding="utf-8")


def test_report_has_every_section(fake_run, page):
    for anchor in ("summary", "figures", "plots", "metrics", "load-report", "freeze-audit", "surgery", "config"):
        assert f'<section id="{anchor}">' in page, anchor
    assert "<title>resnet18 · lp-ft</title>" in page
    assert "weights: DEFAULT" in page and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", page)
    assert "70.0%" in page and "99.5%" in page  # best accuracy, trunk coverage
    assert "of 11,178,051 (0.014%)" in page  # a small trainable share stays visible
    assert "11,176,512" in page and "<td>total</td>" in page  # freeze audit with its total
    # the kept row (found from summary.json's best_epoch: this fake run has no kept column) highlighted
    assert page.count('<tr class="kept">') == 1 and re.search(r'<tr class="kept"><td>6</td><td>[^<]*</td><td>[^<]*</td>', page)
    assert "the row whose weights are model.safetensors (epoch 6, finetune)" in page
    assert "module.fc.w → fc.weight" in page and "conv1.weight → mean over channels" in page
    assert "(11,120,629 of 11,176,512 trunk parameters)" in page


def test_report_is_self_contained(page):
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:|//|file:)", page, re.I)
    assert "<script" not in page and "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # the browser itself refuses anything external
    srcs = re.findall(r'<img alt="([^"]*)" src="([^"]*)"', page)
    assert sorted(alt for alt, _ in srcs) == ["confusion_matrix.png", "curves.png", "samples.png", "top_losses.png"]
    for _, src in srcs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()


def test_report_escapes_everything(page):
    assert HOSTILE not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_the_data_section_shows_the_findings_and_survives_a_hostile_file(tmp_path):
    sound = tmp_path / "sound"
    sound.mkdir()
    RunDir(sound).write_json("data_findings.json", {
        "images": 49, "label_issues_total": 3, "leaks_total": 1, "duplicates_by": "features only",
        "probe": {"validation": "cv5", "accuracy": 0.98},
        "label_issues": [{"score": 0.99, "split": "train", "given": "red", "suggested": HOSTILE, "path": "train/red/a.png"}],
        "leaks": [{"similarity": 1.0, "a": "train/g/x.png", "b": "val/g/x_copy.png"}],
    })  # fmt: skip
    html = report.write_html_report(sound).read_text()
    assert '<section id="data">' in html and "49 images" in html and "(cv5 accuracy 0.980)" in html
    assert "3 suspected label errors, 1 near-duplicate pair" in html and "the file keeps the first 1 and 1" in html
    assert '<td class="text">train/red/a.png</td>' in html and '<td class="text">val/g/x_copy.png</td>' in html
    assert HOSTILE not in html
    hostile = tmp_path / "hostile"  # a run folder from elsewhere: every field of the wrong kind
    hostile.mkdir()
    RunDir(hostile).write_json("data_findings.json", {
        "images": [HOSTILE], "label_issues": "not a list", "leaks": [HOSTILE, 3, {"a": HOSTILE}],
        "label_issues_total": "many", "leaks_total": -5, "probe": [1, 2],
    })  # fmt: skip
    html = report.write_html_report(hostile).read_text()
    assert '<section id="data">' in html and HOSTILE not in html
    assert "0 suspected label errors, 1 near-duplicate pair" in html  # the one object kept, the totals made sane


def test_report_collapses_long_lists(page):
    assert "<details><summary>loaded (30)</summary>" in page  # long: closed
    assert "<details open><summary>skipped (2)</summary>" in page  # short: open
    assert '<p class="empty">missing (0)</p>' in page


def test_report_without_optional_files(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    empty = report.write_html_report(bare).read_text()
    assert "<title>regraft run bare</title>" in empty and "<section" not in empty
    RunDir(bare).write_json("summary.json", {"model": "vit", "strategy": "head", "best_val_acc": 0.5})
    (bare / "load_report.json").write_text("{ truncated")
    html = report.write_html_report(bare, path=tmp_path / "elsewhere.html").read_text()
    assert "vit · head" in html and '<section id="summary">' in html
    assert "could not read load_report.json" in html
    for absent in ("figures", "metrics", "freeze-audit", "surgery", "config"):
        assert f'id="{absent}"' not in html
    assert (bare / "report.html").read_text() == empty  # path= wrote elsewhere, not over the run's page


def test_report_of_a_missing_folder(tmp_path):
    with pytest.raises(RunError, match="run folder not found: .*nope; pass the folder"):
        report.write_html_report(tmp_path / "nope")


# ------------------------------------------------------------------------------------- draw_run


class _Dataset:
    """A dataset as data/ gives it: transformed CHW float images; ``samples`` lists files."""

    def __init__(self, folder: Path | None, n: int = 6):
        self.items = [(np.random.default_rng(i).normal(size=(3, 16, 16)).astype(np.float32), i % 3) for i in range(n)]
        self.samples = None
        if folder is not None:
            folder.mkdir()
            self.samples = []
            for i, img in enumerate(_images(n, 20)):
                Image.fromarray(img).save(folder / f"{i}.png")
                self.samples.append((str(folder / f"{i}.png"), i % 3))

    def __len__(self):
        return len(self.items)

    def raw(self, key):
        """Like regraft's ImageDataset.raw: the uint8 crop before normalisation (here all red)."""
        index, _seed = key
        img = np.zeros((3, 16, 16), np.uint8)
        img[0] = 255
        return img, self.items[index][1]

    def __getitem__(self, i):
        return self.items[i]


def test_draw_run_writes_every_figure_and_the_report(tmp_path):
    import torch

    folder = tmp_path / "run"
    RunDir(folder).write_metrics(_rows(3))
    RunDir(folder).write_json("summary.json", {"model": "m", "strategy": "full", "classes": CLASSES})
    logits = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 2.0, 0], [4.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0]])
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    written = report.draw_run(
        RunDir(folder), classes=CLASSES, logits=logits, targets=targets,
        val_dataset=_Dataset(tmp_path / "val"), train_dataset=_Dataset(None), mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip
    names = [p.name for p in written]
    assert names == ["curves.png", "confusion_matrix.png", "top_losses.png", "samples.png", "report.html"]
    for p in written[:-1]:
        _png(p)
    pixels = np.asarray(Image.open(folder / "samples.png").convert("RGB")).reshape(-1, 3)
    assert ((pixels[:, 0] > 240) & (pixels[:, 1] < 15)).sum() > 1000  # raw() crops, in true colour
    assert report.render_html_report(folder).count("<img ") == 4


def test_draw_run_survives_a_failing_figure(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    bad = [(np.zeros((5,)), 0)]  # not an image: samples.png cannot be drawn
    with caplog.at_level(logging.WARNING, logger="regraft.report"):
        written = report.draw_run(folder, classes=["a", "b"], logits=np.eye(2), targets=[0, 1], train_dataset=bad)
    assert [p.name for p in written] == ["confusion_matrix.png", "report.html"]
    assert "could not draw samples.png" in caplog.text


def test_confusion_matrix_and_to_image():
    assert report.confusion_matrix([0, 1, 1, 2], [0, 1, 0, 2], num_classes=3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    img = report.to_image(np.stack([np.zeros((4, 4)), np.ones((4, 4)), np.full((4, 4), 0.5)]))
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8 and img[..., 1].max() == 255
    pixels = np.full((3, 4, 4), 7, np.uint8)  # uint8 pixels are already colours: no stretching
    assert report.to_image(pixels).tolist() == np.full((4, 4, 3), 7).tolist()
    normalised = np.zeros((3, 2, 2), np.float32)  # the mean itself, un-normalised
    assert report.to_image(normalised, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)).max() == 128


# ---------------------------------------------------------------------------- a real browser

def test_report_renders_in_headless_chromium(fake_run, page, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (install Debian's 'chromium' package, or set REGRAFT_CHROMIUM)")
    # The report runs no script and its CSP forbids any; this copy allows one inline probe that
    # counts the images the browser decoded. img-src stays 'data:' only, as in the real page.
    probe_page = page.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", CHROMIUM_PROBE + "</body>")
    assert probe_page.count("script-src 'unsafe-inline'") == 1
    target = tmp_path / "probe.html"
    target.write_text(probe_page, encoding="utf-8")
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", target.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="(\d+)/(\d+)"', done.stdout)
    assert match, f"chromium gave no result (exit {done.returncode}): {done.stderr[-1500:]}"
    broken = re.search(r'data-broken="([^"]*)"', done.stdout)
    assert match.group(1) == match.group(2) == "4", f"images not loaded: {broken.group(1) if broken else '?'}"
