"""Surgery: paths, heads across families, ops through the API and recipes, validation, extraction, diffs."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import pytest
import torch
import yaml
from torch import nn

from regraft import surgery, zoo
from regraft.errors import ShapeError, SurgeryError

SMALL = (3, 32, 32)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Batches of 2 gain nothing from threads, and on a shared CPU the OpenMP spin-waits cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _cheap_init() -> Iterator[None]:
    """Skip the random init of big layers while building (VGG's 138M parameters take seconds)."""
    names = ("normal_", "kaiming_normal_", "kaiming_uniform_", "uniform_", "trunc_normal_", "xavier_uniform_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda t, *a, **k: t.detach().zero_().add_(0.01) if t.numel() else t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def build(name: str, **kwargs) -> nn.Module:
    with _cheap_init():
        return zoo.build(name, **kwargs)


# --------------------------------------------------------------------------- paths and aliases


def test_paths_accept_dots_brackets_negative_indices_and_aliases():
    m = build("vgg16")
    assert surgery.get(m, "classifier.6") is m.classifier[6]
    assert surgery.get(m, "classifier[6]") is m.classifier[6]
    assert surgery.get(m, "classifier[-1]") is m.classifier[6]
    assert surgery.get(m, "features[0]") is m.features[0]
    assert surgery.get(m, "") is m
    assert surgery.resolve_path(m, "classifier[-1]") == "classifier.6"
    assert surgery.aliases(m) == {"fc1": "classifier.0", "fc2": "classifier.3", "fc3": "classifier.6", "head": "classifier.6"}
    assert surgery.get(m, "fc1") is m.classifier[0] and surgery.get(m, "fc2") is m.classifier[3]


def test_unknown_path_names_the_children_and_a_close_match():
    m = build("resnet18")
    with pytest.raises(SurgeryError, match=r"no module 'layr4\.1' in ResNet: 'layr4' is not a child of the model .*did you mean 'layer4'"):
        surgery.get(m, "layr4.1")
    with pytest.raises(SurgeryError, match=r"'7' is not a child of 'layer4' \(children: 0, 1\)"):
        surgery.get(m, "layer4.7")
    with pytest.raises(SurgeryError, match="empty component"):
        surgery.get(m, "layer4..1")


def test_real_children_win_over_aliases():
    m = zoo.build("timm:test_convnext")
    assert surgery.find_head(m) == "head.fc"
    assert type(surgery.get(m, "head")).__name__ == "NormMlpClassifierHead"  # the module, not the alias


# --------------------------------------------------------------------------- heads across families

FAMILIES = [
    # (name, build kwargs, expected head, input size for the dry pass)
    ("vgg11", {}, "classifier.6", SMALL),
    ("resnet18", {}, "fc", SMALL),
    ("resnext50_32x4d", {}, "fc", SMALL),
    ("wide_resnet50_2", {}, "fc", SMALL),
    ("mobilenet_v2", {}, "classifier.1", SMALL),
    ("mobilenet_v3_small", {}, "classifier.3", SMALL),
    ("efficientnet_b0", {}, "classifier.1", SMALL),
    ("efficientnet_v2_s", {}, "classifier.1", SMALL),
    ("densenet121", {}, "classifier", SMALL),
    ("convnext_tiny", {}, "classifier.2", SMALL),
    ("regnet_x_400mf", {}, "fc", SMALL),
    ("vit_b_16", {"image_size": 32}, "heads.head", SMALL),
    ("swin_t", {}, "head", SMALL),
    ("maxvit_t", {}, "classifier.5", (3, 224, 224)),
    ("squeezenet1_1", {}, "classifier.1", (3, 64, 64)),
    ("timm:test_resnet", {}, "fc", (3, 64, 64)),
    ("timm:test_efficientnet", {}, "classifier", (3, 64, 64)),
    ("timm:test_convnext", {}, "head.fc", (3, 64, 64)),
    ("timm:test_byobnet", {}, "head.fc", (3, 64, 64)),
    ("timm:test_vit", {}, "head", (3, 160, 160)),
    ("timm:test_maxvit", {}, "head.fc", (3, 160, 160)),
]


@pytest.mark.parametrize(("name", "kwargs", "head", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_find_head_and_replace_head_across_families(name, kwargs, head, size):
    m = build(name, **kwargs)
    assert surgery.find_head(m) == head
    assert surgery.replace_head(m, 5) == head
    assert surgery.validate(m, input_size=size) == (2, 5)
    assert surgery.find_head(m) == head


def test_timm_head_comes_from_the_pretrained_config_even_for_a_renamed_class():
    m = zoo.build("timm:test_efficientnet")
    assert m.pretrained_cfg["classifier"] == "classifier"
    del m.regraft_ref  # a timm model built outside regraft
    assert surgery.find_head(m) == "classifier"
    surgery.replace_head(m, 3)
    assert m.num_classes == 3 and m.get_classifier().out_features == 3


def test_user_model_head_is_the_last_linear_in_forward_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(8, 3)  # registered first, runs last
            self.conv = nn.Conv2d(3, 8, 3)
            self.mid = nn.Linear(8, 8)

        def forward(self, x):
            return self.out(self.mid(self.conv(x).mean((2, 3))))

    net = Net()
    assert surgery.find_head(net, input_size=(3, 16, 16)) == "out"
    assert surgery.replace_head(net, 4, hidden=[6]) == "out"
    assert surgery.find_head(net) == "out"  # the new head is found whole, not as out.2
    assert surgery.validate(net, input_size=(3, 16, 16)) == (2, 4)
    with pytest.raises(SurgeryError, match="found no classifier in Sequential: it has no nn.Linear layer; name it with head="):
        surgery.find_head(nn.Sequential(nn.Conv2d(3, 4, 1)))


# --------------------------------------------------------------------------- replace_head


def test_replace_head_with_hidden_layers_dropout_and_init():
    m = build("resnet18")
    surgery.replace_head(m, 10, hidden=[256], dropout=0.3, init="xavier_uniform")
    kinds = [type(x).__name__ for x in m.fc]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (m.fc[0].in_features, m.fc[0].out_features, m.fc[3].out_features) == (512, 256, 10)
    assert m.fc[2].p == 0.3
    assert all(torch.all(layer.bias == 0) for layer in (m.fc[0], m.fc[3]))
    assert surgery.validate(m, input_size=SMALL) == (2, 10)


@pytest.mark.parametrize("init", ["zeros", "kaiming_normal", "default"])
def test_replace_head_inits(init):
    m = zoo.build("timm:test_resnet")
    surgery.replace_head(m, 4, init=init)
    w, b = m.fc.weight, m.fc.bias
    assert (torch.count_nonzero(w) == 0) == (init == "zeros")
    if init != "default":
        assert torch.count_nonzero(b) == 0


def test_replace_head_rejects_bad_arguments():
    m = zoo.build("timm:test_resnet")
    with pytest.raises(SurgeryError, match="unknown head init 'he'; use one of default, xavier_uniform, kaiming_normal, zeros"):
        surgery.replace_head(m, 4, init="he")
    with pytest.raises(SurgeryError, match="num_classes must be a positive integer; got 0"):
        surgery.replace_head(m, 0)
    with pytest.raises(SurgeryError, match=r"dropout must be in \[0, 1\); got 1.5"):
        surgery.replace_head(m, 4, dropout=1.5)
    with pytest.raises(SurgeryError, match="hidden must be a list of positive layer widths"):
        surgery.replace_head(m, 4, hidden=[0])


def test_replace_head_keeps_a_matching_head_and_follows_device_and_dtype():
    m = zoo.build("timm:test_resnet", num_classes=4)
    head = m.fc
    surgery.replace_head(m, 4)
    assert m.fc is head
    m = zoo.build("timm:test_resnet").double()
    surgery.replace_head(m, 7, hidden=[8])
    assert surgery.insert_after(m, "fc.0", {"type": "LayerNorm"}, input_size=(3, 32, 32)) == "fc.1"
    assert m.fc[1].normalized_shape == (8,)
    assert {p.dtype for p in m.parameters()} == {torch.float64}  # built modules follow the model's dtype/device
    assert surgery.validate(m, input_size=(3, 32, 32)) == (2, 7)


def test_replace_head_on_a_conv_classifier_keeps_it_convolutional():
    m = build("squeezenet1_1")
    surgery.replace_head(m, 6, hidden=[32])
    assert isinstance(m.classifier[1][0], nn.Conv2d) and m.classifier[1][0].kernel_size == (1, 1)
    assert surgery.validate(m, input_size=(3, 64, 64)) == (2, 6)


# --------------------------------------------------------------------------- the tutorial operations

VGG_RECIPE = """
surgery:
  - {op: replace_head, num_classes: 10}
  - op: insert_after
    path: classifier.6
    module:
      type: Sequential
      layers: [{type: ReLU}, {type: Dropout, p: 0.2}, {type: Linear, out_features: 10}]
  - {op: delete, path: classifier.2}
"""


def _vgg16_tutorial_by_api(m: nn.Module) -> None:
    surgery.replace_head(m, 10)
    block = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(10, 10))
    assert surgery.insert_after(m, "classifier.6", block, input_size=SMALL) == "classifier.7"
    surgery.delete(m, "classifier.2", input_size=SMALL)


@pytest.mark.parametrize("how", ["api", "recipe"])
def test_vgg16_tutorial_ops(how):
    m = build("vgg16")
    if how == "api":
        _vgg16_tutorial_by_api(m)
    else:
        surgery.apply(m, yaml.safe_load(VGG_RECIPE)["surgery"], input_size=SMALL)
    kinds = [type(x).__name__ for x in m.classifier]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Dropout", "Linear", "Sequential"]
    assert m.classifier[5].out_features == 10 and m.classifier[6][2].in_features == 10
    assert surgery.aliases(m)["fc2"] == "classifier.2"  # fc2 follows the deletion
    assert surgery.validate(m, input_size=SMALL) == (2, 10)


def test_vgg19_fc1_fc2_and_new_head_through_a_recipe():
    m = build("vgg19")
    diff = surgery.apply(m, [{"op": "replace_head", "num_classes": 4, "init": "xavier_uniform"}], input_size=SMALL)
    assert surgery.resolve_path(m, "fc1") == "classifier.0" and surgery.resolve_path(m, "fc2") == "classifier.3"
    assert surgery.find_head(m) == "classifier.6" and m.classifier[6].out_features == 4
    assert [r["path"] for r in diff.replaced] == ["classifier.6"]
    assert diff.params_before - diff.params_after == 4097 * 996


def test_resnet18_tutorial_ops_by_api_and_recipe():
    api, recipe = build("resnet18"), build("resnet18")
    surgery.replace(api, "fc", nn.Linear(512, 256), input_size=SMALL)
    assert surgery.insert_after(api, "fc", nn.ReLU(), input_size=SMALL) == "fc.1"
    surgery.insert_after(api, "fc.1", nn.Linear(256, 2), input_size=SMALL)
    surgery.apply(recipe, [
        {"op": "replace", "path": "fc", "module": {"type": "Linear", "out_features": 256}},
        {"op": "insert_after", "path": "fc", "module": {"type": "ReLU"}},
        {"op": "insert_after", "path": "fc.1", "module": {"type": "Linear", "out_features": 2}},
    ], input_size=SMALL)
    for m in (api, recipe):
        assert [type(x).__name__ for x in m.fc] == ["Linear", "ReLU", "Linear"]
        assert (m.fc[0].in_features, m.fc[2].in_features) == (512, 256)
        assert surgery.validate(m, input_size=SMALL) == (2, 2)
        assert surgery.find_head(m) == "fc.2"


def test_insert_before_and_delete_outside_a_sequential_wrap_and_log(caplog):
    m = build("resnet18")
    with caplog.at_level(logging.INFO, logger="regraft"):
        assert surgery.insert_before(m, "fc", {"type": "Dropout", "p": 0.5}) == "fc.0"
        surgery.delete(m, "avgpool", check=False)
    assert isinstance(m.fc[0], nn.Dropout) and isinstance(m.fc[1], nn.Linear)
    assert isinstance(m.avgpool, nn.Identity)
    assert "not inside an nn.Sequential: wrapped it" in caplog.text
    assert "replaced it by nn.Identity" in caplog.text


def test_spec_widths_are_inferred_from_the_shape_there():
    m = build("resnet18")
    surgery.insert_after(m, "layer4", {"type": "Sequential", "layers": [
        {"type": "Conv2d", "out_channels": 8, "kernel_size": 1}, {"type": "BatchNorm2d"},
        {"type": "Conv2d", "out_channels": 512, "kernel_size": 1},
    ]}, input_size=SMALL)
    conv, bn = m.layer4[1][0], m.layer4[1][1]
    assert (conv.in_channels, bn.num_features) == (512, 8)
    surgery.insert_before(m, "fc", [{"type": "Linear", "out_features": 64}, "GELU", {"type": "LayerNorm"},
                                    {"type": "Linear", "out_features": 512}], input_size=SMALL)
    assert m.fc[0][0].in_features == 512 and m.fc[0][2].normalized_shape == (64,)
    assert surgery.validate(m, input_size=SMALL) == (2, 1000)


# --------------------------------------------------------------------------- validation

CONV_AFTER_LINEAR = r"module 'classifier\.7' \(Conv2d\) got input of shape \(2, 10\) but expects 4-D input with 512 channels"


def test_the_tutorials_conv_after_the_last_linear_is_named_not_a_stack_trace():
    m = build("vgg16")
    surgery.replace_head(m, 10)
    m.classifier.add_module("7", nn.Conv2d(512, 64, 3))  # what the tutorial does by hand
    with pytest.raises(ShapeError, match=CONV_AFTER_LINEAR):
        surgery.validate(m, input_size=SMALL)


def test_a_breaking_insertion_is_refused_and_undone():
    m = build("vgg16")
    surgery.replace_head(m, 10)
    before = str(m.classifier)
    with pytest.raises(ShapeError, match=CONV_AFTER_LINEAR):
        surgery.insert_after(m, "classifier.6", nn.Conv2d(512, 64, 3), input_size=SMALL)
    assert str(m.classifier) == before
    ops = [{"op": "delete", "path": "classifier.5"},
           {"op": "insert_after", "path": "classifier.5", "module": {"type": "Conv2d", "out_channels": 8, "kernel_size": 3}}]
    with pytest.raises(ShapeError, match=r"surgery op 1 \(insert_after classifier\.5\): module 'classifier\.6' \(Conv2d\) "
                                         r"would get input of shape \(2, 10\) but expects 4-D input"):
        surgery.apply(m, ops, input_size=SMALL)
    assert str(m.classifier) == before  # op 0 was undone too


def test_validate_restores_each_modules_training_flag_and_names_input_size_errors():
    m = zoo.build("timm:test_resnet")
    m.train()
    m.bn1.eval()  # e.g. a frozen BatchNorm kept in eval mode
    assert surgery.validate(m, input_size=(3, 32, 32)) == (2, 1000)
    assert m.training and m.layer1.training and not m.bn1.training
    vit = zoo.build("timm:test_vit3")  # fixed image size (test_vit takes any)
    with pytest.raises(ShapeError, match=r"module 'patch_embed' \(PatchEmbed\) got input of shape \(2, 3, 64, 64\) and failed: .*"
                                         r"run the model at another input size than \(3, 64, 64\)"):
        surgery.validate(vit, input_size=(3, 64, 64))


# --------------------------------------------------------------------------- recipe errors


@pytest.mark.parametrize(("ops", "message"), [
    ([{"op": "remove", "path": "fc"}], r"surgery op 0: unknown op 'remove'; did you mean 'delete'\? use one of replace_head, replace"),
    ([{"path": "fc"}], r"surgery op 0 has no 'op': add one of replace_head"),
    (["delete"], r"surgery op 0: expected a mapping like \{op: delete, path: classifier.2\}; got 'delete'"),
    ([{"op": "delete", "path": "fc"}, {"op": "insert_after", "path": "layer4"}],
     r"surgery op 1 \(insert_after\): missing 'module'; e\.g\. \{op: insert_after, path: classifier\.6, module: \{type: ReLU\}\}"),
    ([{"op": "delete", "paths": "fc"}], r"surgery op 0 \(delete\): unknown key 'paths'; did you mean 'path'\? its keys: path"),
    ([{"op": "insert_after", "path": "layer4", "module": {"type": "Relu"}}],
     r"surgery op 0 \(insert_after layer4\): unknown module type 'Relu'; did you mean 'ReLU'\?"),
    ([{"op": "replace", "path": "fc", "module": {"type": "Linear", "out": 3}}],
     r"surgery op 0 \(replace fc\): Linear has no argument 'out'; did you mean 'out_features'\?"),
    ([{"op": "replace", "path": "fc", "module": {"type": "Linear"}}],
     r"surgery op 0 \(replace fc\): Linear needs 'out_features' in its spec"),
    ([{"op": "delete", "path": "fc.3"}], r"surgery op 0 \(delete fc\.3\): no module 'fc\.3' in ResNet"),
    ([{"op": "replace_head", "num_classes": 3, "init": "glorot"}], r"surgery op 0 \(replace_head\): unknown head init 'glorot'"),
])
def test_malformed_ops_name_their_index_and_the_fix(ops, message):
    m = zoo.build("timm:test_resnet")
    with pytest.raises(SurgeryError, match=message):
        surgery.apply(m, ops, input_size=(3, 32, 32))
    assert isinstance(m.fc, nn.Linear) and m.fc.out_features == 1000


# --------------------------------------------------------------------------- extract


def test_extract_resnet_trunk_keeps_names_shares_parameters_and_matches_features():
    m = build("resnet18")
    trunk = surgery.extract(m, upto="layer3", input_size=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    assert trunk(x).shape == (2, 256, 4, 4)
    assert "layer3.1.conv2.weight" in trunk.state_dict() and "fc.weight" not in trunk.state_dict()
    assert trunk.get_submodule("conv1").weight is m.conv1.weight
    assert isinstance(m.fc, nn.Linear)  # the model itself is untouched


def test_extract_vgg_features_and_timm_stages():
    vgg = build("vgg11")
    assert surgery.extract(vgg, upto="features.10", input_size=SMALL)(torch.zeros(1, *SMALL)).shape == (1, 256, 4, 4)
    convnext = zoo.build("timm:test_convnext")
    trunk = surgery.extract(convnext, upto="stages.1", input_size=(3, 64, 64))
    assert trunk(torch.zeros(1, 3, 64, 64)).shape[1] == convnext.stages[1].blocks[-1].mlp.fc2.out_features


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)  # registered first, runs last
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.skip = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > -1e30:  # data-dependent control flow: FX cannot trace this
            y = y + self.skip(y)
        return self.head(self.pool(y).flatten(1))


def test_extract_falls_back_to_a_checked_prefix_in_call_order():
    net = _Untraceable()
    trunk = surgery.extract(net, upto="conv", input_size=(3, 16, 16))
    assert isinstance(trunk, nn.Sequential) and list(trunk._modules) == ["conv"]
    with pytest.raises(SurgeryError, match=r"cannot cut _Untraceable at 'pool': its modules run in call order up to there give "
                                           r"\(2, 8, 1, 1\) where the model's 'pool' outputs \(2, 8, 1, 1\) \(same shape, other values"):
        surgery.extract(net, upto="pool", input_size=(3, 16, 16))  # the residual add would be lost


def test_extract_op_grafts_a_new_head_in_place_and_is_undone_on_error():
    m = build("resnet18")
    diff = surgery.apply(m, [{"op": "extract", "upto": "layer3", "num_classes": 5}], input_size=(3, 64, 64))
    assert isinstance(m, surgery.Grafted) and m.regraft_ref.name == "resnet18"
    assert surgery.find_head(m) == "head.2"
    assert surgery.validate(m, input_size=(3, 64, 64)) == (2, 5)
    assert {r["path"] for r in diff.removed} >= {"layer4", "fc"}
    m2 = build("resnet18")
    with pytest.raises(SurgeryError, match=r"surgery op 1 \(delete nope\)"):
        surgery.apply(m2, [{"op": "extract", "upto": "layer3", "num_classes": 5}, {"op": "delete", "path": "nope"}],
                      input_size=(3, 64, 64))
    assert type(m2).__name__ == "ResNet" and isinstance(m2.fc, nn.Linear)
    assert surgery.validate(m2, input_size=(3, 64, 64)) == (2, 1000)


# --------------------------------------------------------------------------- describe and diff


def test_describe_rows_shapes_params_trainable_and_head():
    m = zoo.build("timm:test_resnet")
    for p in m.layer1.parameters():
        p.requires_grad_(False)
    m.layer2[0].conv1.weight.requires_grad_(False)
    rows = {r.path: r for r in surgery.describe(m, input_size=(3, 32, 32), depth=1)}
    assert max(r.depth for r in rows.values()) == 1
    assert rows[""].params == sum(p.numel() for p in m.parameters())
    assert rows["fc"].head and rows["fc"].out_shape == (2, 1000)
    assert rows["layer1"].trainable is False and rows["layer2"].trainable is None and rows["fc"].trainable is True
    assert rows["global_pool"].params == 0 and rows["global_pool"].trainable is None
    assert json.loads(json.dumps(rows["fc"].to_dict()))["out_shape"] == [2, 1000]


def test_diff_lists_replaced_added_removed_moved_and_is_json():
    m = build("vgg16")
    diff = surgery.apply(m, [
        {"op": "replace_head", "num_classes": 10, "hidden": [64], "dropout": 0.1},
        {"op": "delete", "path": "classifier.2"},
        {"op": "insert_before", "path": "classifier.0", "module": {"type": "Dropout", "p": 0.1}},
    ], input_size=SMALL)
    assert [(r["path"], r["new_type"]) for r in diff.replaced] == [("classifier.6", "Sequential")]
    assert [a["path"] for a in diff.added] == ["classifier.0"]
    assert [r["path"] for r in diff.removed] == ["classifier.2"]
    assert {"from": "classifier.0", "to": "classifier.1", "type": "Linear"} in diff.moved
    assert diff.out_shape_before == [2, 1000] and diff.out_shape_after == [2, 10]
    assert diff.params_after == sum(p.numel() for p in m.parameters())
    data = json.loads(json.dumps(diff.to_dict()))
    assert data["ops"][1] == "delete classifier.2: Dropout(0.5)"
    text = str(diff)
    assert "~ classifier.6: Linear(4096, 1000) -> Sequential[Linear(4096, 64), ReLU, Dropout(0.1), Linear(64, 10)]" in text
