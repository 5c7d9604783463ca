"""Freeze specs, stages, and the BatchNorm policy: frozen means bitwise unchanged."""

from __future__ import annotations

import copy
import io
import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from regraft.errors import FreezeError
from regraft.freezing import FreezePlan, apply_bn_policy, freeze, select, stages
from regraft.optim import build_optimizer, param_groups
from tests.helpers import TinyVGG, tiny_resnet


def tiny_vgg(*, dropout: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return TinyVGG(dropout=dropout)


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3)


def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=3)


def effnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=3)


MODELS = {"resnet18": (resnet18, "fc"), "mobilenet_v3_small": (mobilenet, "classifier.3"), "test_efficientnet": (effnet, "classifier")}
PARTIAL = {"resnet18": {"freeze_to": "layer3"}, "mobilenet_v3_small": {"train": ["features.11", "features.12", "classifier"]},
           "test_efficientnet": {"freeze": ["stem", "blocks.0..blocks.2"]}}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model: nn.Module, head: str, *, steps: int = 2, call_policy: bool = False, size: int = 32) -> None:
    groups = param_groups(model, lr=1e-2, head=head, weight_decay=0.05)
    opt = build_optimizer(groups, name="adamw", lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.train()
        if call_policy:
            apply_bn_policy(model)
        x = torch.randn(4, 3, size, size, generator=gen)
        y = torch.randint(0, 3, (4,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bn_buffers(model: nn.Module, frozen: bool) -> list[str]:
    """Buffer names of BatchNorm layers whose affine parameters are all frozen (or all trainable)."""
    out = []
    for path, m in model.named_modules():
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        if is_bn and (not m.weight.requires_grad) == frozen:
            out += [f"{path}.{b}" for b, _ in m.named_buffers()]
    return out


def assert_frozen_exactly(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    params = dict(model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert frozen and trainable
    for name in frozen:
        assert torch.equal(after[name], before[name]), f"frozen parameter {name} changed"
    for name in trainable:
        assert not torch.equal(after[name], before[name]), f"trainable parameter {name} did not change"
    frozen_buffers = bn_buffers(model, frozen=True)
    assert any(b.endswith("num_batches_tracked") for b in frozen_buffers)
    for name in frozen_buffers:
        assert torch.equal(after[name], before[name]), f"frozen BatchNorm buffer {name} changed"
    for name in bn_buffers(model, frozen=False):
        if name.endswith("running_mean"):
            assert not torch.equal(after[name], before[name]), f"trainable BatchNorm {name} kept its statistics"


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("partial", [False, True], ids=["all-but-head", "partial"])
def test_frozen_parameters_and_bn_buffers_are_bitwise_unchanged(arch: str, partial: bool) -> None:
    build, head = MODELS[arch]
    model = build()
    plan = freeze(model, head=head, **(PARTIAL[arch] if partial else {}))
    assert plan.bn_eval
    before = snapshot(model)
    train_steps(model, head)  # plain model.train(): the hook alone keeps frozen BN in eval
    assert_frozen_exactly(model, before)


def test_explicit_policy_after_train_counts_frozen_bn() -> None:
    model = tiny_resnet()
    freeze(model, freeze_to="layer3", head="fc")
    model.train()
    assert apply_bn_policy(model) == 4  # bn1 and layer1..layer3's; layer4's trains
    assert model.layer4[1].training and not model.layer3[1].training
    before = snapshot(model)
    train_steps(model, "fc", call_policy=True)
    assert_frozen_exactly(model, before)


def test_policy_works_from_requires_grad_alone() -> None:
    model = tiny_resnet()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc"))
    model.train()
    assert apply_bn_policy(model) == 5
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_bn_without_affine_in_frozen_part_is_held() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    freeze(model, head="4")
    before = snapshot(model)
    model.train()
    model(torch.randn(4, 3, 16, 16))
    assert torch.equal(model.state_dict()["1.1.running_mean"], before["1.1.running_mean"])
    freeze(model, train="all", head="4")
    model.train()
    model(torch.randn(4, 3, 16, 16))
    assert not torch.equal(model.state_dict()["1.1.running_mean"], before["1.1.running_mean"])


def test_train_bn_keeps_norms_trainable_and_updating() -> None:
    model = tiny_resnet()
    plan = freeze(model, head="fc", train_bn=True)
    assert plan.train_bn and not plan.bn_eval
    assert model.layer1[1].weight.requires_grad and not model.layer1[0].weight.requires_grad
    before = snapshot(model)
    train_steps(model, "fc")
    after = model.state_dict()
    assert torch.equal(after["layer1.0.weight"], before["layer1.0.weight"])
    assert not torch.equal(after["layer1.1.weight"], before["layer1.1.weight"])
    assert not torch.equal(after["layer1.1.running_mean"], before["layer1.1.running_mean"])


def test_frozen_bn_swaps_torchvision_and_timm_layers() -> None:
    model = tiny_resnet()
    train_steps(model, "fc")  # running statistics away from their initial values
    x = torch.randn(2, 3, 32, 32)
    ref = model.eval()(x)
    plan = freeze(model, head="fc", frozen_bn=True)
    assert len(plan.bn_swapped) == 5 and not plan.bn_eval
    assert isinstance(model.bn1, torchvision.ops.FrozenBatchNorm2d)
    torch.testing.assert_close(model.eval()(x), ref, rtol=1e-4, atol=1e-5)
    eff = effnet().eval()
    ref = eff(x)
    plan = freeze(eff, head="classifier", frozen_bn=True)
    assert type(eff.bn1).__name__ == "FrozenBatchNormAct2d"
    torch.testing.assert_close(eff.eval()(x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(FreezeError, match="train_bn and frozen_bn contradict"):
        freeze(tiny_resnet(), head="fc", train_bn=True, frozen_bn=True)


def test_policy_survives_deepcopy_pickle_script_and_accelerate() -> None:
    from accelerate import Accelerator

    model = tiny_resnet()
    freeze(model, freeze_to="layer2", head="fc")
    x = torch.randn(2, 3, 16, 16)

    def held(m: nn.Module) -> bool:
        before = m.layer1[1].num_batches_tracked.clone()
        m.train()
        m(x)
        return torch.equal(m.layer1[1].num_batches_tracked, before) and m.layer4[1].training

    assert held(copy.deepcopy(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert held(torch.load(buf, weights_only=False))
    scripted = torch.jit.script(copy.deepcopy(model).eval())
    assert scripted(x).shape == (2, 3)
    prepared = Accelerator(cpu=True).prepare(model)
    assert held(prepared)


def test_freeze_to_includes_the_named_stage() -> None:
    model = resnet18()
    plan = freeze(model, freeze_to="layer3", head="fc")
    assert plan.trainable_modules() == ["layer4", "fc"]
    assert not model.layer3[1].conv2.weight.requires_grad and model.layer4[0].conv1.weight.requires_grad
    rows = {r["name"]: r for r in plan.stages}
    assert rows["layer3"]["trainable"] == 0 and rows["layer4"]["frozen"] == 0
    assert plan.n_trainable + plan.n_frozen == sum(p.numel() for p in model.parameters())


def test_default_is_all_but_head_and_plan_serialises() -> None:
    model = resnet18()
    plan = freeze(model, head="fc")
    assert plan.trainable == ["fc.weight", "fc.bias"] and plan.n_trainable == 512 * 3 + 3
    assert isinstance(plan, FreezePlan)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["trainable_modules"] == ["fc"] and data["n_trainable"] == 1539
    assert "training 1,539 of" in plan.summary()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", []),
        ("head", ["fc"]),
        (["layer4.*.bn*", "head"], ["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2", "fc"]),
        ("layer2..layer3", ["layer2", "layer3"]),
        ("layer4.1, fc.bias", ["layer4.1", "fc.bias"]),
        (["stem", "*.conv1.weight"], ["conv1", "bn1", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1",
                                      "layer3.0.conv1", "layer3.1.conv1", "layer4.0.conv1", "layer4.1.conv1"]),
    ],
)
def test_train_specs(spec, expected: list[str]) -> None:
    model = resnet18()
    plan = freeze(model, train=spec, head="fc")
    assert plan.trainable_modules() == expected


def test_select_keywords() -> None:
    model = resnet18()
    everything = [n for n, _ in model.named_parameters()]
    assert select(model, "all", head="fc") == everything
    assert select(model, "all-but-head", head="fc") == everything[:-2]
    assert select(model, ["layer4", "layer4.0"], head="fc") == [n for n in everything if n.startswith("layer4")]


def test_vgg_aliases_stages_and_partial_spec() -> None:
    model = tiny_vgg()
    assert stages(model, head="classifier.6") == [
        ("block1", ["features.0"]), ("block2", ["features.3", "features.5"]),
        ("fc1", ["classifier.0"]), ("fc2", ["classifier.3"]),
    ]
    plan = freeze(model, train=["fc1", "fc2", "head"], head="classifier.6")
    assert plan.trainable_modules() == ["classifier"]  # the whole MLP: fc1, fc2 and the head
    assert not model.features[0].weight.requires_grad
    no_dropout = tiny_vgg(dropout=False)  # the tutorial deletes a dropout: indices move, names follow
    plan = freeze(no_dropout, train=["fc2"], head="classifier.4")
    assert plan.trainable_modules() == ["classifier.2"]


def test_torchvision_vgg11_stage_names() -> None:
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None, num_classes=3)
    names = [n for n, _ in stages(model, head="classifier.6")]
    assert names == ["block1", "block2", "block3", "block4", "block5", "fc1", "fc2"]
    assert select(model, "fc1", head="classifier.6") == ["classifier.0.weight", "classifier.0.bias"]


def _check_partition(model: nn.Module, head: str) -> list[str]:
    found = stages(model, head=head)
    owner: dict[str, str] = {}
    for name, entries in found:
        for pname, _ in model.named_parameters():
            if any(pname == e or pname.startswith(e + ".") for e in entries):
                assert pname not in owner, f"{pname} in {owner.get(pname)} and {name}"
                owner[pname] = name
    rest = [n for n, _ in model.named_parameters() if n not in owner]
    assert rest and all(n == head or n.startswith(head + ".") for n in rest)
    return [n for n, _ in found]


@pytest.mark.parametrize(
    ("builder", "head", "expected"),
    [
        (lambda: torchvision.models.resnet18(num_classes=3), "fc", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        (lambda: torchvision.models.mobilenet_v3_small(num_classes=3), "classifier.3", [f"features.{i}" for i in range(13)] + ["classifier.0"]),
        (lambda: torchvision.models.convnext_tiny(num_classes=3), "classifier.2", ["stem", "stage1", "stage2", "stage3", "stage4", "classifier.0"]),
        (lambda: torchvision.models.swin_t(num_classes=3), "head", ["stem", "stage1", "stage2", "stage3", "stage4", "norm"]),
        (lambda: torchvision.models.densenet121(num_classes=3), "classifier", ["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4"]),
        (lambda: torchvision.models.vit_b_16(num_classes=3), "heads.head", ["stem"] + [f"encoder_layer_{i}" for i in range(12)] + ["encoder.ln"]),
        (lambda: timm.create_model("test_vit", num_classes=3), "head", ["stem"] + [f"blocks.{i}" for i in range(6)]),
        (lambda: timm.create_model("test_convnext", num_classes=3), "head.fc", ["stem"] + [f"stages.{i}" for i in range(4)] + ["head.norm"]),
        (lambda: timm.create_model("test_resnet", num_classes=3), "fc", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)), "3", ["0", "1"]),
    ],
    ids=["resnet", "mobilenet_v3", "convnext", "swin", "densenet", "vit", "timm_vit", "timm_convnext", "timm_resnet", "sequential"],
)
def test_stages_partition_the_trunk(builder, head: str, expected: list[str]) -> None:
    with torch.device("meta"):
        model = builder()
    assert _check_partition(model, head) == expected


def test_regnet_stages() -> None:
    model = torchvision.models.regnet_x_400mf(num_classes=3)
    assert _check_partition(model, "fc") == ["stem", "block1", "block2", "block3", "block4"]


def test_head_found_without_being_told() -> None:
    model = resnet18()
    plan = freeze(model)
    assert plan.head == "fc" and plan.trainable_modules() == ["fc"]


def test_errors_name_the_value_and_the_fix() -> None:
    model = resnet18()
    with pytest.raises(FreezeError, match=r"'layer5' matches no stage, module or parameter; did you mean layer4"):
        freeze(model, train=["layer5"], head="fc")
    with pytest.raises(FreezeError, match=r"'lyr4\.\*' matches no stage.*layer4"):
        freeze(model, freeze=["lyr4.*"], head="fc")
    with pytest.raises(FreezeError, match=r"freeze_to: 'layer9' is not a stage of this model; .*valid stages: stem, layer1, layer2, layer3, layer4"):
        freeze(model, freeze_to="layer9", head="fc")
    with pytest.raises(FreezeError, match="give 'train' or 'freeze'/'freeze_to', not both"):
        freeze(model, train="head", freeze_to="layer3", head="fc")
    with pytest.raises(FreezeError, match=r"head 'fcc' is not a module of this model \(close: fc"):
        freeze(model, head="fcc")
    with pytest.raises(FreezeError, match="spec entries must be strings"):
        freeze(model, train=[3], head="fc")
    headless = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(FreezeError, match="cannot tell which module is the head"):
        freeze(headless)


def test_hold_bn_statistics_keeps_stats_but_trains_affine():
    import torchvision

    from regraft.freezing import apply_bn_policy, hold_bn_statistics

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    assert hold_bn_statistics(model) == 20
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    weight = model.bn1.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    apply_bn_policy(model)
    for _ in range(2):
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not torch.equal(model.bn1.weight, weight)
