"""Issue 18.1: one epoch axis for every multi-stage run, stages as spans, the star on the kept weights.

The figures are checked as matplotlib artists (where the star is, what its legend says, which
bands are drawn) and as PNGs; the fake runs follow the metrics.csv contract (tests/report_runs.py).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from regraft import report
from regraft.report import plots
from regraft.report._timeline import timeline, validation_of
from regraft.runs import RunDir
from tests import report_runs as R


def _figure(draw, *args, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig, *args, **kw)
    fig.canvas.draw()  # layout and legends settle as they would in the PNG
    return fig


def _stars(ax):
    return [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in ax.lines if line.get_marker() == "*"]


def _legend(ax_or_fig):
    legends = [ax_or_fig.get_legend()] if hasattr(ax_or_fig, "get_legend") else ax_or_fig.legends
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def _bands(ax):
    """(left, right) of each shaded stage band, left to right."""
    from matplotlib.patches import Rectangle

    out = []
    for p in ax.patches:
        if isinstance(p, Rectangle) and p.get_zorder() == 0:
            (x0, _), (x1, _) = p.get_xy(), (p.get_x() + p.get_width(), 0)
            out.append((round(float(x0), 6), round(float(x1), 6)))
    return sorted(out)


def _texts(ax):
    return [t.get_text() for t in ax.texts]


# ------------------------------------------------------------------------------------ the timeline


def test_lpft_rows_are_one_axis_with_three_stages():
    rows, summary = R.lpft()
    tl = timeline(rows, summary)
    assert tl.x == [0, 1, 2, 3, 4, 5, 5] and not tl.restarted
    assert [(s.stage, s.first, s.last, s.point) for s in tl.spans] == [
        ("probe", 0, 0, False), ("fine-tune", 1, 5, False), ("wise-ft", 6, 6, True),
    ]  # fmt: skip
    assert tl.kept.index == 3 and tl.kept.source == "kept"
    kept = rows[tl.kept.index]  # the summary's figures are the kept row's
    assert (kept["epoch"], kept["stage"], kept["val_acc"]) == (summary["best_epoch"], summary["best_stage"], summary["best_val_acc"])


def test_without_a_kept_column_the_summary_names_the_row():
    rows, summary = R.lpft(kept_wise=True)
    for r in rows:
        del r["kept"]
    tl = timeline(rows, summary)  # epoch 5 is both a fine-tune and the wise-ft row: best_stage decides
    assert tl.kept.index == 6 and tl.kept.source == "summary" and tl.label(6) == "epoch 5, wise-ft"
    del summary["best_stage"]  # and without best_stage, the figures decide
    assert timeline(rows, summary).kept.index == 6


def test_an_older_lpft_run_is_laid_end_to_end_and_the_star_is_the_probes_kept_epoch():
    rows, summary = R.old_lpft()
    tl = timeline(rows, summary)
    assert tl.restarted and tl.x == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert tl.epochs == [1, 2, 3, 4, 1, 2, 3, 4, 5]  # labels keep the CSV's own numbers
    # best_epoch 0 = "the probe's head"; the probe kept its lowest-loss epoch (95%), not its 100% one
    assert tl.kept.index == 2 and tl.kept.source == "summary" and tl.label(2) == "epoch 3, probe"


def test_a_run_that_recorded_nothing_stars_its_highest_accuracy_and_says_so(tmp_path):
    rows, _ = R.old_lpft()
    tl = timeline(rows)
    assert tl.kept.index == 3 and tl.kept.source == "highest" and not tl.kept.recorded
    fig = _figure(plots._draw_curves, rows, title=None, summary=None)
    assert "highest validation 100.0% at epoch 4, probe" in _legend(fig.axes[1])
    assert not any(t.startswith("kept weights") for t in _legend(fig.axes[1]))


def test_ema_figures_are_recognised():
    rows, summary = R.plain(epochs=4)
    for r in rows:
        r["val_acc_ema"], r["val_loss_ema"] = r["val_acc"] + 0.01, r["val_loss"]
        del r["kept"]
    summary.update(best_epoch=2, best_val_acc=rows[1]["val_acc_ema"])
    tl = timeline(rows, summary)
    assert (tl.kept.index, tl.kept.acc_key, tl.kept.loss_key) == (1, "val_acc_ema", "val_loss_ema")
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    assert _stars(fig.axes[1]) == [(2.0, pytest.approx(rows[1]["val_acc_ema"] * 100))]
    assert any(t.startswith("kept weights (EMA): ") for t in _legend(fig.axes[1]))
    assert "validation, EMA weights" in _legend(fig.axes[1])


def test_two_kept_rows_use_the_last_and_warn(caplog):
    rows, _ = R.plain(epochs=3)
    rows[0]["kept"] = rows[2]["kept"] = 1
    rows[1]["kept"] = 0
    with caplog.at_level(logging.WARNING, logger="regraft.report"):
        assert timeline(rows).kept.index == 2
    assert "marks 2 rows as kept; expected one" in caplog.text


def test_kept_column_read_back_from_csv(tmp_path):
    rows, summary = R.gradual()
    R.write_run(tmp_path / "run", rows, summary)
    back = RunDir(tmp_path / "run").read_metrics()
    tl = timeline(back, summary)
    assert tl.kept.index == 7 and tl.kept.source == "kept"
    assert [s.stage for s in tl.spans] == ["head", "+layer4", "+layer3", "all"]


@pytest.mark.parametrize(
    ("validation", "folds"),
    [("cv5", 5), ("CV-10", 10), ("5-fold", 5), ("holdout", None), (None, None), ("weird", None)],
)
def test_validation_kind(validation, folds):
    v = validation_of({"validation": validation, "val_acc_std": 0.02})
    assert v.folds == folds
    assert v.accuracy(0.94) == ("94.0%" if folds is None else f"94.0% ± 2.0% ({folds}-fold)")


_stage_names = st.sampled_from(["probe", "fine-tune", "head", "+layer4", "all", ""])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3, allow_nan=False), _stage_names), min_size=1, max_size=30))
def test_any_rows_give_one_ordered_axis_and_contiguous_spans(steps):
    rows, epoch = [], 0.0
    for step, stage in steps:
        epoch += step
        rows.append({"epoch": epoch, "stage": stage, "val_acc": 0.5})
    tl = timeline(rows)
    assert tl.x == [r["epoch"] for r in rows] and not tl.restarted
    covered = [i for s in tl.spans for i in range(s.first, s.last + 1)]
    assert covered == (list(range(len(rows))) if any(r["stage"] for r in rows) else [])
    for a, b in zip(tl.spans, tl.spans[1:], strict=False):
        assert a.stage != b.stage and a.x1 <= b.x0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=30))
def test_restarting_epochs_still_make_a_non_decreasing_axis(epochs):
    tl = timeline([{"epoch": e, "val_acc": 0.5} for e in epochs])
    assert all(b >= a for a, b in zip(tl.x, tl.x[1:], strict=False))
    assert tl.epochs == [float(e) for e in epochs]


# ---------------------------------------------------------------------------------- curves.png


def test_lpft_curves_star_the_kept_row_and_shade_the_stages():
    rows, summary = R.lpft()
    fig = _figure(plots._draw_curves, rows, title="resnet18 · lp-ft", summary=summary)
    loss_ax, acc_ax = fig.axes[:2]
    assert _stars(acc_ax) == [(3.0, 97.0)] and _stars(loss_ax) == [(3.0, pytest.approx(0.21))]
    assert "kept weights: 97.0% at epoch 3, fine-tune" in _legend(acc_ax)
    for ax in (loss_ax, acc_ax):
        assert _bands(ax) == [(-0.5, 0.5), (0.5, 5.5)]  # probe's band, the fine-tune's; wise-ft has none
        assert {"probe", "fine-tune"} <= set(_texts(ax))
        assert ax.get_xlim() == (-0.5, 5.5) and ax.get_xlabel() == "epoch"
    diamonds = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in acc_ax.lines if line.get_marker() == "D"]
    assert diamonds == [(5.0, 95.5)] and "wise-ft" in _legend(acc_ax)
    val = next(line for line in acc_ax.lines if line.get_label() == "validation")
    assert list(val.get_xdata()) == [0, 1, 2, 3, 4, 5]  # the wise-ft row is not joined to the line


def test_kept_wiseft_row_gets_the_star():
    rows, summary = R.lpft(kept_wise=True)
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    assert _stars(fig.axes[1]) == [(5.0, 98.0)]
    assert "kept weights: 98.0% at epoch 5, wise-ft" in _legend(fig.axes[1])


def test_older_lpft_curves_do_not_zigzag_and_star_what_was_kept():
    rows, summary = R.old_lpft()
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    acc_ax = fig.axes[1]
    val = next(line for line in acc_ax.lines if line.get_label() == "validation")
    assert list(np.diff(val.get_xdata())) == [1.0] * 8  # no line back across the plot
    assert _stars(acc_ax) == [(3.0, 95.0)] and "kept weights: 95.0% at epoch 3, probe" in _legend(acc_ax)
    assert "laid end to end" in acc_ax.get_xlabel()
    assert _bands(acc_ax) == [(0.5, 4.5), (4.5, 9.5)]


def test_gradual_unfreezing_stages_get_four_named_bands_in_four_colours():
    rows, summary = R.gradual()
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    acc_ax = fig.axes[1]
    assert _bands(acc_ax) == [(0.5, 2.5), (2.5, 4.5), (4.5, 6.5), (6.5, 10.5)]
    assert {"head", "+layer4", "+layer3", "all"} <= set(_texts(acc_ax))
    colours = {p.get_facecolor() for p in acc_ax.patches if p.get_zorder() == 0}
    assert len(colours) == 4
    assert _stars(acc_ax) == [(8.0, pytest.approx(88.0))] and fig.legends == []  # every name fits its band


def test_a_plain_run_has_no_bands_and_a_one_stage_label():
    rows, summary = R.plain()
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    kept = next(r for r in rows if r["kept"])
    assert _bands(fig.axes[1]) == [] and _texts(fig.axes[1]) == []
    assert f"kept weights: {kept['val_acc'] * 100:.1f}% at epoch {kept['epoch']}" in _legend(fig.axes[1])


def test_a_hundred_epochs_draw_lines_without_markers_and_a_narrow_stage_goes_to_a_legend():
    rows, summary = R.plain(epochs=100)
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    assert all(line.get_marker() in ("None", None, "*") for line in fig.axes[1].lines)
    probe = {**rows[0], "epoch": 0, "stage": "probe", "kept": 0}
    staged = [probe] + [{**r, "stage": "fine-tune"} for r in rows]
    fig = _figure(plots._draw_curves, staged, title=None, summary=summary)
    assert "probe" not in _texts(fig.axes[1])  # one epoch in 101 is too narrow for its name...
    assert {"probe", "fine-tune"} <= set(_legend(fig))  # ...so a legend under the panels names it


def test_one_epoch_and_cross_validated_runs():
    rows, summary = R.one_epoch()
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    lo, hi = fig.axes[1].get_xlim()
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert _stars(fig.axes[1]) == [(1.0, 71.0)] and ticks == ["1"]  # one whole epoch, not 0.5, 0.6, ...
    rows, summary = R.cross_validated()
    fig = _figure(plots._draw_curves, rows, title=None, summary=summary)
    assert fig.axes[1].get_title() == "accuracy (%), validation by 5-fold CV"
    assert "kept weights: 94.0% ± 2.1% (5-fold) at epoch 0, probe" in _legend(fig.axes[1])
    assert "validation (5-fold CV)" in _legend(fig.axes[1])


def test_curves_png_has_the_star_drawn(tmp_path):
    rows, summary = R.lpft()
    path = report.plot_curves(rows, tmp_path / "curves.png", summary=summary)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (abs(pixels[..., 0] - 0xD6) < 12) & (abs(pixels[..., 1] - 0x27) < 12) & (abs(pixels[..., 2] - 0x28) < 12)
    half = pixels.shape[1] // 2
    assert red[:, :half].sum() > 40 and red[:, half:].sum() > 40  # a star in each panel (and its legend key)


def test_draw_run_reads_the_summary_for_the_star(tmp_path):
    rows, summary = R.old_lpft()
    folder = R.write_run(tmp_path / "run", rows, summary)
    report.draw_run(folder, classes=R.CLASSES)
    assert (folder / "curves.png").is_file()
    page = report.render_html_report(folder)
    assert page.count('<tr class="kept">') == 1


# ----------------------------------------------------------------------------- comparison.png


def _four():
    return {
        "scratch": R.plain(strategy="scratch", top=0.8, seed=1), "head": R.gradual(),
        "full": R.plain(strategy="full", top=0.95, seed=3), "lp-ft": R.old_lpft(),
    }  # fmt: skip


def test_comparison_legend_agrees_with_the_table_and_stars_each_kept_row():
    runs = _four()
    rows = {k: v[0] for k, v in runs.items()}
    summaries = {k: v[1] for k, v in runs.items()}
    drawn = plots._comparison_runs(rows, summaries)
    fig = _figure(plots._draw_comparison, drawn, summaries, title=None)
    acc_ax = fig.axes[0]
    table = report.comparison_markdown(list(summaries.values()))
    for name, (_, summary) in runs.items():
        figure = f"{summary['best_val_acc'] * 100:.1f}%"
        assert any(t.startswith(f"{name} (best {figure}") for t in _legend(acc_ax)), name
        assert f"| {figure}" in table or f"**{figure}**" in table
    assert "lp-ft (best 95.0%, epoch 3, probe)" in _legend(acc_ax)  # not the probe's 100%
    assert len(_stars(acc_ax)) == 4 and (3.0, 95.0) in _stars(acc_ax)
    lanes = fig.axes[2:]
    assert len(lanes) == 2 and [t.get_text() for t in lanes[0].get_yticklabels()] == ["lp-ft", "full", "head", "scratch"]


def test_comparison_without_stages_has_no_lanes(tmp_path):
    runs = {"scratch": R.plain(strategy="scratch", top=0.8, seed=1), "full": R.plain(seed=3)}
    drawn = plots._comparison_runs({k: v[0] for k, v in runs.items()}, {})
    fig = _figure(plots._draw_comparison, drawn, {}, title=None)
    assert len(fig.axes) == 2
    im = Image.open(report.plot_comparison({k: v[0] for k, v in runs.items()}, tmp_path / "c.png")).convert("RGB")
    assert im.width > im.height


# -------------------------------------------------------------------------------- report.html


def test_report_highlights_the_kept_row_and_says_where_it_is(tmp_path):
    rows, summary = R.lpft()
    folder = R.write_run(tmp_path / "run", rows, summary)
    page = report.render_html_report(folder)
    kept = re.findall(r'<tr class="kept">(.*?)</tr>', page)
    assert len(kept) == 1 and kept[0].startswith('<td>3</td><td class="text">fine-tune</td>')
    assert "the row whose weights are model.safetensors (epoch 3, fine-tune)" in page
    assert '<div class="label">val accuracy, kept weights</div><div class="value">97.0%</div>' in page
    assert '<div class="note">epoch 3 of 5, fine-tune</div>' in page
    assert '<td>0</td><td class="text">probe</td>' in page  # the probe row at epoch 0, first


def test_report_labels_a_cross_validated_figure(tmp_path):
    rows, summary = R.cross_validated()
    page = report.render_html_report(R.write_run(tmp_path / "run", rows, summary))
    assert '<div class="label">cross-validated accuracy</div><div class="value">94.0% ± 2.1%</div>' in page
    assert "5-fold; kept weights: epoch 0 of 3, probe" in page


def test_report_keeps_fractional_epochs_and_flags_an_unrecorded_choice(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_acc": a} for e, a in ((0.5, 0.6), (1.0, 0.8), (1.5, 0.7))]
    RunDir(tmp_path / "run").write_metrics(rows)
    page = report.render_html_report(tmp_path / "run")
    assert "<td>0.5</td>" in page and "<td>1.5</td>" in page  # not rounded to 0 and 1
    assert '<tr class="best"><td>1</td>' in page and '<tr class="kept">' not in page
    assert "the highest validation accuracy (epoch 1); this run did not record which weights it kept" in page


def test_report_of_an_older_lpft_run(tmp_path):
    rows, summary = R.old_lpft()
    page = report.render_html_report(R.write_run(tmp_path / "run", rows, summary))
    kept = re.findall(r'<tr class="kept">(.*?)</tr>', page)
    assert len(kept) == 1 and kept[0].startswith('<td>3</td><td class="text">probe</td>')  # not the probe's 100% epoch 4
    assert "numbered each stage&#x27;s epochs from 1" in page


def test_comparison_names_stages_too_narrow_for_their_lane():
    """The current training side's lp-ft: 50 probe epochs, then 3 fine-tune ones numbered 1..3 again."""
    probe = [{"epoch": e, "stage": "probe", "val_acc": 0.9, "val_loss": 0.3} for e in range(1, 51)]
    tune = [{"epoch": e, "stage": "fine-tune", "val_acc": 0.95, "val_loss": 0.2} for e in (1, 2, 3)]
    plain = [{"epoch": e, "stage": "train", "val_acc": 0.8, "val_loss": 0.5} for e in (1, 2, 3)]
    summaries = {"lp-ft": {"best_epoch": 3, "best_val_acc": 0.95, "best_val_loss": 0.2}}
    drawn = plots._comparison_runs({"full": plain, "lp-ft": probe + tune}, summaries)
    fig = _figure(plots._draw_comparison, drawn, summaries, title=None)
    assert (53.0, 95.0) in _stars(fig.axes[0])  # fine-tune epoch 3, not probe epoch 3
    assert {"train", "probe", "fine-tune"} <= set(_legend(fig))


def test_odd_rows_still_draw():
    """Rows a hand-written or partial metrics.csv may hold: no stage on some rows, numeric stage
    names, no validation accuracy on the kept row (the summary's figure is starred), no epochs."""
    rows = [
        {"epoch": 1, "stage": None, "train_loss": 1.0, "val_acc": 0.5, "val_loss": 0.9},
        {"epoch": 2, "stage": 2, "train_loss": 0.8, "val_acc": 0.6, "val_loss": 0.8},
        {"epoch": 3, "stage": 2, "train_loss": 0.7, "val_acc": None, "val_loss": None, "kept": "True"},
    ]
    tl = timeline(rows)
    assert [s.stage for s in tl.spans] == ["(no stage)", "2"] and tl.kept.index == 2
    fig = _figure(plots._draw_curves, rows, title=None, summary={"best_val_acc": 0.65, "best_val_loss": 0.75})
    assert _stars(fig.axes[1]) == [(3.0, 65.0)] and _stars(fig.axes[0]) == [(3.0, 0.75)]
    no_epochs = [{"val_acc": 0.5}, {"val_acc": 0.7}]
    assert timeline(no_epochs).x == [1.0, 2.0] and timeline(no_epochs).kept.index == 1
