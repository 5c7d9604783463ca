"""Feature caching: the cut reproduces the forward pass, cached training equals uncached, the probe."""

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
from regraft.freezing import apply_bn_policy, freeze
from regraft.training import loop as engine

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
    cfg = Config(batch_size=8, augment="light", feature_views=3, seed=2)
    accelerator = engine.make_accelerator(device="cpu", precision="fp32")  # compared exactly with fp32 below
    tr, va = features.cache_features(cut, model, train, val, cfg=cfg, accelerator=accelerator)
    assert tr.views == 3 and va.views == 1 and len(tr) == len(train) and len(va) == len(val)
    plain = data.ImageDataset(train.samples, val.transform)
    aug = data.make_loader(train, batch_size=8, shuffle=False, seed=2, workers=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tr.features[0], torch.cat([cut.prefix(x) for x, _ in data.make_loader(plain, batch_size=8)]))
        for k in (1, 2):
            aug.batch_sampler.set_epoch(k - 1)
            torch.testing.assert_close(tr.features[k], torch.cat([cut.prefix(x) for x, _ in aug]))


# ------------------------------------------------------------------ cached training == uncached


def _plan(model: nn.Module):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    return SimpleNamespace(optimizer=opt, scheduler=None, begin_epoch=lambda epoch: [], state_dict=lambda: {}, unfreeze=None)


def _fit(module, plan, train_loader, val_loader, acc):
    return engine.fit(module, plan, train_loader, val_loader, epochs=3, accelerator=acc, seed=0,
                      after_train_mode=apply_bn_policy)


def test_cached_training_gives_the_losses_and_weights_of_uncached_training(toy_data):
    """ResNet-18 with layer4 + fc training: BatchNorm trains in the rest, frozen BN in the prefix."""
    train, val = _image_datasets(toy_data, augment="none")
    acc = engine.make_accelerator(device="cpu")
    results = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = TV.resnet18(weights=None, num_classes=2)
        freeze(model, train=["layer4"], head="fc")
        plan = _plan(model)
        if cached:
            cut = features.find_cut(model)
            caches = features.cache_features(cut, model, train, val, cfg=Config(batch_size=8, augment="none"), accelerator=acc)
            tl, vl = features.feature_loaders(*caches, batch_size=8, seed=0)
            state = _fit(cut.rest, plan, tl, vl, acc)
        else:
            tl, vl = (data.make_loader(ds, batch_sampler=EpochBatchSampler(len(ds), batch_size=8, shuffle=s, seed=0), batch_size=8,
                                       shuffle=s, workers=0) for ds, s in ((train, True), (val, False)))
            state = _fit(model, plan, tl, vl, acc)
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
    acc = engine.make_accelerator(device="cpu")
    got = features.train_with_cache(model, plan=plan, train_dataset=train, val_dataset=val, cfg=_cfg(toy_data), accelerator=acc)
    assert got is not None
    assert len(got.train_loader) == len(EpochBatchSampler(len(train), batch_size=8, shuffle=True))
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    before = model.fc.weight.detach().clone()
    engine.fit(got.module, plan, got.train_loader, got.val_loader, epochs=2, accelerator=acc)
    assert not torch.equal(model.fc.weight, before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"feature_cache": False}, "feature_cache is false"),
        ({"strategy": "gradual"}, "the plan changes what is frozen during the run"),
        ({"unfreeze": [{"epoch": 1, "train": "all"}]}, "the plan changes what is frozen during the run"),
        ({"mixup": 0.2}, "mixup and cutmix mix images, not features"),
    ],
)
def test_train_with_cache_declines_when_the_plan_or_config_rules_it_out(toy_data, overrides, reason, caplog):
    train, val = _image_datasets(toy_data, augment="none")
    model = timm.create_model("test_resnet", num_classes=2)
    freeze(model, head="fc")
    acc = engine.make_accelerator(device="cpu")
    with caplog.at_level(logging.INFO, logger="regraft"):
        got = features.train_with_cache(model, plan=_plan(model), train_dataset=train, val_dataset=val,
                                        cfg=_cfg(toy_data, **overrides), accelerator=acc)
    assert got is None and f"feature cache off: {reason}" in caplog.text


# --------------------------------------------------------------------------- the linear probe


class _Recorder(engine.Callback):
    def __init__(self) -> None:
        self.rows, self.messages = [], []

    def on_epoch_end(self, result) -> None:
        self.rows.append(result)

    def on_message(self, text: str) -> None:
        self.messages.append(text)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_linear_probe_fits_the_head_and_gives_the_flags_back(toy_data, cache):
    train, val = _image_datasets(toy_data, augment="light")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    flags = {n: n.startswith("layer4.") for n, _ in model.named_parameters()}  # whatever the caller had
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    model.train()
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    rec = _Recorder()
    # uncached epochs run the whole network: fewer of them
    cfg = _cfg(toy_data, augment="light", feature_views=3, lp_epochs=30 if cache else 5, feature_cache=cache)
    from regraft.training.probe import linear_probe

    result = linear_probe(model, head="fc", train_dataset=train, val_dataset=val, cfg=cfg,
                                   accelerator=engine.make_accelerator(device="cpu"), callbacks=[rec])
    assert result.best_val_acc >= 0.9 and result.cached is cache
    where = "on cached features" if cache else "through the frozen network"
    assert result.message.startswith(f"linear probe: {result.epochs} epochs {where}, val acc {result.best_val_acc:.3f}")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())  # BN statistics included
    assert [r["stage"] for r in result.history] == ["probe"] * result.epochs == [r.stage for r in rec.rows]
    assert min(r["val_loss"] for r in result.history) == pytest.approx(result.best_val_loss)
    if cache:
        # the un-augmented images and feature_views - 1 = 2 augmented views
        assert any("24 images × 3 view(s)" in m for m in rec.messages)


def test_the_cut_check_passes_under_bf16_autocast(toy_data):
    # a prepared model's forward runs in autocast; the split must be compared in the same numerics
    # (it was once compared in fp32 against the bf16 forward and the cache turned itself off)
    train, val = _image_datasets(toy_data, augment="none")
    model = TV.resnet18(weights=None, num_classes=2)
    cut = features.find_cut(model, trainable=_head_only("fc"))
    accelerator = engine.make_accelerator(device="cpu", precision="bf16")
    model = accelerator.prepare(model)
    cached = features.cache_features(cut, model, train, val, cfg=Config(batch_size=8, augment="none"), accelerator=accelerator)
    assert cached is not None
    tr, va = cached
    assert len(tr) == len(train) and len(va) == len(val)
    # a wrong cut is still caught in bf16
    wrong = features.Cut(prefix=cut.prefix, rest=torch.nn.Identity(), after="layer4", family="wrong")
    assert "split model" in wrong.check(model, torch.rand(2, 3, 32, 32), autocast=accelerator.autocast)
