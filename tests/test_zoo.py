import pytest

from regraft import zoo
from regraft.errors import ModelError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", ("torchvision", "resnet18")),  # torchvision wins for names in both zoos
        ("timm:resnet18", ("timm", "resnet18")),
        ("torchvision:vgg16", ("torchvision", "vgg16")),
        ("tf_efficientnet_lite0", ("timm", "tf_efficientnet_lite0")),
        ("timm/resnet50.a1_in1k", ("timm", "resnet50.a1_in1k")),
        ("test_resnet", ("timm", "test_resnet")),
    ],
)
def test_resolve(name, expected):
    ref = zoo.resolve(name)
    assert (ref.zoo, ref.name) == expected


def test_unknown_names_suggest():
    with pytest.raises(ModelError, match="unknown model 'resnet181'.*did you mean resnet18"):
        zoo.resolve("resnet181")
    with pytest.raises(ModelError, match="'vgg16x' is not a torchvision model"):
        zoo.resolve("torchvision:vgg16x")
    with pytest.raises(ModelError, match="no model given"):
        zoo.resolve("")


def test_build_sets_ref_and_keeps_imagenet_head():
    model = zoo.build("test_resnet")
    assert model.regraft_ref == zoo.ModelRef("timm", "test_resnet")
    assert model.get_classifier().out_features == 1000
    tv = zoo.build("mobilenet_v3_small", num_classes=4)
    assert tv.classifier[-1].out_features == 4


def test_data_configs_follow_the_weights():
    lite = zoo.data_config("tf_efficientnet_lite0")
    assert lite.mean == (0.5, 0.5, 0.5) and lite.interpolation == "bicubic"
    r50 = zoo.data_config("resnet50", weights="IMAGENET1K_V2")
    assert r50.input_size == (3, 224, 224) and abs(r50.crop_pct - 224 / 232) < 1e-3
    assert zoo.data_config("resnet50", weights="IMAGENET1K_V1").crop_pct == 0.875
    small = lite.with_overrides(img_size=64, mean=[0.1, 0.2, 0.3])
    assert small.input_size == (3, 64, 64) and small.mean == (0.1, 0.2, 0.3)


def test_list_models():
    names = [(r.zoo, r.name) for r in zoo.list_models("*resnet18*")]
    assert ("torchvision", "resnet18") in names and ("timm", "resnet18") in names
    assert all(r.zoo == "timm" for r in zoo.list_models("resnet", zoo="timm"))
