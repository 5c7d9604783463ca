"""Feature caching: the cut reproduces the forward pass, cached training equals uncached, the probe stage."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision
from torch import nn

from regraft import data, features, zoo
from regraft.config import Config
from regraft.data.sampler import EpochBatchSampler
from regraft.features import CacheSettings
from regraft.freezing import freeze
from regraft.training.processes import Processes
from tests.helpers import fit_stage

CPU = torch.device("cpu")

TV = torchvision.models


def _head_only(head: str):
    return lambda name: name.startswith(head + ".")


def _same_output(model: nn.Module, cut: features.Cut, size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    model.eval()
    cut.rest.eval()
    with torch.no_grad():
        want = model(x)
        got = cut.rest(cut.prefix(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "head", "size", "after"),
    [
        (lambda: TV.resnet18(weights=None, num_classes=3), "fc", 32, "flatten"),
        (lambda: TV.vgg11(weights=None, num_classes=3), "classifier.6", 32, "classifier.4"),
        (lambda: TV.mobilenet_v3_small(weights=None, num_classes=3), "classifier.3", 32, "classifier.1"),
        (lambda: TV.shufflenet_v2_x0_5(weights=None, num_classes=3), "fc", 32, "mean"),
        (lambda: TV.squeezenet1_1(weights=None, num_classes=3), "classifier.1", 64, "features.12"),
        (lambda: timm.create_model("test_resnet", num_classes=3), "fc", 32, "global_pool"),
        (lambda: timm.create_model("test_efficientnet", num_classes=3, drop_rate=0.2), "classifier", 32, "global_pool"),
        (lambda: timm.create_model("test_convnext", num_classes=3), "head.fc", 32, "head.pre_logits"),
        (lambda: timm.create_model("test_vit", num_classes=3), "head", 160, "the input of head"),
    ],
    ids=["resnet18", "vgg11", "mobilenet_v3_small", "shufflenet", "squeezenet", "timm-resnet", "timm-efficientnet",
         "timm-convnext", "timm-vit-hook"],
)
def test_head_only_cut_reproduces_the_forward_pass(build, head, size, after):
    model = build()
    cut = features.find_cut(model, trainable=_head_only(head), head=head)
    assert cut is not None and cut.after == after
    _same_output(model, cut, size)
    # the trainable rest holds the model's own head parameters, not copies
    head_params = {id(p) for p in model.get_submodule(head).parameters()}
    assert head_params <= {id(p) for p in cut.rest.parameters()}


def test_dropout_before_the_head_stays_in_the_trainable_rest():
    model = timm.create_model("test_efficientnet", num_classes=3, drop_rate=0.5)
    cut = features.find_cut(model, trainable=_head_only("classifier"), head="classifier")
    assert isinstance(cut.rest.steps[0], nn.Dropout) and cut.rest.steps[0].p == 0.5
    tv = TV.mobilenet_v3_small(weights=None, num_classes=3)
    cut = features.find_cut(tv, trainable=_head_only("classifier.3"), head="classifier.3")
    assert [type(m).__name__ for m in cut.rest.steps] == ["Dropout", "Linear"]


@pytest.mark.parametrize(
    ("build", "trainable", "after", "size"),
    [
        (lambda: TV.resnet18(weights=None, num_classes=3), ("layer4", "fc"), "layer3.1", 32),
        (lambda: TV.vgg11(weights=None, num_classes=3), ("classifier",), "flatten", 32),
        (lambda: TV.mobilenet_v3_small(weights=None, num_classes=3), ("features.12", "classifier"), "features.11", 32),
        (lambda: timm.create_model("test_efficientnet", num_classes=3), ("blocks.3", "conv_head", "bn2", "classifier"),
         "blocks.2.0", 32),
    ],
    ids=["resnet18-layer4", "vgg11-classifier", "mobilenet-last-stage", "timm-efficientnet-last-stage"],
)
def test_partial_freezing_cuts_after_the_last_frozen_step(build, trainable, after, size):
    model = build()
    cut = features.find_cut(model, trainable=lambda n: n.startswith(tuple(t + "." for t in trainable)), head="fc")
    assert cut is not None and cut.after == after
    _same_output(model, cut, size)


def test_trainable_may_be_a_set_of_names_or_the_requires_grad_flags():
    model = TV.resnet18(weights=None, num_classes=3)
    names = {n for n, _ in model.named_parameters() if n.startswith(("layer4.", "fc."))}
    assert features.find_cut(model, trainable=names).after == "layer3.1"
    freeze(model, train=["layer4"], head="fc")
    assert features.find_cut(model).after == "layer3.1"
    assert features.find_cut(model, trainable=lambda n: n.startswith(("layer1.", "fc."))).after == "maxpool"


@pytest.mark.parametrize(
    ("trainable", "reason"),
    [
        (lambda n: True, "nothing is frozen before conv1, which trains"),
        (lambda n: False, "no parameter trains"),
        (lambda n: n.startswith(("conv1.", "fc.")), "nothing is frozen before conv1, which trains"),
    ],
)
def test_no_cut_says_why(trainable, reason, caplog):
    model = TV.resnet18(weights=None, num_classes=3)
    cut, why = features.explain_cut(model, trainable=trainable)
    assert cut is None and why == reason
    with caplog.at_level(logging.INFO, logger="regraft"):
        assert features.find_cut(model, trainable=trainable) is None
    assert f"feature cache off: {reason}" in caplog.text


def test_unknown_family_with_a_trainable_trunk_does_not_cache():
    model = timm.create_model("test_vit", num_classes=3)
    cut, why = features.explain_cut(model, trainable=lambda n: n.startswith(("blocks.1.", "head.")), head="head")
    assert cut is None
    assert why.startswith("blocks.1.") and "outside the head 'head'" in why and "VisionTransformer" in why


def test_a_changed_forward_is_not_trusted_and_the_check_catches_a_wrong_split():
    class Doubled(TV.ResNet):
        def forward(self, x):
            return 2 * super().forward(x)

    model = Doubled(TV.resnet.BasicBlock, [1, 1, 1, 1], num_classes=3)
    cut = features.find_cut(model, trainable=_head_only("fc"), head="fc")
    assert cut.family == "head input"  # not the ResNet program: the forward was overridden
    reason = cut.check(model, torch.randn(2, 3, 32, 32))
    assert reason is not None and "differs from the model's" in reason


# ---------------------------------------------------------------------------------- the store


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, n: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def _prefix() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())


def test_cache_spills_to_a_memory_mapped_file_over_the_ram_budget(tmp_path):
    ds, prefix = _Tensors(), _prefix()
    ram = features.FeatureCache.build(prefix, ds, batch_size=4, ram_bytes=1 << 20)
    disk = features.FeatureCache.build(prefix, ds, batch_size=4, ram_bytes=0, cache_dir=tmp_path)
    assert ram.in_memory and not disk.in_memory
    assert disk.path.parent == tmp_path / "tmp" and disk.path.is_file()
    assert disk.features.shape == (1, 10, 16)
    torch.testing.assert_close(disk.features, ram.features)
    with torch.no_grad():
        torch.testing.assert_close(ram.features[0], prefix(ds.x))
    assert ram.labels.tolist() == ds.y.tolist()
    disk.close()
    assert not disk.path.exists()


def test_fp16_storage_halves_the_bytes_and_batches_come_back_as_float32():
    ds, prefix = _Tensors(), _prefix()
    full = features.FeatureCache.build(prefix, ds, batch_size=4)
    half = features.FeatureCache.build(prefix, ds, batch_size=4, fp16=True)
    assert half.features.dtype == torch.float16 and half.nbytes * 2 == full.nbytes
    x, y = half.batch([3, 1])
    assert x.dtype == torch.float32 and y.tolist() == [1, 1]
    torch.testing.assert_close(x, full.features[0, [3, 1]], rtol=1e-3, atol=1e-3)


def _image_datasets(root, *, augment: str, size: int = 32):
    splits = data.discover(root)
    dcfg = zoo.DataConfig(input_size=(3, size, size))
    train = data.ImageDataset(splits.train, data.build_transforms(dcfg, train=True, augment=augment))
    val = data.ImageDataset(splits.val, data.build_transforms(dcfg, train=False), on_error="drop")
    return train, val


def test_view_k_is_the_augmentation_of_epoch_k_and_epochs_cycle_through_views(toy_data):
    train, _ = _image_datasets(toy_data, augment="light")
    prefix = _prefix()
    cache = features.FeatureCache.build(prefix, train, views=3, batch_size=8, seed=5)
    loader = data.make_loader(train, batch_size=8, shuffle=False, seed=5, workers=0)
    for k in range(3):
        loader.batch_sampler.set_epoch(k)
        with torch.no_grad():
            want = torch.cat([prefix(x) for x, _ in loader])
        torch.testing.assert_close(cache.features[k], want)
    assert not torch.allclose(cache.features[0], cache.features[1])
    ds = features.CachedFeatures(cache)
    for epoch in (0, 1, 2, 3, 4):
        ds.set_epoch(epoch)
        torch.testing.assert_close(ds[2][0], cache.features[epoch % 3, 2])


def test_mixed_views_draw_one_view_per_sample_and_epoch(toy_data):
    train, _ = _image_datasets(toy_data, augment="light")
    cache = features.FeatureCache.build(_prefix(), train, views=4, batch_size=8)
    ds = features.CachedFeatures(cache, mix_views=True, seed=1)
    ds.set_epoch(0)
    views = ds.view.clone()
    assert len(set(views.tolist())) > 1
    x, _ = ds.batch(range(len(ds)))
    torch.testing.assert_close(x, cache.features[views, torch.arange(len(ds))])
    ds.set_epoch(1)
    assert not torch.equal(ds.view, views)


def test_with_augmentation_view_0_is_the_plain_image_and_the_rest_are_augmented(toy_data):
    train, val = _image_datasets(toy_data, augment="light")
    model = TV.resnet18(weights=None, num_classes=2)
    cut = features.find_cut(model, trainable=_head_only("fc"))
    settings = CacheSettings(batch_size=8, augment="light", feature_views=3, seed=2)
    tr, va = features.cache_features(cut, model, train, val, settings=settings, device=CPU)  # fp32: compared exactly
    assert tr.views == 3 and va.views == 1 and len(tr) == len(train) and len(va) == len(val)
    plain = data.ImageDataset(train.samples, val.transform)
    aug = data.make_loader(train, batch_size=8, shuffle=False, seed=2, workers=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tr.features[0], torch.cat([cut.prefix(x) for x, _ in data.make_loader(plain, batch_size=8)]))
        for k in (1, 2):
            aug.batch_sampler.set_epoch(k - 1)
            torch.testing.assert_close(tr.features[k], torch.cat([cut.prefix(x) for x, _ in aug]))


def test_without_validation_images_view_0_is_still_the_plain_image(toy_data):
    """The cross-validated regime has no validation images, only their transform: the probe's
    features must still be of the un-augmented images (a random crop per image cost a 10-class
    task of tiny digits 27 points of cross-validated accuracy)."""
    train, val = _image_datasets(toy_data, augment="light")
    empty = data.ImageDataset([], val.transform)
    model = TV.resnet18(weights=None, num_classes=2)
    cut = features.find_cut(model, trainable=_head_only("fc"))
    tr, va = features.cache_features(cut, model, train, empty, settings=CacheSettings(batch_size=8, augment="light"),
                                     device=CPU, views=1)
    assert va is None and tr.views == 1
    plain = data.ImageDataset(train.samples, val.transform)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tr.features[0], torch.cat([cut.prefix(x) for x, _ in data.make_loader(plain, batch_size=8)]))


# ------------------------------------------------------------------ cached training == uncached


def _plan(model: nn.Module):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    return SimpleNamespace(optimizer=opt, scheduler=None, begin_epoch=lambda epoch: [], state_dict=lambda: {}, unfreeze=None)


def _fit(module, plan, train_loader, val_loader):
    return fit_stage(module, plan, train_loader, val_loader, epochs=3, seed=0)


def test_cached_training_gives_the_losses_and_weights_of_uncached_training(toy_data):
    """ResNet-18 with layer4 + fc training: BatchNorm trains in the rest, frozen BN in the prefix."""
    train, val = _image_datasets(toy_data, augment="none")
    results = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = TV.resnet18(weights=None, num_classes=2)
        freeze(model, train=["layer4"], head="fc")
        plan = _plan(model)
        if cached:
            cut = features.find_cut(model)
            caches = features.cache_features(cut, model, train, val, settings=CacheSettings(batch_size=8, augment="none"), device=CPU)
            tl, vl = features.feature_loaders(*caches, batch_size=8, seed=0)
            state = _fit(cut.rest, plan, tl, vl)
        else:
            tl, vl = (data.make_loader(ds, batch_sampler=EpochBatchSampler(len(ds), batch_size=8, shuffle=s, seed=0), batch_size=8,
                                       shuffle=s, workers=0) for ds, s in ((train, True), (val, False)))
            state = _fit(model, plan, tl, vl)
        results.append((state.history, model.state_dict()))
    (h0, w0), (h1, w1) = results
    for a, b in zip(h0, h1, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    for key in w0:
        torch.testing.assert_close(w1[key], w0[key], rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(w0["fc.weight"], TV.resnet18(weights=None, num_classes=2).fc.weight)


# ------------------------------------------------------------------------- train_with_cache


def _cfg(root, **kw) -> Config:
    base = dict(data=str(root), model="timm:test_resnet", strategy="head", batch_size=8, augment="none", epochs=2)
    return Config(**(base | kw))


def test_train_with_cache_trains_the_models_own_head(toy_data):
    train, val = _image_datasets(toy_data, augment="none")
    model = timm.create_model("test_resnet", num_classes=2)
    freeze(model, head="fc")
    plan = _plan(model)
    got = features.train_with_cache(model, train_dataset=train, val_dataset=val, settings=CacheSettings(batch_size=8, augment="none"),
                                    device=CPU, head="fc")
    assert got is not None
    assert len(got.train_loader) == len(EpochBatchSampler(len(train), batch_size=8, shuffle=True))
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    before = model.fc.weight.detach().clone()
    fit_stage(got.module, plan, got.train_loader, got.val_loader, epochs=2)
    assert not torch.equal(model.fc.weight, before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())


def test_train_with_cache_declines_a_model_it_cannot_cut(toy_data, caplog):
    train, val = _image_datasets(toy_data, augment="none")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    for p in model.parameters():
        p.requires_grad_(False)  # nothing trains: there is nothing to cut for
    with caplog.at_level(logging.INFO, logger="regraft"):
        got = features.train_with_cache(model, train_dataset=train, val_dataset=val, settings=CacheSettings(batch_size=8), device=CPU)
    assert got is None and "feature cache off: no parameter trains" in caplog.text


# ------------------------------------------------------------------------ the probe stage


def _probe(model, head, toy_data, *, regime="holdout", augment="light"):
    from regraft.training.probe import fit_probe_stage

    train, val = _image_datasets(toy_data, augment=augment)
    if regime != "holdout":
        train = data.ImageDataset(train.samples + val.samples, train.transform)
        val = None
    return fit_probe_stage(model, head=head, train_dataset=train, val_dataset=val, num_classes=2, regime=regime,
                           settings=CacheSettings(batch_size=8, augment=augment), procs=Processes(device=CPU), autocast=None)


def test_the_probe_fits_the_head_once_and_gives_flags_and_modes_back(toy_data):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    flags = {n: n.startswith("layer4.") for n, _ in model.named_parameters()}  # whatever the caller had
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    model.train()
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    out = _probe(model, "fc", toy_data)
    assert out.acc >= 0.9 and out.validation == "holdout" and out.folds >= 2
    row = out.row.to_row()
    assert (row["epoch"], row["stage"], row["lr"]) == (0, "probe", None) and row["val_acc"] == out.acc
    assert out.message.startswith(f"probe: val acc {out.acc:.3f}") and "cross-validation" in out.message
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())  # BN statistics included
    with torch.no_grad():  # the head now separates the classes on the images themselves
        model.eval()
        x, y = next(iter(data.make_loader(_image_datasets(toy_data, augment="none")[1], batch_size=64)))
        assert (model(x).argmax(1) == y).float().mean() >= 0.9


def test_the_probe_in_the_cross_validated_regime_reports_the_k_fold_estimate(toy_data):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    out = _probe(model, "fc", toy_data, regime="cv5")
    assert out.validation == "cv5" and out.acc_std is not None and out.out_of_fold is not None
    n = sum(len(d) for d in _image_datasets(toy_data, augment="none"))
    assert out.out_of_fold.shape == (n, 2)  # every image, judged by a probe that never saw it
    assert "cross-validated acc" in out.message and out.row.extra["val_acc_std"] == out.acc_std


def test_a_head_with_hidden_layers_is_fitted_through_its_own_forward(toy_data):
    from regraft import surgery

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000)
    head = surgery.replace_head(model, 2, hidden=[8])
    before = model.get_submodule(head)[0].weight.detach().clone()
    out = _probe(model, head, toy_data, augment="none")
    assert not torch.equal(model.get_submodule(head)[0].weight, before)
    assert out.acc >= 0.75 and out.folds == 0 and "L2 0.001" in out.message


def test_the_cut_check_passes_under_bf16_autocast(toy_data):
    # a prepared model's forward runs in autocast; the split must be compared in the same numerics
    # (it was once compared in fp32 against the bf16 forward and the cache turned itself off)
    train, val = _image_datasets(toy_data, augment="none")
    model = TV.resnet18(weights=None, num_classes=2)
    cut = features.find_cut(model, trainable=_head_only("fc"))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731 - the steps' numerics
    cached = features.cache_features(cut, model, train, val, settings=CacheSettings(batch_size=8, augment="none"),
                                     device=CPU, autocast=bf16)
    assert cached is not None
    tr, va = cached
    assert len(tr) == len(train) and len(va) == len(val)
    # a wrong cut is still caught in bf16
    wrong = features.Cut(prefix=cut.prefix, rest=torch.nn.Identity(), after="layer4", family="wrong")
    assert "split model" in wrong.check(model, torch.rand(2, 3, 32, 32), autocast=bf16)
