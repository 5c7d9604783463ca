"""Named strategies: the trainable set, group LRs, staged unfreezing and the tutorials' recipes."""

from __future__ import annotations

import io
import json
import tempfile

import pytest
import timm
import torch
import torchvision
from torch import nn

from regraft.config import Config
from regraft.errors import ConfigError, FreezeError
from regraft.strategies import (
    DEFAULT_LR,
    STRATEGIES,
    TrainPlan,
    decide,
    default_lr,
    format_audit,
    plan,
)
from tests.helpers import TinyResNet, TinyVGG, fit_stage


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3)


def trainable(p: TrainPlan) -> list[str]:
    return p.freeze_plan.trainable_modules()


def lrs(p: TrainPlan) -> dict[str, float]:
    return {g["name"]: g["base_lr"] for g in p.optimizer.param_groups}


ALL_RESNET = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]


@pytest.mark.parametrize(
    ("strategy", "expected", "trunk_lr", "head_lr"),
    [
        ("scratch", ALL_RESNET, 1e-3, 1e-3),
        ("head", ["fc"], None, 1e-3),
        ("partial", ["layer4", "fc"], 1e-4, 1e-3),
        ("full", ALL_RESNET, 1e-4, 1e-3),
        ("lp-ft", ALL_RESNET, 1e-5, 1e-4),
        ("gradual", ["fc"], 1e-4, 1e-3),
    ],
)
def test_each_strategy_on_resnet18(strategy: str, expected: list[str], trunk_lr: float | None, head_lr: float) -> None:
    p = plan(resnet18(), strategy=strategy, cfg=Config(epochs=4), steps_per_epoch=3, head="fc")
    assert trainable(p) == expected
    got = lrs(p)
    assert got["head"] == pytest.approx(head_lr) and got["head/no_decay"] == pytest.approx(head_lr)
    if trunk_lr is not None:
        assert got["layer4"] == pytest.approx(trunk_lr)
    assert p.strategy.value == strategy
    assert p.head == "fc" and p.optimizer.param_groups[0]["weight_decay"] == 0.05
    audit = p.audit()
    assert sum(r["trainable_params"] + r["frozen_params"] for r in audit) == sum(t.numel() for t in p.model.parameters())
    assert sum(r["trainable_params"] for r in audit) == p.freeze_plan.n_trainable


def test_lp_ft_is_discriminative_and_gradual_keeps_later_stages_inert() -> None:
    p = plan(resnet18(), strategy="lp-ft", cfg=Config(), steps_per_epoch=2, head="fc")
    got = lrs(p)
    assert got["stem"] == pytest.approx(1e-6) and got["layer4"] == pytest.approx(1e-5)
    g = plan(resnet18(), strategy="gradual", cfg=Config(epochs=5), steps_per_epoch=2, head="fc")
    assert g.unfreeze.to_list()[-1] == {"epoch": 4, "train": ["all"]}
    rows = {r["group"]: r for r in g.audit()}
    assert rows["layer4"]["unfreeze_epoch"] == 1 and rows["layer4"]["trainable_params"] == 0 and rows["layer4"]["lr_now"] == 0.0
    assert rows["stem"]["unfreeze_epoch"] == 4 and rows["head"]["unfreeze_epoch"] == 0


def test_gradual_wakes_a_final_norm_with_the_stage_before_it() -> None:
    with torch.device("meta"):
        model = timm.create_model("test_convnext", num_classes=3)
    p = plan(model, strategy="gradual", cfg=Config(epochs=4), steps_per_epoch=2, head="head.fc")
    assert p.unfreeze.to_list() == [{"epoch": 0, "train": ["head"]}, {"epoch": 1, "train": ["stages.3", "head.norm"]},
                                    {"epoch": 2, "train": ["stages.2"]}, {"epoch": 3, "train": ["all"]}]


def test_sgd_defaults_are_ten_times_adamw_and_weight_decay_follows_optimizer() -> None:
    assert default_lr("full", "sgd") == pytest.approx(10 * DEFAULT_LR["full"])
    p = plan(resnet18(), strategy="full", cfg=Config(optimizer="sgd"), steps_per_epoch=2, head="fc")
    assert isinstance(p.optimizer, torch.optim.SGD)
    assert lrs(p)["layer4"] == pytest.approx(1e-3) and lrs(p)["head"] == pytest.approx(1e-2)
    assert p.optimizer.param_groups[0]["weight_decay"] == 1e-4 and p.optimizer.param_groups[0]["momentum"] == 0.9


def test_each_strategy_on_a_vgg() -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return TinyVGG(blocks=3)

    head = "classifier.6"
    expected = {
        "scratch": ["features", "classifier"],
        "head": ["classifier.6"],
        "partial": ["classifier"],  # fc1 + fc2 + head: the tutorial's VGG recipe
        "full": ["features", "classifier"],
        "lp-ft": ["features", "classifier"],
        "gradual": ["classifier.6"],
    }
    for strategy, modules in expected.items():
        p = plan(build(), strategy=strategy, cfg=Config(epochs=4), steps_per_epoch=2, head=head)
        assert trainable(p) == modules, strategy
    p = plan(build(), strategy="partial", cfg=Config(partial_stages=2), steps_per_epoch=2, head=head)
    assert trainable(p) == ["features.8", "features.10", "classifier"]


def test_torchvision_vgg11_partial_trains_fc1_fc2_and_head() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None, num_classes=3)
    p = plan(model, strategy="partial", cfg=Config(lr=1e-4, optimizer="sgd"), steps_per_epoch=2, head="classifier.6")
    assert trainable(p) == ["classifier"]
    assert {g["stage"] for g in p.optimizer.param_groups} == {"fc1", "fc2", "head"}
    assert lrs(p)["fc1"] == pytest.approx(1e-4) and lrs(p)["head"] == pytest.approx(1e-3)


# ---------------------------------------------------------------------------- the tutorials' recipes


def test_recipe_vgg_fc1_fc2_and_new_layer_at_higher_lr() -> None:
    torch.manual_seed(0)
    model = TinyVGG(blocks=3)
    p = plan(model, strategy="partial", cfg=Config(lr=1e-4, optimizer="sgd"), steps_per_epoch=2, head="classifier.6")
    names = [n for g in p.optimizer.param_groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.classifier.named_parameters(prefix="classifier"))
    assert all(q.requires_grad for g in p.optimizer.param_groups for q in g["params"])  # no frozen parameter in the optimizer
    assert {g["stage"]: g["lr"] for g in p.optimizer.param_groups} == pytest.approx({"fc1": 1e-4, "fc2": 1e-4, "head": 1e-3})


def test_recipe_features_frozen_sgd_on_classifier() -> None:
    torch.manual_seed(0)
    model = TinyVGG(blocks=3)
    cfg = Config(strategy="head", freeze=["features"], optimizer="sgd", lr=0.001, momentum=0.9, weight_decay=0.0)
    p = plan(model, strategy="head", cfg=cfg, steps_per_epoch=2, head="classifier.6")
    assert trainable(p) == ["classifier"]
    assert all(g["lr"] == pytest.approx(0.001) and g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in p.optimizer.param_groups)
    assert all(not q.requires_grad for q in model.features.parameters())


def test_recipe_head_at_ten_times_lr_sgd_with_weight_decay() -> None:
    cfg = Config(strategy="full", optimizer="sgd", lr=5e-5, weight_decay=1e-3, schedule="constant")
    p = plan(resnet18(), strategy="full", cfg=cfg, steps_per_epoch=2, head="fc")
    got = {g["name"]: (g["lr"], g["weight_decay"]) for g in p.optimizer.param_groups}
    assert got["layer1"] == pytest.approx((5e-5, 1e-3)) and got["head"] == pytest.approx((5e-4, 1e-3))
    assert got["head/no_decay"] == pytest.approx((5e-4, 0.0))
    scratch = plan(resnet18(), strategy="scratch", cfg=Config(optimizer="sgd", lr=5e-4, schedule="constant"), steps_per_epoch=2, head="fc")
    assert {g["lr"] for g in scratch.optimizer.param_groups} == {5e-4}


# ---------------------------------------------------------------------------- overrides and staged unfreezing


def test_explicit_freeze_settings_override_the_strategy() -> None:
    p = plan(resnet18(), strategy="full", cfg=Config(freeze_to="layer2"), steps_per_epoch=2, head="fc")
    assert trainable(p) == ["layer3", "layer4", "fc"]
    p = plan(resnet18(), strategy="head", cfg=Config(train=["layer4", "head"]), steps_per_epoch=2, head="fc")
    assert trainable(p) == ["layer4", "fc"] and lrs(p)["layer4"] == lrs(p)["head"]
    with pytest.raises(FreezeError, match="'layer9' is not a stage"):
        plan(resnet18(), strategy="full", cfg=Config(freeze_to="layer9"), steps_per_epoch=2, head="fc")


def test_frozen_bn_swaps_only_batchnorm_that_never_trains() -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    p = plan(model, strategy="full", cfg=Config(freeze_to="layer2", frozen_bn=True), steps_per_epoch=2, head="fc")
    assert p.freeze_plan.bn_swapped == ["bn1", "layer1.1", "layer2.1"]
    assert isinstance(model.layer2[1], torchvision.ops.FrozenBatchNorm2d) and isinstance(model.layer3[1], nn.BatchNorm2d)
    assert trainable(p) == ["layer3", "layer4", "fc"]


def run_epoch(model: nn.Module, p: TrainPlan, gen: torch.Generator) -> None:
    for _ in range(p.steps_per_epoch):
        model.train()
        x = torch.randn(4, 3, 16, 16, generator=gen)
        y = torch.randint(0, 3, (4,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
        p.scheduler.step()


UNFREEZE = [{"epoch": 0, "train": "head"}, {"epoch": 1, "train": "layer4"}, {"epoch": 2, "train": "all"}]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle", "step"])
def test_unfreeze_recipe_runs_with_each_schedule(schedule: str) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    cfg = Config(strategy="full", unfreeze=UNFREEZE, epochs=3, schedule=schedule, step_size=1, frozen_bn=True)
    p = plan(model, strategy="full", cfg=cfg, steps_per_epoch=3, head="fc")
    assert trainable(p) == ["fc"]
    assert p.freeze_plan.bn_swapped == []  # every BatchNorm trains at some point: none is swapped
    start = {n: t.detach().clone() for n, t in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    messages = []
    for epoch in range(3):
        messages += p.begin_epoch(epoch)
        before = {n: t.detach().clone() for n, t in model.named_parameters()}
        run_epoch(model, p, gen)
        for name, t in model.named_parameters():
            wakes = 0 if name.startswith("fc") else 1 if name.startswith("layer4") else 2
            if epoch < wakes:
                assert torch.equal(t, start[name]) and not t.requires_grad, name
            else:
                assert not torch.equal(t, before[name]), name
    assert messages[0].startswith("epoch 2: unfreezing layer4 (")
    assert messages[1].startswith("epoch 3: unfreezing stem, layer1, layer2, layer3 (")
    assert "warms up over 3 steps" in messages[0]


def test_plan_state_round_trip_restores_what_trains() -> None:
    torch.manual_seed(0)
    cfg = Config(unfreeze=UNFREEZE, epochs=3)
    model = TinyResNet()
    p = plan(model, strategy="gradual", cfg=cfg, steps_per_epoch=2, head="fc")
    gen = torch.Generator().manual_seed(0)
    for epoch in range(2):
        p.begin_epoch(epoch)
        run_epoch(model, p, gen)
    buf = io.BytesIO()
    torch.save({"plan": p.state_dict(), "opt": p.optimizer.state_dict(), "sched": p.scheduler.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert saved["plan"]["epoch"] == 1 and "layer4" in saved["plan"]["awake"]
    torch.manual_seed(0)
    fresh_model = TinyResNet()
    fresh_model.load_state_dict(model.state_dict())
    fresh = plan(fresh_model, strategy="gradual", cfg=cfg, steps_per_epoch=2, head="fc")
    assert not fresh_model.layer4[0].weight.requires_grad
    fresh.load_state_dict(saved["plan"])
    fresh.optimizer.load_state_dict(saved["opt"])
    fresh.scheduler.load_state_dict(saved["sched"])
    assert fresh_model.layer4[0].weight.requires_grad and not fresh_model.layer1[0].weight.requires_grad
    assert fresh.begin_epoch(1) == []  # nothing new wakes on resume
    assert fresh.audit() == p.audit()


def test_audit_table_and_json() -> None:
    p = plan(resnet18(), strategy="partial", cfg=Config(), steps_per_epoch=2, head="fc")
    rows = p.audit()
    assert [r["group"] for r in rows] == ["stem", "layer1", "layer2", "layer3", "layer4", "layer4/no_decay", "head", "head/no_decay"]
    assert rows[0] == {"group": "stem", "stage": "stem", "trainable_params": 0, "frozen_params": 9536, "lr": None,
                       "lr_now": None, "weight_decay": 0.0, "unfreeze_epoch": None}
    json.dumps(rows)
    table = format_audit(rows)
    assert table.splitlines()[0].split() == ["group", "trainable", "frozen", "lr", "wd", "from", "epoch"]
    assert "8,388,608" in p.describe()


def test_timm_model_partial() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    p = plan(model, strategy="partial", cfg=Config(), steps_per_epoch=2, head="classifier")
    assert trainable(p) == ["blocks.4", "conv_head", "bn2", "classifier"]


def test_strategy_errors() -> None:
    with pytest.raises(ConfigError, match=r"needs a concrete strategy; resolve 'auto' first with regraft.strategies.decide"):
        plan(resnet18(), strategy="auto", cfg=Config(), steps_per_epoch=2, head="fc")
    with pytest.raises(ConfigError, match=r"strategy must be one of auto, scratch, probe, .*; got 'fancy'"):
        plan(resnet18(), strategy="fancy", cfg=Config(), steps_per_epoch=2, head="fc")
    with pytest.raises(FreezeError, match="nothing to train"):
        plan(resnet18(), strategy="full", cfg=Config(freeze=["all"]), steps_per_epoch=2, head="fc")
    with pytest.raises(FreezeError, match=r"unfreeze\[1\]: 'layer9' matches no stage"):
        plan(resnet18(), strategy="full", cfg=Config(unfreeze=[{"epoch": 0, "train": "head"}, {"epoch": 1, "train": "layer9"}]),
             steps_per_epoch=2, head="fc")


# ---------------------------------------------------------------------------- with the training loop

def loaders() -> tuple:
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x, y), batch_size=8)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "probe"])
def test_each_strategy_trains_in_the_loop_with_frozen_parts_bitwise_fixed(strategy: str) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    train, val = loaders()
    p = plan(model, strategy=strategy, cfg=Config(epochs=2, lr=1e-2), steps_per_epoch=len(train), head="fc")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fit_stage(model, p, train, val, epochs=2)
    end = model.state_dict()
    trains = {"head": ("fc",), "partial": ("layer4", "fc")}.get(strategy)
    if strategy == "gradual":  # two epochs: the head, then everything (the last step is 'all')
        assert [s.train for s in p.unfreeze.steps] == [("head",), ("all",)]
        trains = None
    for key, value in end.items():
        if trains is not None and not key.startswith(trains):
            assert torch.equal(value, start[key]), f"{strategy}: frozen {key} changed"
        elif key.endswith(("weight", "running_mean")):
            assert not torch.equal(value, start[key]), f"{strategy}: {key} did not train"


def test_checkpoint_restores_the_plan() -> None:
    from regraft.runs import RunDir, load_checkpoint
    from regraft.training import checkpoint as ckpt

    def fresh():
        torch.manual_seed(0)
        m = TinyResNet()
        p = plan(m, strategy="full", cfg=Config(epochs=3, unfreeze=UNFREEZE), steps_per_epoch=4, head="fc")
        return m, p

    train, val = loaders()
    model, p = fresh()
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.prepare(f"{tmp}/run", overwrite=True, resume=False)
        fit_stage(model, p, train, val, epochs=2, run=run)
        checkpoint = load_checkpoint(run.checkpoint)
    assert checkpoint["plan"]["awake"] == ["layer4", "layer4/no_decay", "head", "head/no_decay"]
    model2, p2 = fresh()
    ckpt.restore(checkpoint, model=model2, optimizer=p2.optimizer, scheduler=p2.scheduler, plan=p2)
    assert [q.requires_grad for q in model2.parameters()] == [q.requires_grad for q in model.parameters()]
    assert [g["lr"] for g in p2.optimizer.param_groups] == [g["lr"] for g in p.optimizer.param_groups]
    assert p2.audit() == p.audit()


# ---------------------------------------------------------------------------- decisions, made once


def test_decide_types_every_strategy_dependent_choice() -> None:
    from regraft.strategies import Strategy

    auto = decide(Config(), pretrained=True)
    assert (auto.strategy, auto.auto, auto.probe_first, auto.hold_bn_stats) == (Strategy.LP_FT, True, True, True)
    assert auto.stop_behind_probe and auto.wise_ft and auto.lr_find_as is Strategy.FULL and auto.cache_reason
    scratch = decide(Config(), pretrained=False)
    assert scratch.strategy is Strategy.SCRATCH and not scratch.loads_weights and not scratch.probe_first
    explicit = decide(Config(strategy="lp-ft"), pretrained=True)
    assert explicit.probe_first and not explicit.stop_behind_probe and not explicit.wise_ft  # keeps its meaning
    head = decide(Config(strategy="head"), pretrained=True)
    assert head.cache_reason == "" and not head.hold_bn_stats
    assert decide(Config(strategy="head", mixup=0.2), pretrained=True).cache_reason.startswith("mixup")
    probe = decide(Config(strategy="probe"), pretrained=True)
    assert probe.probe_first and not probe.fine_tunes and probe.lr_find_as is Strategy.HEAD
    assert decide(Config(strategy="lp-ft", bn_eval=False), pretrained=True).hold_bn_stats is False
    with pytest.raises(ConfigError, match="strategy probe fits a probe on pretrained features, but --weights is none"):
        decide(Config(strategy="probe"), pretrained=False)


def test_validation_regime_cross_validates_only_small_data_without_a_split() -> None:
    from regraft.strategies import validation_regime

    auto = decide(Config(), pretrained=True)
    assert validation_regime(auto, has_val_split=False, class_counts=[20, 25, 30]) == "cv5"
    assert validation_regime(auto, has_val_split=True, class_counts=[20, 25, 30]) == "holdout"
    assert validation_regime(auto, has_val_split=False, class_counts=[200, 300]) == "holdout"
    explicit = decide(Config(strategy="lp-ft"), pretrained=True)
    assert validation_regime(explicit, has_val_split=False, class_counts=[20, 20]) == "holdout"


def test_after_probe_explains_each_choice() -> None:
    from regraft.strategies import Evidence, after_probe

    auto = decide(Config(), pretrained=True)
    cv = after_probe(auto, Evidence(validation="cv5", probe_acc=0.94, probe_loss=0.2, probe_acc_std=0.02, class_counts=[20] * 4))
    assert cv.action == "probe" and cv.reason.startswith("probe 0.940 ± 0.020 (5-fold); fine-tuning skipped: the data have no validation split")
    done = after_probe(auto, Evidence(validation="holdout", probe_acc=1.0, probe_loss=0.01, class_counts=[40] * 3))
    assert done.action == "probe" and done.reason.endswith("fine-tuning skipped: nothing left to gain")
    go = after_probe(auto, Evidence(validation="holdout", probe_acc=0.8, probe_loss=0.5, class_counts=[40] * 3, epochs=5))
    assert (go.action, go.epochs) == ("lp-ft", 5) and "while it beats the probe" in go.reason
    weak = after_probe(auto, Evidence(validation="holdout", probe_acc=0.4, probe_loss=1.5, class_counts=[300] * 3))
    assert weak.action == "full" and "BatchNorm statistics adapting" in weak.reason
    broke = after_probe(auto, Evidence(validation="holdout", probe_acc=0.8, probe_loss=0.5, class_counts=[40] * 3,
                                       seconds_so_far=50, seconds_per_epoch=30, time_budget=60))
    assert broke.action == "probe" and "over" not in broke.reason and "10 s of --time-budget are left" in broke.reason
    some = after_probe(auto, Evidence(validation="holdout", probe_acc=0.8, probe_loss=0.5, class_counts=[40] * 3,
                                      seconds_so_far=10, seconds_per_epoch=20, time_budget=75, epochs=5))
    assert (some.action, some.epochs) == ("lp-ft", 3) and "(3 epochs fit the --time-budget)" in some.reason
    explicit = after_probe(decide(Config(strategy="lp-ft"), pretrained=True),
                           Evidence(validation="holdout", probe_acc=1.0, probe_loss=0.01, class_counts=[40] * 3))
    assert explicit.action == "lp-ft"  # explicit strategies keep their meaning


def test_lr_groups_give_parts_of_the_model_their_own_lr() -> None:
    model = resnet18()
    cfg = Config(lr=1e-3, lr_groups={"layer3": 1e-4, "layer4.1": 5e-4, "head": 1e-2})
    p = plan(model, strategy="full", cfg=cfg, steps_per_epoch=2, head="fc")
    got = lrs(p)
    assert got["layer3"] == got["layer3/no_decay"] == pytest.approx(1e-4)
    assert got["layer4[layer4.1]"] == pytest.approx(5e-4) and got["layer4"] == pytest.approx(1e-3)
    assert got["head"] == pytest.approx(1e-2) and got["layer2"] == pytest.approx(1e-3)
    names = {n for g in p.optimizer.param_groups if g["name"].startswith("layer4[") for n in g["param_names"]}
    assert names and all(n.startswith("layer4.1.") for n in names)
    assert sum(len(g["params"]) for g in p.optimizer.param_groups) == len(list(model.parameters()))  # each once
    with pytest.raises(FreezeError, match=r"lr_groups\['neck'\]"):
        plan(resnet18(), strategy="full", cfg=Config(lr_groups={"neck": 1e-3}), steps_per_epoch=2, head="fc")
    with pytest.raises(ConfigError, match=r"lr_groups\['layer3'\] must be a positive learning rate"):
        Config.from_dict({"lr_groups": {"layer3": 0}})
