"""Multi-label training pieces on small data: the loop, the probe, the kept figures, the report, the card."""

from __future__ import annotations

import json
import logging
import math

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regraft import data, zoo
from regraft.data.sampler import EpochBatchSampler
from regraft.errors import RunError
from regraft.features import CacheSettings
from regraft.inference.card import check_card
from regraft.report import plot_curves, render_html_report
from regraft.report._timeline import timeline, validation_of
from regraft.tasks import rules
from regraft.training import loop
from regraft.training.label_figures import label_figures
from regraft.training.probe import ProbeLabels, fit_probe_stage
from regraft.training.processes import Processes
from tests.helpers import SimplePlan, fit_stage
from tests.imagegen import make_multilabel_data

CPU = torch.device("cpu")
ML = rules("multilabel")




def _tensors(n: int, seed: int) -> TensorDataset:
    """Three overlapping labels, each a linear rule of the inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.stack([x[:, 0] > 0, x[:, 1] > 0.3, x[:, 0] + x[:, 2] > 0.5], dim=1).float()
    return TensorDataset(x, y)


def _loaders():
    mk = lambda ds, shuffle: DataLoader(ds, batch_sampler=EpochBatchSampler(len(ds), batch_size=16, shuffle=shuffle, seed=3))  # noqa: E731
    return mk(_tensors(256, 0), True), mk(_tensors(64, 1), False)


def test_the_loop_keeps_the_row_with_the_best_map_and_writes_no_accuracy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    train, val = _loaders()
    state = fit_stage(model, SimplePlan(model, steps=None), train, val, epochs=4, seed=7, task=ML, criterion=ML.criterion())
    rows = state.history
    assert state.primary == "val_map" and all("val_acc" not in r and "train_acc" not in r for r in rows)
    assert {"val_map", "val_f1_macro", "val_f1_micro", "val_loss"} <= set(rows[0])
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_map"], -rows[i]["val_loss"]))
    assert state.best == best and rows[-1]["val_map"] > 0.8  # it learns
    again = loop.evaluate(model, val, task=ML, collect=True)
    whole = ML.evaluation(again.logits, again.targets, batches=[16] * 4)
    assert again.figures == whole.figures and again.loss == pytest.approx(whole.loss, abs=1e-12)
    assert again.score == again.figures["val_map"] and again.accuracy is None


def test_the_multiclass_default_is_unchanged_and_adds_balanced_accuracy():
    model = nn.Sequential(nn.Linear(8, 2))
    x = torch.randn(40, 8)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    got = loop.evaluate(model, loader)
    logits = model(x).detach()
    assert got.accuracy == float((logits.argmax(1) == y).float().mean())
    assert got.primary == "val_acc" and "val_balanced_acc" in got.figures
    row = loop.row_of(got, epoch=1, train_loss=0.1, train_acc=0.5, lr=None, images_per_sec=1.0, epoch_seconds=1.0).to_row()
    assert list(row)[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]


# ----------------------------------------------------------------------------- the probe


def _datasets(tmp_path, *, cv: bool = False):
    root = make_multilabel_data(tmp_path / "ml", n_train=24, n_val=12, empty_every=6)
    splits = data.discover(root, train_csv="train.csv", val_csv="val.csv", multilabel=True)
    dcfg = zoo.DataConfig(input_size=(3, 32, 32))
    tf = data.build_transforms(dcfg, train=False)
    train = data.ImageDataset(splits.train, tf, num_labels=3)
    val = data.ImageDataset(splits.val, tf, num_labels=3, on_error="drop")
    if cv:
        return data.ImageDataset(splits.train + splits.val, tf, num_labels=3), None
    return train, val


def _probe(model, head, train, val, *, regime="holdout", weights=None):
    return fit_probe_stage(model, head=head, train_dataset=train, val_dataset=val, num_classes=3, regime=regime,
                           settings=CacheSettings(batch_size=8, augment="none"), procs=Processes(device=CPU), autocast=None,
                           labels=ProbeLabels(task=ML, sample_weights=weights))


def test_a_one_vs_rest_probe_reports_map_on_validation_and_by_cross_validation(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    train, val = _datasets(tmp_path)
    out = _probe(model, "fc", train, val)
    row = out.row.to_row()
    assert "val_acc" not in row and row["val_map"] == out.acc and row["stage"] == "probe"
    assert out.message.startswith(f"probe: val mAP {out.acc:.3f}")
    model.eval()
    with torch.no_grad():  # the head's sigmoids are what the probe measured
        x, y = next(iter(data.make_loader(val, batch_size=64)))
        assert ML.evaluation(model(x), y).figures["val_map"] == pytest.approx(out.acc, abs=1e-6)
    everything, _ = _datasets(tmp_path, cv=True)
    cv = _probe(timm.create_model("test_resnet", num_classes=3), "fc", everything, None, regime="cv5")
    assert cv.validation == "cv5" and cv.out_of_fold.shape == (36, 3) and cv.oof_targets.shape == (36, 3)
    assert cv.row.extra["val_map_std"] == cv.acc_std and "cross-validated mAP" in cv.message


def test_the_probe_takes_the_balance_weights(tmp_path, caplog):
    train, val = _datasets(tmp_path)
    heads = []
    for weights in (None, [5.0 if s.label == (0,) else 1.0 for s in train.samples], [1.0]):
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=3)
        with caplog.at_level(logging.WARNING, logger="regraft"):
            _probe(model, "fc", train, val, weights=weights)
        heads.append(model.fc.weight.detach().clone())
    assert not torch.allclose(heads[0], heads[1])  # weighted differently
    assert torch.equal(heads[0], heads[2]) and "1 sample weights for 24 images; fitted unweighted" in caplog.text


def test_a_head_that_is_not_linear_is_cross_validated_through_its_forward(tmp_path):
    from regraft import surgery

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000)
    head = surgery.replace_head(model, 3, hidden=[8])
    everything, _ = _datasets(tmp_path, cv=True)
    out = _probe(model, head, everything, None, regime="cv5")
    assert out.folds >= 2 and out.out_of_fold.shape == (36, 3) and 0.0 <= out.acc <= 1.0
    assert bool(((out.out_of_fold >= 0) & (out.out_of_fold <= 1)).all())  # sigmoids, not softmax rows
    assert not torch.allclose(out.out_of_fold.sum(1), torch.ones(36, dtype=out.out_of_fold.dtype))


def test_thresholds_come_from_out_of_fold_probabilities_without_validation_images():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.2], [0.2, 0.8], [0.1, 0.3]], dtype=torch.float64)
    targets = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.float32)
    got = label_figures(ML, ["a", "b"], logits=None, targets=None, out_of_fold=(probs, targets))
    assert got.thresholds.source == "cross-validation"
    assert got.thresholds.values == [pytest.approx(0.45), pytest.approx(0.55)]
    assert got.summary["per_label"]["a"]["f1"] == 1.0 and got.summary["thresholds_source"] == "cross-validation"
    nothing = label_figures(ML, ["a", "b"], logits=None, targets=None)
    assert nothing.thresholds.values == [0.5, 0.5] and nothing.thresholds.source == "default"


# ----------------------------------------------------------------------------- report and card


def _ml_rows():
    return [
        {"epoch": 0, "stage": "probe", "train_loss": 0.4, "val_loss": 0.35, "val_map": 0.71, "val_f1_macro": 0.5},
        {"epoch": 1, "stage": "fine-tune", "train_loss": 0.3, "val_loss": 0.30, "val_map": 0.83, "val_f1_macro": 0.6},
        {"epoch": 2, "stage": "fine-tune", "train_loss": 0.2, "val_loss": 0.33, "val_map": 0.80, "val_f1_macro": 0.7},
    ]


def test_the_report_reads_the_primary_figure_from_the_summary(tmp_path):
    summary = {"primary": "val_map", "best_val_map": 0.83, "best_val_loss": 0.30, "best_epoch": 1, "best_stage": "fine-tune",
               "validation": "holdout", "task": "multilabel"}
    tl = timeline(_ml_rows(), summary)
    assert tl.primary == "val_map" and tl.kept.index == 1 and tl.kept.acc_key == "val_map"
    assert timeline(_ml_rows(), {"primary": "val_map"}).kept.index == 1  # nothing recorded: the highest mAP
    cv = validation_of({"primary": "val_map", "validation": "cv5", "best_val_map_std": 0.04})
    assert cv.noun == "cross-validated mAP" and cv.std == 0.04
    png = plot_curves(_ml_rows(), tmp_path / "curves.png", summary=summary)
    assert png.read_bytes().startswith(b"\x89PNG")


def test_report_html_shows_map_balance_and_the_per_label_table(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    summary = {"primary": "val_map", "best_val_map": 0.83, "final_val_map": 0.80, "best_val_loss": 0.3, "best_epoch": 1,
               "task": "multilabel", "f1_macro_at_thresholds": 0.77, "f1_micro_at_thresholds": 0.8,
               "balance": {"mode": "loss", "asked": "auto", "imbalance": 12.0, "reason": "balance: loss (...)"},
               "thresholds_source": "validation", "thresholds_default": ["c<&>"],
               "per_label": {"a": {"ap": 0.9, "threshold": 0.31, "precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 7},
                             "c<&>": {"ap": None, "threshold": 0.5, "precision": 0.0, "recall": None, "f1": None, "support": 0}}}
    (run / "summary.json").write_text(json.dumps(summary))
    page = render_html_report(run)
    assert "val mAP, kept weights" in page and "83.0%" in page and "final val mAP" in page
    assert 'id="per-label"' in page and "0.3100" in page and "c&lt;&amp;&gt;" in page and "c<&>" not in page
    assert "Kept at 0.5 (no positive image to choose on)" in page and ">loss<" in page and "imbalance 12.0x" in page
    (run / "summary.json").write_text(json.dumps({"best_val_acc": 0.9, "best_val_balanced_acc": 0.7,
                                                  "per_class_recall": {"rare": 0.4, "common": 1.0}}))
    page = render_html_report(run)
    assert "balanced accuracy" in page and 'id="per-class"' in page
    assert page.index(">rare<") < page.index(">common<")  # the lowest recall first


def test_a_card_with_broken_thresholds_is_refused():
    card = {"architecture": {"zoo": "timm", "name": "test_resnet"}, "classes": ["a", "b"], "num_classes": 2,
            "preprocessing": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                              "crop_pct": 1.0}, "task": "multilabel", "thresholds": [0.4, 0.6]}
    check_card(card, where="model.json")
    with pytest.raises(RunError, match=r"model.json is damaged: 'thresholds' must be probabilities between 0 and 1"):
        check_card(card | {"thresholds": [0.4, math.inf]}, where="model.json")
    with pytest.raises(RunError, match=r"'task' must be multiclass or multilabel, got 'regression'"):
        check_card(card | {"task": "regression"}, where="model.json")
