"""Parameter groups, optimizers, schedules, and staged unfreezing that every scheduler survives."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from regraft.errors import ConfigError, FreezeError
from regraft.freezing import freeze
from regraft.optim import (
    GroupScheduler,
    UnfreezeSchedule,
    build_optimizer,
    build_scheduler,
    param_groups,
    split_by_epoch,
    stage_scales,
)
from tests.helpers import TinyResNet

SCHEDULES = ("constant", "cosine", "onecycle", "step")


def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet()


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def test_groups_follow_stages_with_head_multiplier_and_no_decay_on_1d() -> None:
    m = model()
    groups = param_groups(m, lr=1e-3, head="fc", weight_decay=0.05)
    names = [g["name"] for g in groups]
    assert names == ["stem", "stem/no_decay", "layer1", "layer1/no_decay", "layer2", "layer2/no_decay",
                     "layer3", "layer3/no_decay", "layer4", "layer4/no_decay", "head", "head/no_decay"]
    g = by_name(groups)
    assert g["head"]["lr"] == pytest.approx(1e-2) and g["layer4"]["lr"] == pytest.approx(1e-3)
    assert g["head"]["initial_lr"] == g["head"]["base_lr"] == g["head"]["lr"]
    assert g["head/no_decay"]["param_names"] == ["fc.bias"] and g["head/no_decay"]["weight_decay"] == 0.0
    assert g["layer1/no_decay"]["param_names"] == ["layer1.1.weight", "layer1.1.bias"]
    assert all(p.ndim > 1 for gr in groups if "/" not in gr["name"] for p in gr["params"])
    assert all(gr["weight_decay"] == 0.05 for gr in groups if "/" not in gr["name"])
    total = sum(p.numel() for gr in groups for p in gr["params"])
    assert total == sum(p.numel() for p in m.parameters())


def test_only_trainable_parameters_unless_asked() -> None:
    m = model()
    freeze(m, freeze_to="layer3", head="fc")
    groups = param_groups(m, lr=1e-3, head="fc")
    assert [g["name"] for g in groups] == ["layer4", "layer4/no_decay", "head", "head/no_decay"]
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert len(param_groups(m, lr=1e-3, head="fc", include_frozen=True)) == 12
    picked = param_groups(m, lr=1e-3, head="fc", names=["layer1.0.weight", "fc.weight"])
    assert [(g["name"], g["param_names"]) for g in picked] == [("layer1", ["layer1.0.weight"]), ("head", ["fc.weight"])]
    assert param_groups(m, lr=1e-3, head="fc", no_decay_norm_bias=False, weight_decay=0.1)[-1]["weight_decay"] == 0.1


def test_discriminative_lr_is_geometric_from_first_to_last_stage() -> None:
    groups = param_groups(model(), lr=1e-3, head="fc", discriminative_lr=0.01)
    lrs = [g["lr"] for g in groups if "/" not in g["name"]]
    assert lrs[0] == pytest.approx(1e-5) and lrs[4] == pytest.approx(1e-3) and lrs[5] == pytest.approx(1e-2)
    ratios = [lrs[i + 1] / lrs[i] for i in range(4)]
    assert ratios == pytest.approx([ratios[0]] * 4)
    assert by_name(groups)["layer2/no_decay"]["lr"] == by_name(groups)["layer2"]["lr"]


def test_layer_decay_counts_depth_from_the_head() -> None:
    groups = param_groups(model(), lr=1.0, head="fc", head_lr_mult=1.0, layer_decay=0.5)
    lrs = [g["lr"] for g in groups if "/" not in g["name"]]
    assert lrs == pytest.approx([0.5**5, 0.5**4, 0.5**3, 0.5**2, 0.5, 1.0])
    assert stage_scales(1, discriminative_lr=0.1) == [1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"discriminative_lr": 0.1, "layer_decay": 0.7}, "give discriminative_lr or layer_decay, not both"),
        ({"discriminative_lr": 2.0}, r"discriminative_lr must be in \(0, 1\]"),
        ({"layer_decay": 0.0}, r"layer_decay must be in \(0, 1\]"),
        ({"head_lr_mult": 0.0}, "lr and head_lr_mult must be positive"),
    ],
)
def test_bad_lr_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        param_groups(model(), lr=1e-3, head="fc", **kwargs)


def test_build_optimizer_sgd_and_adamw() -> None:
    m = model()
    groups = param_groups(m, lr=1e-3, head="fc", weight_decay=1e-4)
    sgd = build_optimizer(groups, name="sgd", lr=1e-3, momentum=0.9, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["nesterov"]
    assert sgd.param_groups[-1]["lr"] == pytest.approx(1e-2) and sgd.param_groups[-1]["name"] == "head/no_decay"
    adamw = build_optimizer(groups, name="AdamW", lr=1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 1e-4
    assert "momentum" not in groups[0]  # the caller's groups are not changed
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adamw; got 'rmsprop'"):
        build_optimizer(groups, name="rmsprop", lr=1e-3)
    with pytest.raises(ConfigError, match="nesterov needs momentum > 0"):
        build_optimizer(groups, name="sgd", lr=1e-3, momentum=0.0, nesterov=True)
    freeze(m, train="none", head="fc")
    with pytest.raises(FreezeError, match="nothing to train: every parameter is frozen"):
        build_optimizer(param_groups(m, lr=1e-3, head="fc"), name="sgd", lr=1e-3)


def lrs_over(name: str, *, total: int = 20, warmup: int = 0, **kwargs) -> list[list[float]]:
    head = nn.Linear(2, 2)
    trunk = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": trunk.parameters(), "lr": 0.1}, {"params": head.parameters(), "lr": 1.0}], lr=0.1)
    sched = build_scheduler(opt, name=name, total_steps=total, warmup_steps=warmup, **kwargs)
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_keeps_group_ratios(name: str) -> None:
    for trunk, head in lrs_over(name, warmup=4, step_size_steps=5):
        assert head == pytest.approx(10 * trunk)


def test_schedule_shapes() -> None:
    const = [h for _, h in lrs_over("constant", warmup=4)]
    assert const[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0]) and const[-1] == 1.0
    cos = [h for _, h in lrs_over("cosine", warmup=4)]
    assert cos[3] == pytest.approx(1.0) and cos[4] == pytest.approx(1.0)
    assert cos[4 + 8] == pytest.approx(0.5) and 0 < cos[-1] < 0.02
    assert all(a >= b for a, b in zip(cos[3:], cos[4:], strict=False))
    one = [h for _, h in lrs_over("onecycle", total=20)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and one.index(1.0) == 6
    assert one[-1] == pytest.approx(1 / 25e4)
    step = [h for _, h in lrs_over("step", step_size_steps=5, gamma=0.5)]
    assert step[4] == 1.0 and step[5] == 0.5 and step[10] == 0.25 and step[19] == 0.125
    with pytest.raises(ConfigError, match="schedule must be one of constant, cosine, onecycle, step; got 'linear'"):
        lrs_over("linear")


def test_groups_added_later_warm_up_from_when_they_appear() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD(a.parameters(), lr=1.0)
    sched = build_scheduler(opt, name="constant", total_steps=10, unfreeze_warmup_steps=4)
    for _ in range(3):
        opt.step()
        sched.step()
    opt.add_param_group({"params": b.parameters(), "lr": 0.5})
    seen = []
    for _ in range(5):
        sched.step()
        seen.append(opt.param_groups[1]["lr"])
    assert seen == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5])


# ---------------------------------------------------------------------------- staged unfreezing

SCHEDULE = [{"epoch": 0, "train": "head"}, {"epoch": 1, "train": "layer4"}, {"epoch": 2, "train": "all", "warmup_epochs": 0.5}]
STEPS = 4  # per epoch


class Staged:
    """A model, optimizer and scheduler wired as strategies.plan does, stepped by hand."""

    def __init__(self, schedule_name: str) -> None:
        torch.manual_seed(0)
        self.model = TinyResNet()
        self.schedule = UnfreezeSchedule.parse(SCHEDULE)
        plan = freeze(self.model, train="head", head="fc")
        wake = self.schedule.wake_epochs(self.model, head="fc", initial=plan.trainable)
        groups = param_groups(self.model, lr=1e-2, head="fc", weight_decay=0.5, names=wake)
        groups, self.wakes = split_by_epoch(groups, wake, steps_per_epoch=STEPS, schedule=self.schedule)
        self.opt = build_optimizer(groups, name="adamw", lr=1e-2)
        self.sched = build_scheduler(self.opt, name=schedule_name, total_steps=3 * STEPS, warmup_steps=2,
                                     step_size_steps=5, unfreeze_warmup_steps=STEPS, wakes=self.wakes)
        self.gen = torch.Generator().manual_seed(1)

    def begin_epoch(self, epoch: int) -> None:
        woken = []
        for i, (g, w) in enumerate(zip(self.opt.param_groups, self.wakes, strict=True)):
            if w.epoch <= epoch:
                for p in g["params"]:
                    p.requires_grad_(True)
                if not self.sched.is_awake(i):
                    woken.append(i)
        self.sched.wake(woken)

    def step(self) -> None:
        self.model.train()
        x = torch.randn(4, 3, 16, 16, generator=self.gen)
        y = torch.randint(0, 3, (4,), generator=self.gen)
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()


def group_index(opt: torch.optim.Optimizer, name: str) -> int:
    return next(i for i, g in enumerate(opt.param_groups) if g["name"] == name)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_every_scheduler_survives_staged_unfreezing(schedule_name: str) -> None:
    run = Staged(schedule_name)
    groups = run.opt.param_groups
    assert [w.epoch for w in run.wakes] == [2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 0, 0]
    # the unfreezing state lives beside the optimizer, typed, not as keys inside its groups
    assert not any(k in g for g in groups for k in ("unfreeze_epoch", "inert", "unfreeze_warmup_steps"))
    assert [w.warmup_steps for w in run.wakes] == [2] * 8 + [STEPS] * 2 + [0, 0]
    layer4, stem, head = (group_index(run.opt, n) for n in ("layer4", "stem", "head"))
    start = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    for epoch in range(3):
        run.begin_epoch(epoch)
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        for k in range(STEPS):
            t = run.sched.last_epoch
            assert t == epoch * STEPS + k
            f = run.sched.factor(t)
            assert groups[head]["lr"] == pytest.approx(groups[head]["initial_lr"] * f)
            expected4 = 0.0 if epoch < 1 else groups[layer4]["initial_lr"] * f * min(1.0, (t - STEPS + 1) / STEPS)
            assert groups[layer4]["lr"] == pytest.approx(expected4)
            expected0 = 0.0 if epoch < 2 else groups[stem]["initial_lr"] * f * min(1.0, (t - 2 * STEPS + 1) / 2)
            assert groups[stem]["lr"] == pytest.approx(expected0)
            run.step()
        for name, p in run.model.named_parameters():
            wakes = 0 if name.startswith("fc") else 1 if name.startswith("layer4") else 2
            if epoch < wakes:
                assert torch.equal(p, start[name]), f"{name} moved before epoch {wakes}"
                assert p.grad is None and not run.opt.state.get(p), f"{name} has optimizer state while asleep"
            else:
                assert not torch.equal(p, before[name]), f"{name} did not train in epoch {epoch}"


def test_resume_mid_schedule_continues_exactly() -> None:
    full = Staged("cosine")
    for epoch in range(3):
        full.begin_epoch(epoch)
        for _ in range(STEPS):
            full.step()
    part = Staged("cosine")
    for epoch in range(2):
        part.begin_epoch(epoch)
        for _ in range(STEPS if epoch == 0 else 2):
            part.step()
    buf = io.BytesIO()
    torch.save({"model": part.model.state_dict(), "opt": part.opt.state_dict(), "sched": part.sched.state_dict(),
                "rng": part.gen.get_state()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain values only, as checkpoints are read back
    resumed = Staged("cosine")
    resumed.model.load_state_dict(saved["model"])
    resumed.opt.load_state_dict(saved["opt"])
    resumed.sched.load_state_dict(saved["sched"])
    resumed.gen.set_state(saved["rng"])
    resumed.begin_epoch(1)  # layer4 is awake again, without restarting its warmup
    assert resumed.sched.wake_steps == part.sched.wake_steps
    assert [g["lr"] for g in resumed.opt.param_groups] == [g["lr"] for g in part.opt.param_groups]
    for _ in range(2):
        resumed.step()
    resumed.begin_epoch(2)
    for _ in range(STEPS):
        resumed.step()
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in resumed.opt.param_groups] == [g["lr"] for g in full.opt.param_groups]


def test_scheduler_state_is_plain() -> None:
    run = Staged("onecycle")
    state = run.sched.state_dict()
    assert state["wake_steps"][-1] == 0 and state["wake_steps"][0] is None
    assert isinstance(run.sched, GroupScheduler) and state["schedule"] == "onecycle"


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        (5, [(0, ("head",)), (1, ("layer4",)), (2, ("layer3",)), (3, ("layer2",)), (4, ("all",))]),
        (3, [(0, ("head",)), (1, ("layer4",)), (2, ("all",))]),
        (2, [(0, ("head",)), (1, ("all",))]),
        (1, [(0, ("head",))]),
        (12, [(0, ("head",)), (2, ("layer4",)), (4, ("layer3",)), (6, ("layer2",)), (8, ("layer1",)), (10, ("all",))]),
    ],
)
def test_gradual_schedule(epochs: int, expected: list) -> None:
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    got = UnfreezeSchedule.gradual(names, epochs=epochs)
    assert [(s.epoch, s.train) for s in got.steps] == expected


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"epoch": 1, "trian": "layer4"}], r"unfreeze\[0\]: unknown key 'trian'; expected epoch, train, warmup_epochs"),
        ([{"epoch": -1, "train": "layer4"}], r"unfreeze\[0\]: 'epoch' must be an integer >= 0 \(0 = the first epoch\); got -1"),
        ([{"train": "layer4"}], r"'epoch' must be an integer >= 0"),
        ([{"epoch": 2}], r"'train' must name what trains from epoch 2"),
        (["layer4"], r"unfreeze\[0\]: expected a mapping like"),
        ([{"epoch": 2, "train": "layer4", "warmup_epochs": -1}], "'warmup_epochs' must be a number >= 0"),
    ],
)
def test_unfreeze_parse_errors(entries: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UnfreezeSchedule.parse(entries)


def test_unfreeze_spec_matching_nothing_names_the_step() -> None:
    schedule = UnfreezeSchedule.parse([{"epoch": 0, "train": "head"}, {"epoch": 2, "train": "layer9"}])
    with pytest.raises(FreezeError, match=r"unfreeze\[1\]: 'layer9' matches no stage"):
        schedule.wake_epochs(model(), head="fc")
    assert schedule.to_list() == [{"epoch": 0, "train": ["head"]}, {"epoch": 2, "train": ["layer9"]}]
    assert math.isclose(stage_scales(3, discriminative_lr=0.25)[1], 0.5)
