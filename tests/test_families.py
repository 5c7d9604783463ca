"""The families table: consistent with the zoos, asked by surgery, freezing, strategies and the cut;
a rule that fails raises instead of falling back."""

from __future__ import annotations

import importlib

import pytest
import timm
import torch
import torchvision
from torch import nn

from regraft import families, surgery
from regraft.config import Config
from regraft.errors import ModelError
from regraft.features import find_cut
from regraft.freezing import freeze, stages
from regraft.strategies import plan
from tests.helpers import TinyVGG

# one small builder per torchvision family of the table (built on the meta device: no memory, no time)
TORCHVISION = {
    "ResNet": "resnet18", "VGG": "vgg11", "AlexNet": "alexnet", "DenseNet": "densenet121", "ConvNeXt": "convnext_tiny",
    "SwinTransformer": "swin_t", "RegNet": "regnet_x_400mf", "VisionTransformer": "vit_b_16",
    "MobileNetV2": "mobilenet_v2", "MobileNetV3": "mobilenet_v3_small", "EfficientNet": "efficientnet_b0",
    "MNASNet": "mnasnet0_5", "SqueezeNet": "squeezenet1_1", "ShuffleNetV2": "shufflenet_v2_x0_5",
    "GoogLeNet": "googlenet", "Inception3": "inception_v3", "MaxVit": "maxvit_t",
}
TIMM = {"resnet.ResNet": "test_resnet", "efficientnet.EfficientNet": "test_efficientnet",
        "mobilenetv3.MobileNetV3": "mobilenetv3_small_050", "convnext.ConvNeXt": "test_convnext"}


def _paths(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}


def test_every_row_names_a_real_class_and_names_are_unique():
    names = [f.name for f in families.FAMILIES]
    assert len(names) == len(set(names))
    for fam in families.FAMILIES:
        for cls in fam.classes:
            if fam.zoo == "torchvision":
                assert isinstance(getattr(torchvision.models, cls), type), cls
            elif fam.zoo == "timm":
                module, name = cls.rsplit(".", 1)
                assert isinstance(getattr(importlib.import_module(f"timm.models.{module}"), name), type), cls
    assert set(TORCHVISION) == {c for f in families.FAMILIES if f.zoo == "torchvision" for c in f.classes}
    assert families.TORCHVISION_HEADS["VGG"] == "classifier" and families.FC_ALIAS_FAMILIES == ("torchvision:VGG", "torchvision:AlexNet")


@pytest.mark.parametrize("cls", list(TORCHVISION))
def test_torchvision_rows_fit_their_models(cls):
    kwargs = {"aux_logits": False, "init_weights": False} if cls in ("GoogLeNet", "Inception3") else {}
    with torch.device("cpu" if cls == "RegNet" else "meta"):  # RegNet's init copies tensors: small enough for the CPU
        model = torchvision.models.get_model(TORCHVISION[cls], weights=None, **kwargs)
    fam = families.declared(model)
    assert fam is not None and fam.name == f"torchvision:{cls}"
    assert families.head_location(model) == fam.head
    if fam.stages is not None:
        assert fam.stages.applies(model), f"{cls}'s own stage rule does not fit it"
    program = families.forward_program(model)
    if fam.forward is None:
        assert program is None
    else:
        assert program == (f"torchvision {cls}", fam.forward)
        missing = [step for step in fam.forward if not step.startswith("<") and step not in _paths(model)]
        assert not missing, f"{cls}'s forward program names modules it lacks: {missing}"


@pytest.mark.parametrize("key", list(TIMM))
def test_timm_rows_fit_their_models_and_the_model_is_asked_first(key):
    model = timm.create_model(TIMM[key], num_classes=3)
    fam = families.declared(model)
    assert fam is not None and fam.name == f"timm:{key}" and families.family(model) == "timm"
    assert families.head_location(model) == model.pretrained_cfg["classifier"]
    assert families.forward_program(model)[1] == fam.forward
    assert all(step.startswith("<") or step in _paths(model) for step in fam.forward)
    assert stages(model)[0][0] == "stem"  # group_matcher's stem


def test_a_failing_stage_rule_raises_instead_of_falling_back():
    class Matcher(nn.Module):  # claims timm's group_matcher, which answers with a broken pattern
        pretrained_cfg: dict = {}

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def group_matcher(self, coarse: bool = False) -> dict:
            return {"stem": r"^conv", "blocks": r"^(fc"}

    with pytest.raises(ModelError, match=r"stage rule 'timm group_matcher' failed on Matcher \(error: .*\); this is a regraft bug"):
        stages(Matcher(), head="fc")
    with pytest.raises(ModelError, match="stage rule"):
        freeze(Matcher(), freeze_to="conv", head="fc")


def test_partial_units_come_from_the_family_not_from_stage_names():
    class LeNet(nn.Module):  # children named fc1, fc2 like VGG's stages, but no VGG
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc3(self.fc2(self.fc1(self.conv2(self.conv1(x)).mean((2, 3)))))

    lenet = LeNet()
    names = [n for n, _ in stages(lenet, head="fc3")]
    assert names == ["conv1", "conv2", "fc1", "fc2"]
    assert families.partial_units(lenet, names) == [["conv1"], ["conv2"], ["fc1"], ["fc2"]]
    assert plan(lenet, strategy="partial", cfg=Config(), steps_per_epoch=1, head="fc3").freeze_plan.trainable_modules() == ["fc2", "fc3"]
    vgg = TinyVGG()
    vgg_names = [n for n, _ in stages(vgg, head="classifier.6")]
    assert families.partial_units(vgg, vgg_names)[-1] == ["fc1", "fc2"]


def test_look_alikes_get_the_familys_aliases_and_stages_but_not_its_head():
    vgg = TinyVGG()
    assert families.declared(vgg) is None and families.identify(vgg).name == "torchvision:VGG"
    assert surgery.aliases(vgg)["fc2"] == "classifier.3"
    assert surgery.get(vgg, "fc1") is vgg.classifier[0]
    assert families.head_location(vgg) is None and surgery.find_head(vgg) == "classifier.6"  # last Linear in forward order
    assert families.forward_program(vgg) is None  # its forward is its own: no program


def test_extract_keeps_the_stages_of_what_it_keeps():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    surgery.apply(model, [{"op": "extract", "upto": "layer3", "num_classes": 3}], input_size=(3, 32, 32))
    assert families.family(model) == "grafted"
    layout = stages(model, head="head")
    assert [n for n, _ in layout] == ["stem", "layer1", "layer2", "layer3"]
    assert layout[0][1] == ["trunk.conv1", "trunk.bn1"]
    assert freeze(model, freeze_to="layer2", head="head").trainable_modules() == ["trunk.layer3", "head"]
    partial = plan(model, strategy="partial", cfg=Config(), steps_per_epoch=1, head="head")
    assert partial.freeze_plan.trainable_modules() == ["trunk.layer3", "head"]
    head_only = find_cut(model, trainable=lambda n: n.startswith("head."), head="head")
    assert head_only is not None and head_only.family == "grafted trunk and head"
    x = torch.randn(2, 3, 32, 32)
    assert head_only.check(model, x) is None


def test_a_trunk_cut_inside_a_stage_keeps_that_stage_partly():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    surgery.apply(model, [{"op": "extract", "upto": "layer3.0", "num_classes": 3}], input_size=(3, 32, 32))
    layout = dict(stages(model, head="head"))
    assert list(layout) == ["stem", "layer1", "layer2", "layer3"]
    assert not any(n.startswith("trunk.layer3.1") for n, _ in model.named_parameters())


def test_no_weight_decay_is_asked_of_the_model():
    vit = timm.create_model("test_vit", num_classes=3)
    assert families.no_weight_decay(vit) == {"cls_token", "pos_embed"}  # reg/dist tokens: absent in this model
    assert families.no_weight_decay(torchvision.models.resnet18()) == set()
