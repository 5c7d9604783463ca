"""The one loop, on tensors: learning, exact resume, the NaN guards, EMA, the epoch axis, exact evaluation,
and what it leaves untouched (the process's RNGs, a user's Accelerator)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regraft.data.sampler import EpochBatchSampler
from regraft.errors import ConfigError, TrainingError
from regraft.runs import RunDir, load_checkpoint
from regraft.training import checkpoint, loop, numerics, step
from regraft.training.processes import Processes, processes
from tests.helpers import SimplePlan, fit_stage


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
    plan = plan or SimplePlan(model)
    train, val = _loaders()
    return fit_stage(model, plan, train, val, epochs=epochs, run=run, state=state, seed=7, **kw), plan


def test_fit_learns_a_separable_task():
    state, _ = _fit(_model(), 5)
    assert state.history[-1]["val_acc"] >= 0.9
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5] and state.best is not None


def test_resume_continues_exactly(tmp_path):
    full = _model()
    full_state, _ = _fit(full, 4, run=RunDir.prepare(tmp_path / "a"))

    part = _model()
    run_b = RunDir.prepare(tmp_path / "b")
    _fit(part, 2, run=run_b)
    # a new process: fresh objects, restored from the checkpoint on disk
    resumed = _model(seed=123)
    plan = SimplePlan(resumed)
    saved = load_checkpoint(run_b.checkpoint)
    state = loop.FitState.from_dict(checkpoint.restore(saved, model=resumed, optimizer=plan.optimizer,
                                                       scheduler=plan.scheduler, plan=plan))
    assert state.epoch == 2 and saved["stage"] == "train"
    state, _ = _fit(resumed, 4, run=run_b, state=state, plan=plan)
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
    plan = SimplePlan(model, lr=1e6)  # diverges
    with pytest.raises(TrainingError):
        _fit(model, 6, run=run, plan=plan, state=loop.FitState.from_dict(load_checkpoint(run.checkpoint)["fit"]))
    assert (run.path / "model.safetensors").read_bytes() == saved


class _NanOnEval(nn.Module):
    """Trains like a linear model; its outputs in eval mode are NaN from the second evaluation on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)
        self.evals = 0

    def forward(self, x):
        out = self.lin(x)
        if not self.training:
            self.evals += 1
            if self.evals > 4:  # the first evaluation's four batches are finite
                return out * float("nan")
        return out


def test_a_nan_validation_loss_stops_the_run_and_those_weights_are_not_kept(tmp_path):
    run = RunDir.prepare(tmp_path / "valnan")
    torch.manual_seed(0)
    model = _NanOnEval()
    with pytest.raises(TrainingError, match=r"the validation loss became nan at epoch 2: lower --lr or set --clip-grad; those weights were not kept"):
        _fit(model, 3, run=run)
    kept = load_checkpoint(run.checkpoint)
    assert kept["fit"]["epoch"] == 1 and len(kept["fit"]["history"]) == 1


def test_ema_is_evaluated_alongside(tmp_path):
    model = _model()
    ema = checkpoint.WeightEMA(model, decay=0.9)
    run = RunDir.prepare(tmp_path / "ema")
    state, _ = _fit(model, 3, run=run, ema=ema)
    assert "val_acc_ema" in state.history[-1] and "val_loss_ema" in state.history[-1]
    assert (run.path / "model_ema.safetensors").is_file()
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    with pytest.raises(TrainingError, match="--ema must be a decay between 0 and 1"):
        checkpoint.WeightEMA(model, decay=1.5)


def test_early_stopping(tmp_path):
    state, _ = _fit(_model(), 30, patience=1)
    assert state.stop_reason.startswith("early stop after epoch") and state.epoch < 30


def test_half_epoch_evaluations_share_one_axis_and_stop_behind_a_reference_row():
    model = _model()
    ref = {"epoch": 0, "stage": "probe", "val_acc": 1.0, "val_loss": 0.0}  # unbeatable: the first evaluation stops
    state = loop.FitState(history=[dict(ref)], best=0)
    state, _ = _fit(model, 3, state=state, evals_per_epoch=2, stop_behind=0, name="fine-tune")
    assert [r["epoch"] for r in state.history] == [0, 0.5]
    assert state.best == 0 and state.history[1]["stage"] == "fine-tune"
    assert state.stop_reason.startswith("fine-tune stopped after epoch 0.5: val acc") and "does not beat the probe" in state.stop_reason
    assert state.epoch == 0  # stopped inside the first epoch
    go = loop.FitState(history=[dict(ref, val_acc=0.0, val_loss=9.0)], best=0)
    go, _ = _fit(_model(), 2, state=go, evals_per_epoch=2, stop_behind=0, name="fine-tune")
    epochs = [r["epoch"] for r in go.history]
    assert epochs == sorted(epochs) == [0, 0.5, 1, 1.5, 2] and go.best != 0


def test_behind_a_reference_fine_tuning_also_stops_after_a_whole_epoch_without_a_better_row():
    model = _model()
    ref = {"epoch": 0, "stage": "probe", "val_acc": 0.0, "val_loss": 9.0}  # beaten by the first evaluation
    state = loop.FitState(history=[dict(ref)], best=0)
    state, _ = _fit(model, 5, state=state, plan=SimplePlan(model, lr=0.0), evals_per_epoch=2, stop_behind=0, name="fine-tune")
    # lr 0: every evaluation equals the first, so after it a whole epoch (two evaluations) beats nothing
    assert [r["epoch"] for r in state.history] == [0, 0.5, 1, 1.5] and state.best == 1
    assert state.stop_reason == "fine-tune stopped after epoch 1.5: a whole epoch without beating epoch 0.5 (fine-tune), which is kept"


def test_better_is_the_one_rule():
    assert loop.better(0.9, 0.5, 0.8, 0.1) and loop.better(0.9, 0.4, 0.9, 0.5)
    assert not loop.better(0.9, 0.5, 0.9, 0.5) and not loop.better(0.8, 0.0, 0.9, 1.0)


def test_evaluate_counts_every_sample_once_in_fp32():
    model = _model().eval()
    _, val = _loaders(bs=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation ignores a surrounding autocast
        result = loop.evaluate(model, val, collect=True)
    assert result.n == 32 and result.logits.shape == (32, 2) and result.logits.dtype == torch.float32
    logits = model(val.dataset.tensors[0])
    expected = (logits.argmax(1) == val.dataset.tensors[1]).float().mean().item()
    assert result.accuracy == pytest.approx(expected)
    torch.testing.assert_close(result.logits, logits.detach())


def test_precision_and_device_errors():
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="--device cuda was asked for but no CUDA GPU is visible"):
            processes("cuda")
        with pytest.raises(TrainingError, match="--precision fp16 needs a CUDA GPU"):
            numerics.resolve_precision("fp16", device="cpu")


def test_a_launchers_mixed_precision_is_adopted_not_contradicted(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cpu = torch.device("cpu")
    got = numerics.step_numerics(cpu, precision="auto", channels_last=None, model=_model())
    assert got.precision == "bf16"
    with pytest.raises(ConfigError, match="accelerate launch runs this process in bf16 .* but --precision fp32 was asked for"):
        numerics.step_numerics(cpu, precision="fp32", channels_last=None, model=_model())


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_units(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the CPU rule; a CUDA machine resolves auto on its GPU")
    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: True)
    assert numerics.resolve_precision("auto", device="cpu") == "bf16"
    assert numerics.resolve_precision("fp32", device="cpu") == "fp32"
    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: False)
    assert numerics.resolve_precision("auto", device="cpu") == "fp32"
    assert numerics.resolve_precision("bf16", device="cpu") == "bf16"  # asked for: honoured (emulated where slow)
    # depthwise convolutions are slower in bf16 on CPU: MobileNet/EfficientNet-like models stay fp32
    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: True)
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=8))
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2))
    assert numerics.has_depthwise_conv(depthwise) and not numerics.has_depthwise_conv(grouped)
    assert numerics.resolve_precision("auto", device="cpu", model=depthwise) == "fp32"
    assert numerics.resolve_precision("auto", device="cpu", model=grouped) == "bf16"
    assert numerics.resolve_precision("bf16", device="cpu", model=depthwise) == "bf16"


def test_channels_last_auto_is_on_for_convolutional_models_on_cpu():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    cpu = torch.device("cpu")
    assert numerics.resolve_channels_last(None, conv, cpu) is True
    assert numerics.resolve_channels_last(None, _model(), cpu) is False  # no 2-D convolution
    assert numerics.resolve_channels_last(False, conv, cpu) is False
    assert numerics.resolve_channels_last(True, _model(), cpu) is True
    assert numerics.resolve_channels_last(None, conv, torch.device("mps")) is False


def test_bf16_training_learns_and_evaluates_in_fp32():
    model = _model()
    state, _ = _fit(model, 3, precision="bf16")
    assert state.best_row["val_acc"] > 0.85
    assert next(model.parameters()).dtype == torch.float32  # autocast: weights stay fp32


def test_deferred_step_stats_read_each_step_once_in_order():
    # on CUDA the loop reads each step's loss one step late (no stall); the figures must not change
    seen = []

    class Rec(loop.Callback):
        def on_step(self, epoch, step, steps, loss):
            seen.append((epoch, step, steps, round(loss, 4)))

    y = torch.tensor([0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])  # 2 of 3 right
    results = []
    for defer in (False, True):
        seen.clear()
        tally = step.Tally(epoch=2, steps=3, callbacks=[Rec()], defer=defer)
        for i, loss in enumerate((0.5, 0.25, 0.125)):
            tally.add(i, torch.tensor(loss), logits, y, lr=0.1)
            if defer:
                assert len(seen) == i  # the previous step only
        tally.flush()
        results.append((list(seen), tally.loss_sum, tally.correct, tally.seen))
    assert results[0] == results[1]
    assert results[0][0] == [(2, 1, 3, 0.5), (2, 2, 3, 0.25), (2, 3, 3, 0.125)]
    assert results[0][1:] == (0.875 * 3, 6, 9)
    assert tally.totals(Processes(device=torch.device("cpu")))[3] == pytest.approx(0.1)  # the mean LR of the steps

    tally = step.Tally(epoch=1, steps=3, callbacks=[], defer=True)
    tally.add(0, torch.tensor(0.5), logits, y, lr=0.1)
    tally.add(1, torch.tensor(float("nan")), logits, y, lr=0.1)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 2: lower --lr"):
        tally.flush()


# ---------------------------------------------------------------------------- the user's world is left alone


def test_fit_leaves_the_global_rngs_as_they_were(tmp_path):
    from regraft.api import fit
    from tests.helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=6, size=16)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, 2))
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    fit(model, data, epochs=1, img_size=16, batch_size=4, workers=0, out=str(tmp_path / "run"), device="cpu")
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


def test_fit_hands_back_a_plain_module_whose_batchnorm_learns_in_train_mode(tmp_path):
    from regraft.api import fit
    from tests.helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=6, size=16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    flags = [p.requires_grad for p in model.parameters()]
    fit(model, data, epochs=1, img_size=16, batch_size=4, workers=0, out=str(tmp_path / "run"), device="cpu",
        strategy="head")  # the trunk (and its BatchNorm) frozen while training
    bn = model[1]
    assert not bn._forward_pre_hooks and not any(k.startswith("_regraft") for k in vars(bn))
    assert [p.requires_grad for p in model.parameters()] == flags
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 16, 16) * 3 + 1)
    assert bn.training and not torch.equal(bn.running_mean, before)  # plain PyTorch: statistics update


def test_an_accelerator_made_before_fit_still_works_after(tmp_path):
    from accelerate import Accelerator

    from regraft.api import fit
    from tests.helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=6, size=16)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    fit(model, data, epochs=1, img_size=16, batch_size=4, workers=0, out=str(tmp_path / "run"), device="cpu",
        grad_accum=2, precision="fp32")
    assert acc.gradient_accumulation_steps == 3 and acc.mixed_precision == "no"
    net = nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net, opt = acc.prepare(net, opt)
    before = net.weight.detach().clone()
    for _ in range(3):
        with acc.accumulate(net):
            acc.backward(net(torch.randn(2, 4)).sum())
            opt.step()
            opt.zero_grad()
    assert not torch.equal(before, net.weight)  # the user's accumulation still steps on the third batch
