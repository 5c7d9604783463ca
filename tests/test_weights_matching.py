"""Loading that is right or refuses: prefix guesses, isolated name matches, the head's classes, timm train.py checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from regraft import surgery
from regraft.errors import UnsafeCheckpointError, WeightsError
from regraft.weights import HeadStatus, load_weights


def randomised(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of ``model``'s layout whose floating tensors all differ from a fresh model's."""
    gen = torch.Generator().manual_seed(seed)
    # positive, so that running variances stay valid
    return {k: (torch.randn(v.shape, generator=gen).abs() + 0.1 if v.is_floating_point() else v + 3) for k, v in model.state_dict().items()}


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.flatten(model.eval()(x), 1)


# ---------------------------------------------------------------------------- prefix changes and position


def test_the_tutorials_backbone_idiom_loads_every_tensor_in_its_place():
    source = torchvision.models.resnet18()
    source.load_state_dict(randomised(source))
    backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
    report = load_weights(backbone, source.state_dict())
    # the best prefix guess ('4.0.') fits 5 of 122 tensors: refused, so nothing is "loaded by name"
    assert not report.loaded and any("prefix change refused: adding '4.0.'" in n for n in report.notes)
    assert report.matched_by_position["bn1.weight"] == "1.weight"  # the stem's bn1, not layer1.0.bn1
    assert report.matched_by_position["layer1.0.bn1.weight"] == "4.0.bn1.weight"
    assert set(report.matched_by_position.values()) == set(backbone.state_dict())
    assert report.coverage == 1.0 and report.unexpected == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(features(backbone, x), features(nn.Sequential(*list(source.children())[:-1]), x))


def test_a_prefix_change_that_fits_nearly_everything_is_taken():
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small()
    state = randomised(source)
    backbone = nn.Sequential(torchvision.models.mobilenet_v3_small().features, nn.AdaptiveAvgPool2d(1))
    report = load_weights(backbone, state, head="")
    assert report.prefixes == ["removed prefix 'features.'", "added prefix '0.'"]
    assert len(report.loaded) == len(backbone.state_dict()) and report.coverage == 1.0
    torch.testing.assert_close(backbone.state_dict()["0.12.1.running_var"], state["features.12.1.running_var"])


def test_a_grafted_trunk_takes_the_prefix_its_keys_carry():
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    state = randomised(source)
    model = torchvision.models.resnet18(num_classes=3)
    surgery.apply(model, [{"op": "extract", "upto": "layer3", "num_classes": 3}], input_size=(3, 32, 32))
    report = load_weights(model, state)  # layer4 and fc have nowhere to go; the trunk is all there
    assert report.prefixes == ["added prefix 'trunk.'"] and report.coverage == 1.0
    torch.testing.assert_close(model.state_dict()["trunk.layer3.1.bn2.bias"], state["layer3.1.bn2.bias"])


class _Coincidence(nn.Module):
    """Shares the names conv1, bn1 with ResNet; conv1 has another shape, so bn1 fits only by chance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.mix = nn.Conv2d(64, 8, 1)
        self.fc = nn.Linear(8, 2)


def test_a_name_match_whose_neighbours_clash_is_not_loaded():
    model = _Coincidence()
    before = model.bn1.weight.detach().clone()
    report = load_weights(model, randomised(torchvision.models.resnet18()), head="fc")
    assert "bn1.weight" not in report.loaded_keys and "bn1.weight" in report.missing
    assert torch.equal(model.bn1.weight, before)
    assert "conv1.weight" in report.mismatched
    assert any("name matches not loaded: the modules around them do not match" in n for n in report.notes)


def test_neighbours_that_agree_keep_a_name_match_beside_a_changed_layer():
    model = torchvision.models.resnet18()
    model.layer1[0].conv2 = nn.Conv2d(64, 64, 5, padding=2, bias=False)  # surgery changed one conv
    state = randomised(torchvision.models.resnet18())
    report = load_weights(model, state, head="fc")
    assert "layer1.0.conv2.weight" in report.mismatched
    assert {"layer1.0.bn1.weight", "layer1.0.bn2.weight"} <= set(report.loaded)
    assert not any("name matches not loaded" in n for n in report.notes)


# ---------------------------------------------------------------------------- the head and its classes


def _three_class_state() -> dict[str, torch.Tensor]:
    return randomised(torchvision.models.resnet18(num_classes=3))


def test_a_head_of_the_right_size_with_unknown_classes_is_replaced_and_the_report_says_so():
    model = torchvision.models.resnet18(num_classes=3)
    head_before = model.fc.weight.detach().clone()
    state = _three_class_state()
    report = load_weights(model, state)
    assert report.head_status is HeadStatus.REPLACED and torch.equal(model.fc.weight, head_before)
    assert report.skipped["fc.weight"].startswith("old head: withheld")
    assert "what its classes mean is unknown" in report.head_reason and "--keep-head" in report.head_reason
    assert any(line.split()[:2] == ["head", "replaced"] for line in report.format_lines())
    assert json.loads(json.dumps(report.to_dict()))["head_status"] == "replaced"
    kept = load_weights(model, state, keep_head=True)
    assert kept.head_status is HeadStatus.KEPT and torch.equal(model.fc.weight, state["fc.weight"])


def test_imagenet_sized_head_for_a_thousand_classes_is_replaced_too():
    model = torchvision.models.resnet18()  # 1000 outputs, like the checkpoint: still not the same classes
    report = load_weights(model, randomised(torchvision.models.resnet18()))
    assert report.head_status is HeadStatus.REPLACED and report.coverage == 1.0


def test_a_head_of_another_size_is_dropped_and_keep_head_then_refuses():
    model = torchvision.models.resnet18(num_classes=5)
    report = load_weights(model, _three_class_state())
    assert report.head_status is HeadStatus.DROPPED and "3 classes, the model's fc.weight has 5" in report.head_reason
    with pytest.raises(WeightsError, match=r"--keep-head: the checkpoint's classifier cannot fill the model's head 'fc' \(fc\.weight: old head: 3 classes.*\); drop --keep-head"):
        load_weights(model, _three_class_state(), keep_head=True)


def _run_folder(root: Path, classes: list[str], state: dict[str, torch.Tensor]) -> Path:
    root.mkdir()
    save_file(state, str(root / "model.safetensors"))
    card = {"format": "regraft-run/1", "architecture": {"zoo": "torchvision", "name": "resnet18", "head": "fc"}, "classes": classes}
    (root / "model.json").write_text(json.dumps(card))
    return root


def test_a_regraft_run_keeps_its_head_when_the_classes_match_in_order(tmp_path):
    state = _three_class_state()
    run = _run_folder(tmp_path / "run", ["cat", "dog", "fox"], state)
    for source in (run, run / "model.safetensors"):
        model = torchvision.models.resnet18(num_classes=3)
        report = load_weights(model, str(source), classes=["cat", "dog", "fox"])
        assert report.head_status is HeadStatus.KEPT and "same 3 classes in the same order" in report.head_reason
        assert torch.equal(model.fc.bias, state["fc.bias"])
    model = torchvision.models.resnet18(num_classes=3)
    report = load_weights(model, str(run), classes=["cat", "fox", "dog"])
    assert report.head_status is HeadStatus.REPLACED
    assert "trained on classes [cat, dog, fox], not [cat, fox, dog]" in report.head_reason
    assert load_weights(model, str(run)).head_status is HeadStatus.REPLACED  # classes not given: unknown


def test_a_broken_card_beside_the_weights_means_unknown_classes(tmp_path):
    run = _run_folder(tmp_path / "run", ["cat", "dog", "fox"], _three_class_state())
    (run / "model.json").write_text('{"format": "regraft-run/1", "classes": "cat,dog,fox"}')
    report = load_weights(torchvision.models.resnet18(num_classes=3), str(run), classes=["cat", "dog", "fox"])
    assert report.head_status is HeadStatus.REPLACED


# ---------------------------------------------------------------------------- timm train.py checkpoints


def _timm_train_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    from timm.utils import CheckpointSaver, ModelEmaV3

    model = timm.create_model("test_resnet", num_classes=3)
    model.load_state_dict(randomised(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    args = argparse.Namespace(model="test_resnet", lr=0.1, epochs=3, batch_size=8, mean=None, input_size=[3, 32, 32])
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ModelEmaV3(model), checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(epoch=0, metric=0.5)
    return tmp_path / "last.pth.tar", {k: v.clone() for k, v in model.state_dict().items()}


def test_timm_train_checkpoints_load_weights_only_without_trust(tmp_path, monkeypatch):
    path, state = _timm_train_checkpoint(tmp_path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert isinstance(raw["args"], argparse.Namespace) and "optimizer" in raw and "state_dict_ema" in raw
    calls: list[bool] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or real_load(*a, **kw))
    model = timm.create_model("test_resnet", num_classes=3)
    report = load_weights(model, str(path), keep_head=True)
    assert calls == [True]  # never the full unpickler
    assert report.container == "state_dict" and report.coverage == 1.0
    assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])


class _Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_a_checkpoint_with_any_other_class_still_needs_trust(tmp_path):
    path = tmp_path / "mixed.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1), "extra": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"mixed\.pth\.tar: refused to unpickle '(builtins\.)?print'.*--trust-checkpoint"):
        load_weights(nn.Linear(2, 1), str(path), head="")


@pytest.mark.slow
def test_train_keeps_a_runs_head_only_for_its_classes_or_with_keep_head(tmp_path, toy_data, cli):
    from tests.helpers import TINY, make_image_folder, ok

    first = tmp_path / "first"
    ok(cli("train", str(toy_data), *TINY, "--weights", "none", "--strategy", "scratch", "--epochs", "1", "--out", str(first)))

    def head_of(data: Path, out: str, *extra: str) -> dict:
        ok(cli("train", str(data), *TINY, "--weights", str(first), "--strategy", "head", "--epochs", "1", "--out", str(tmp_path / out), *extra))
        return json.loads((tmp_path / out / "load_report.json").read_text())

    same = head_of(toy_data, "same")  # blue, red again
    assert same["head_status"] == "kept" and "same 2 classes in the same order" in same["head_reason"]
    other = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=6, size=32)
    replaced = head_of(other, "other")
    assert replaced["head_status"] == "replaced" and "[blue, red], not [cat, dog]" in replaced["head_reason"]
    assert head_of(other, "kept", "--keep-head")["head_status"] == "kept"


def test_a_backbone_prefix_is_taken_for_a_model_with_new_parts_around_it():
    """The backbone_neck recipe page: a feature extractor under ``backbone.`` beside a neck and a head."""
    from torchvision.models.feature_extraction import create_feature_extractor
    from torchvision.ops import FeaturePyramidNetwork

    class Pyramid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = create_feature_extractor(torchvision.models.resnet18(), {"layer2": "c3", "layer3": "c4"})
            self.neck = FeaturePyramidNetwork([128, 256], 128)  # new: an eighth of the model's weights
            self.fc = nn.Linear(256, 2)

    state = randomised(torchvision.models.resnet18())
    model = Pyramid()
    report = load_weights(model, state, skip=["fc"])
    assert report.prefixes == ["added prefix 'backbone.'"] and "backbone.layer3.1.bn2.weight" in report.loaded
    assert {k.split(".")[0] for k in report.unexpected} == {"layer4"}
    assert {k.split(".")[0] for k in report.missing} == {"neck", "fc"}
