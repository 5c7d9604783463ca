"""The loop itself, on tensors: learning, exact resume, the NaN guard, EMA, exact evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regraft.data.sampler import EpochBatchSampler
from regraft.errors import TrainingError
from regraft.runs import RunDir, load_checkpoint
from regraft.training import loop as engine


class _Plan:
    """The smallest object fit() needs: optimizer, scheduler, begin_epoch, state_dict."""

    def __init__(self, model: nn.Module, lr: float = 0.05, steps: int = 400) -> None:
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, 1 - s / steps))
        self.linear_probe_first = False

    def begin_epoch(self, epoch):
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def audit(self):
        return []


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _loaders(bs=8):
    train, val = _data(256, 0), _data(32, 1)
    mk = lambda ds, shuffle: DataLoader(ds, batch_sampler=EpochBatchSampler(len(ds), batch_size=bs, shuffle=shuffle, seed=3))  # noqa: E731
    return mk(train, True), mk(val, False)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 2))


def _fit(model, epochs, run=None, state=None, plan=None, **kw):
    acc = engine.make_accelerator(device="cpu")
    plan = plan or _Plan(model)
    model, plan.optimizer = acc.prepare(model, plan.optimizer)
    train, val = _loaders()
    return engine.fit(model, plan, train, val, epochs=epochs, accelerator=acc, run=run, seed=7, state=state, **kw), plan, acc


def test_fit_learns_a_separable_task():
    state, _, _ = _fit(_model(), 5)
    assert state.history[-1]["val_acc"] >= 0.9
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_resume_continues_exactly(tmp_path):
    full = _model()
    full_state, _, _ = _fit(full, 4, run=RunDir.prepare(tmp_path / "a"))

    part = _model()
    run_b = RunDir.prepare(tmp_path / "b")
    _fit(part, 2, run=run_b)
    # a new process: fresh objects, restored from the checkpoint on disk
    resumed = _model(seed=123)
    plan = _Plan(resumed)
    acc = engine.make_accelerator(device="cpu")
    resumed_p, plan.optimizer = acc.prepare(resumed, plan.optimizer)
    state = engine.restore(load_checkpoint(run_b.checkpoint), model=resumed_p, plan=plan, accelerator=acc)
    assert state.epoch == 2
    train, val = _loaders()
    state = engine.fit(resumed_p, plan, train, val, epochs=4, accelerator=acc, run=run_b, seed=7, state=state)
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for ra, rb in zip(full_state.history, state.history, strict=True):
        assert ra["val_acc"] == rb["val_acc"]
        assert math.isclose(ra["train_loss"], rb["train_loss"], rel_tol=1e-5)


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    model = _model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 1: lower --lr, or train in full precision"):
        _fit(model, 2, run=RunDir.prepare(tmp_path / "nan"))


def test_best_weights_kept_when_nan_comes_later(tmp_path):
    run = RunDir.prepare(tmp_path / "later")
    model = _model()
    _fit(model, 2, run=run)
    saved = (run.path / "model.safetensors").read_bytes()
    plan = _Plan(model, lr=1e6)  # diverges
    with pytest.raises(TrainingError):
        _fit(model, 6, run=run, plan=plan, state=engine.FitState(**load_checkpoint(run.checkpoint)["fit"]))
    assert (run.path / "model.safetensors").read_bytes() == saved


def test_ema_is_evaluated_alongside(tmp_path):
    model = _model()
    ema = engine.WeightEMA(model, decay=0.9)
    run = RunDir.prepare(tmp_path / "ema")
    state, _, _ = _fit(model, 3, run=run, ema=ema)
    assert "val_acc_ema" in state.history[-1] and "val_loss_ema" in state.history[-1]
    assert (run.path / "model_ema.safetensors").is_file()
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    with pytest.raises(TrainingError, match="--ema must be a decay between 0 and 1"):
        engine.WeightEMA(model, decay=1.5)


def test_early_stopping(tmp_path):
    state, _, _ = _fit(_model(), 30, patience=1, plan=None)
    assert state.stopped_early and state.epoch < 30


def test_evaluate_counts_every_sample_once():
    model = _model().eval()
    _, val = _loaders(bs=5)
    result = engine.evaluate(model, val, collect=True)
    assert result.n == 32 and result.logits.shape == (32, 2)
    expected = (model(val.dataset.tensors[0]).argmax(1) == val.dataset.tensors[1]).float().mean().item()
    assert result.accuracy == pytest.approx(expected)


def test_precision_and_device_errors():
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="--device cuda was asked for but no CUDA GPU is visible"):
            engine.make_accelerator(device="cuda")
        with pytest.raises(TrainingError, match="--precision fp16 needs a CUDA GPU"):
            engine.make_accelerator(device="cpu", precision="fp16")


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_units(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the CPU rule; a CUDA machine resolves auto on its GPU")
    monkeypatch.setattr(engine, "cpu_has_fast_bf16", lambda: True)
    assert engine.resolve_precision("auto", device="cpu") == "bf16"
    assert engine.resolve_precision("fp32", device="cpu") == "no"
    monkeypatch.setattr(engine, "cpu_has_fast_bf16", lambda: False)
    assert engine.resolve_precision("auto", device="cpu") == "no"
    assert engine.resolve_precision("bf16", device="cpu") == "bf16"  # asked for: honoured (emulated where slow)
    # depthwise convolutions are slower in bf16 on CPU: MobileNet/EfficientNet-like models stay fp32
    monkeypatch.setattr(engine, "cpu_has_fast_bf16", lambda: True)
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=8))
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2))
    assert engine.has_depthwise_conv(depthwise) and not engine.has_depthwise_conv(grouped)
    assert engine.resolve_precision("auto", device="cpu", model=depthwise) == "no"
    assert engine.resolve_precision("auto", device="cpu", model=grouped) == "bf16"
    assert engine.resolve_precision("bf16", device="cpu", model=depthwise) == "bf16"


def test_accelerators_with_different_precisions_in_one_process():
    # Accelerate refuses a second state with another precision; compare() and notebooks need it
    a = engine.make_accelerator(device="cpu", precision="bf16")
    assert a.mixed_precision == "bf16"
    b = engine.make_accelerator(device="cpu", precision="fp32")
    assert b.mixed_precision == "no"
    with b.autocast():
        assert not torch.is_autocast_enabled("cpu")
    c = engine.make_accelerator(device="cpu", precision="bf16")
    with c.autocast():
        assert torch.is_autocast_enabled("cpu")


def test_channels_last_auto_is_on_for_convolutional_models_on_cpu():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    cpu = torch.device("cpu")
    assert engine.resolve_channels_last(None, conv, cpu) is True
    assert engine.resolve_channels_last(None, _model(), cpu) is False  # no 2-D convolution
    assert engine.resolve_channels_last(False, conv, cpu) is False
    assert engine.resolve_channels_last(True, _model(), cpu) is True
    assert engine.resolve_channels_last(None, conv, torch.device("mps")) is False


def test_bf16_training_learns_and_evaluates_in_bf16():
    model = _model()
    acc = engine.make_accelerator(device="cpu", precision="bf16")
    plan = _Plan(model)
    model, plan.optimizer = acc.prepare(model, plan.optimizer)
    train, val = _loaders()
    state = engine.fit(model, plan, train, val, epochs=3, accelerator=acc, seed=7)
    assert state.best_val_acc > 0.85
    assert next(acc.unwrap_model(model).parameters()).dtype == torch.float32  # autocast: weights stay fp32


def test_deferred_step_stats_read_each_step_once_in_order():
    # on CUDA the loop reads each step's loss one step late (no stall); the figures must not change
    seen = []

    class Rec(engine.Callback):
        def on_step(self, epoch, step, steps, loss):
            seen.append((epoch, step, steps, round(loss, 4)))

    y = torch.tensor([0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])  # 2 of 3 right
    results = []
    for defer in (False, True):
        seen.clear()
        stats = engine._StepStats(epoch=2, steps=3, callbacks=[Rec()], defer=defer)
        for step, loss in enumerate((0.5, 0.25, 0.125)):
            stats.add(step, torch.tensor(loss), logits, y)
            if defer:
                assert len(seen) == step  # the previous step only
        stats.flush()
        results.append((list(seen), stats.loss_sum, stats.correct, stats.seen))
    assert results[0] == results[1]
    assert results[0][0] == [(2, 1, 3, 0.5), (2, 2, 3, 0.25), (2, 3, 3, 0.125)]
    assert results[0][1:] == (0.875 * 3, 6, 9)

    stats = engine._StepStats(epoch=1, steps=3, callbacks=[], defer=True)
    stats.add(0, torch.tensor(0.5), logits, y)
    stats.add(1, torch.tensor(float("nan")), logits, y)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 2: lower --lr"):
        stats.flush()
