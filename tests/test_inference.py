"""regraft.inference: one numerics and one decode path for validation, eval, predict and ONNX;
load_run on damaged runs; EMA weights; torchmetrics' metrics.

Runs are built without training (tests.helpers.make_run_folder); tests/test_inference_e2e.py
trains one and has the test-time augmentation tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from regraft.data.views import TTA, views
from regraft.errors import ConfigError, DataError, RunError
from regraft.inference import INFERENCE_NUMERICS, Numerics, evaluate_run, load_run, predict
from regraft.inference.numerics import eager, unwrap
from tests.helpers import make_run_folder, run_cli, user_error
from tests.imagegen import class_colour, make_image, make_photo

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run_folder(tmp_path_factory.mktemp("run") / "run", classes=CLASSES, size=32, ema=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """JPEGs of 300x400 and 400x300, a PNG, a grayscale JPEG and an EXIF-rotated one, per class folder."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for name in CLASSES:
        d = root / name
        d.mkdir()
        make_photo(class_colour(name), rng).save(d / "portrait.jpg", quality=90)
        make_photo(class_colour(name), rng, width=400, height=300).save(d / "landscape.jpg", quality=90)
        make_image(class_colour(name), 40, rng).save(d / "small.png")
    make_photo(class_colour("red"), rng).convert("L").save(root / "red" / "gray.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_photo(class_colour("blue"), rng, width=360, height=240).save(root / "blue" / "rotated.jpg", exif=exif.tobytes())
    return root


# ----------------------------------------------------------------------------- numerics


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def test_inference_numerics_are_fp32_channels_last_and_independent_of_the_weights_layout():
    model, x = _cnn(), torch.randn(4, 3, 16, 16)
    assert Numerics(precision="fp32", channels_last=True) == INFERENCE_NUMERICS
    out = INFERENCE_NUMERICS(model, x)
    assert out.dtype == torch.float32 and not out.requires_grad
    with torch.no_grad():
        want = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(out, want)
    cl_model = INFERENCE_NUMERICS.prepare(_cnn())
    assert cl_model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(INFERENCE_NUMERICS(cl_model, x), out)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))  # no Conv2d: inputs keep their layout (.view works)
    assert not INFERENCE_NUMERICS.uses_channels_last(mlp)
    assert INFERENCE_NUMERICS(mlp, torch.randn(2, 3, 4, 4)).shape == (2, 2)


def test_bf16_numerics_autocast_and_bad_precisions_say_the_choices():
    model, x = _cnn(), torch.randn(4, 3, 16, 16)
    bf16 = Numerics(precision="bf16")(model, x)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, INFERENCE_NUMERICS(model, x))
    assert torch.allclose(bf16, INFERENCE_NUMERICS(model, x), atol=0.1)
    with pytest.raises(ConfigError, match=r"--precision must be one of fp32, bf16, fp16; got 'fp8'"):
        Numerics(precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"--precision fp16 needs a CUDA GPU \(the model is on cpu\)"):
            Numerics(precision="fp16")(model, x)


def test_numerics_run_the_eager_module_under_accelerate_compile_and_ddp_wrappers():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    plain, x = _cnn(), torch.randn(4, 3, 16, 16)
    want = INFERENCE_NUMERICS(plain, x)
    AcceleratorState._reset_state()
    try:
        prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare(_cnn().eval())
        with torch.no_grad():
            bf16 = prepared(x).float()
        assert not torch.equal(bf16, want)  # Accelerate's forward runs in bf16 autocast
        assert torch.equal(INFERENCE_NUMERICS(prepared, x), want)  # validation computes what eval does
        with eager(prepared) as module:  # the original forward stands in for the call only
            assert module is prepared and module.forward == module._original_forward
        with torch.no_grad():
            assert torch.equal(prepared(x).float(), bf16)  # training's autocast is back
    finally:
        AcceleratorState._reset_state()
    compiled = torch.compile(plain)
    with eager(compiled) as module:
        assert module is plain
    assert unwrap(compiled) is plain and unwrap(nn.DataParallel(plain)) is plain


# ----------------------------------------------------------------------------- one decode path


class _FakeSession:
    def get_inputs(self):
        return [SimpleNamespace(name="input", shape=["batch", 3, 64, 64])]


def test_validation_eval_and_the_onnx_runtime_feed_identical_inputs(photos, tmp_path):
    """Validation's loader (with and without the decode cache), eval/predict's batches and the
    torch-free ONNX runtime compute bit-identical inputs, JPEG draft decoding included."""
    from regraft.data import DecodeCache, ImageDataset, build_transforms, make_loader
    from regraft.data.imageio import load_image
    from regraft.export.runtime import OnnxClassifier
    from regraft.inference.images import image_batches
    from regraft.zoo import DataConfig

    dcfg = DataConfig(input_size=(3, 64, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic", crop_pct=0.875)
    tf = build_transforms(dcfg, train=False)
    samples = [(str(p), 0) for p in sorted(photos.rglob("*.*"))]
    plain = torch.cat([x for x, _ in make_loader(ImageDataset(samples, tf, on_error="drop"), batch_size=4, workers=0)])
    cache = DecodeCache(ram_bytes="64M", cache_dir=tmp_path / "cache")
    cached = torch.cat([x for x, _ in make_loader(ImageDataset(samples, tf, cache=cache, on_error="drop"), batch_size=4, workers=0)])
    ours = torch.cat([b.views[0] for b in image_batches(samples, tf, batch_size=4, path_of=lambda s: s[0])])
    card = {"classes": ["a"], "preprocessing": {"input_size": [3, 64, 64], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                                                "interpolation": "bicubic", "crop_pct": 0.875}}
    runtime = OnnxClassifier(Path("m.onnx"), card, _FakeSession())
    onnx_inputs = torch.from_numpy(np.stack([runtime.load(p)[0] for p, _ in samples]))
    assert len(plain) == len(samples) == 11
    for got in (cached, ours, onnx_inputs, torch.stack([tf.load(p) for p, _ in samples])):
        assert torch.equal(got, plain)
    # the draft decode is what every path shares: a full-size decode of a big JPEG differs slightly
    big = str(photos / "red" / "portrait.jpg")
    assert not torch.equal(tf(load_image(big)), tf.load(big))
    assert torch.equal(torch.from_numpy(runtime.preprocess(load_image(big))), tf(load_image(big)))


def test_tta_views_are_the_centre_crop_its_mirror_and_the_corners():
    pixels = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    flip = views(pixels, (32, 32), tta="flip")
    assert len(flip) == 2 and np.array_equal(flip[0], pixels[4:36, 9:41]) and np.array_equal(flip[1], flip[0][:, ::-1])
    ten = views(pixels, (32, 32), tta=TTA.FLIP_CROPS)
    assert len(ten) == 10 and TTA.FLIP_CROPS.n_views == 10
    corners = [ten[i] for i in (2, 4, 6, 8)]
    for got, (t, left) in zip(corners, [(0, 0), (0, 18), (8, 0), (8, 18)], strict=True):
        assert np.array_equal(got, pixels[t : t + 32, left : left + 32])
    with pytest.raises(ConfigError, match=r"--tta must be one of none, flip, flip\+crops; got 'rotate'"):
        TTA.parse("rotate")


# ----------------------------------------------------------------------------- load_run


def _damage(run: Path, how: str) -> None:
    card = run / "model.json"
    if how == "truncated weights":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "header-only weights":
        (run / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    elif how == "invalid json":
        card.write_text(card.read_text()[:-20])
    elif how == "not utf-8":
        card.write_bytes(b"\xff\xfe" + card.read_bytes())
    elif how == "unknown architecture":
        data = json.loads(card.read_text())
        data["architecture"]["name"] = "no_such_net"
        card.write_text(json.dumps(data))
    elif how == "class count":
        data = json.loads(card.read_text())
        data["num_classes"] = 4
        card.write_text(json.dumps(data))
    elif how == "bad preprocessing":
        data = json.loads(card.read_text())
        data["preprocessing"]["crop_pct"] = 7
        card.write_text(json.dumps(data))
    elif how == "weights of another run":
        other = make_run_folder(run.parent / "other", classes=["a", "b"], size=32)
        shutil.copy(other / "model.safetensors", run / "model.safetensors")
    elif how == "non-finite weights":
        from safetensors.torch import load_file, save_file

        state = load_file(str(run / "model.safetensors"))
        state["fc.bias"][0] = float("nan")
        save_file(state, str(run / "model.safetensors"))
    elif how == "no model.json":
        card.unlink()


@pytest.mark.parametrize(("how", "match"), [
    ("truncated weights", r"model\.safetensors is damaged \(\d+ bytes; .*\): it may be truncated"),
    ("header-only weights", r"model\.safetensors is damaged"),
    ("invalid json", r"model\.json is damaged: invalid JSON \("),
    ("not utf-8", r"model\.json is damaged: not UTF-8 text"),
    ("unknown architecture", r"model\.json names architecture timm:no_such_net, which cannot be rebuilt here"),
    ("class count", r"model\.json is damaged: 'num_classes' is 4 but 'classes' names 3"),
    ("bad preprocessing", r"model\.json is damaged: 'preprocessing\.crop_pct' must be in \(0, 1\], got 7"),
    ("weights of another run", r"model\.safetensors does not fit the model its model\.json describes: 2 of another shape \(e\.g\. fc\.weight: \(2, 96\) vs \(3, 96\)\)"),
    ("non-finite weights", r"model\.safetensors holds non-finite values \(NaN or inf\) in 1 tensor\(s\), e\.g\. fc\.bias"),
    ("no model.json", r"is not a finished run: model\.json is missing"),
])
def test_every_damaged_run_file_is_one_run_error_naming_it(tmp_path, how, match):
    run = make_run_folder(tmp_path / "run", classes=CLASSES, size=32)
    _damage(run, how)
    with pytest.raises(RunError, match=match):
        load_run(run)


def test_the_cli_reports_a_damaged_run_in_one_line(tmp_path, photos):
    run = make_run_folder(tmp_path / "run", classes=CLASSES, size=32)
    _damage(run, "truncated weights")
    user_error(run_cli("predict", str(run), str(photos), "--device", "cpu"), "model.safetensors is damaged")
    user_error(run_cli("eval", str(run), "--data", str(photos), "--device", "cpu"), "model.safetensors is damaged")


def test_compiled_and_ddp_prefixed_weights_load_as_the_plain_model(run_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    want = load_run(run_dir).model
    x = torch.randn(2, 3, 32, 32)
    for prefix in ("_orig_mod.", "module.", "module._orig_mod."):
        run = tmp_path / prefix.replace(".", "_")
        shutil.copytree(run_dir, run)
        state = load_file(str(run / "model.safetensors"))
        save_file({prefix + k: v for k, v in state.items()}, str(run / "model.safetensors"))
        with torch.no_grad():
            assert torch.equal(load_run(run).model(x), want(x)), prefix


def test_ema_weights_are_selectable_and_a_run_without_them_says_how_to_get_them(run_dir, tmp_path, photos):
    from safetensors.torch import load_file

    ema = load_run(run_dir, weights="ema")
    assert ema.weights == "ema" and ema.weights_file.name == "model_ema.safetensors"
    assert torch.equal(ema.model.state_dict()["fc.weight"], load_file(str(run_dir / "model_ema.safetensors"))["fc.weight"])
    m = evaluate_run(run_dir, data=str(photos), device="cpu", weights="ema")
    assert m["weights"] == "ema" and m["summary"] is None
    no_ema = tmp_path / "no_ema"
    shutil.copytree(run_dir, no_ema)
    (no_ema / "model_ema.safetensors").unlink()
    with pytest.raises(RunError, match=r"has no EMA weights \(model_ema\.safetensors\): train with --ema 0\.999 to keep them, or use --weights best"):
        load_run(no_ema, weights="ema")
    with pytest.raises(ConfigError, match=r"--weights must be one of best, ema; got 'last'"):
        load_run(run_dir, weights="last")
    user_error(run_cli("eval", str(no_ema), "--weights", "ema", "--data", str(photos)), "has no EMA weights")


# ----------------------------------------------------------------------------- eval and predict


def test_predict_keeps_input_order_reports_unreadable_files_and_caps_topk(run_dir, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    files = [photos / "red" / "portrait.jpg", bad, photos / "blue" / "small.png"]
    results = predict(run_dir, files, topk=10, batch_size=2, device="cpu")
    assert [r["path"] for r in results] == [str(f) for f in files]
    assert results[1] == {"path": str(bad), "error": "cannot read image: not an image (or a format Pillow cannot read)"}
    assert len(results[0]["top"]) == 3 and abs(sum(t["prob"] for t in results[0]["top"]) - 1) < 1e-5
    with pytest.raises(ConfigError, match="--topk must be at least 1; got 0"):
        predict(run_dir, files, topk=0)
    with pytest.raises(RunError, match=r"model\.json is a file, not a run folder"):
        predict(run_dir / "model.json", files)
    (tmp_path / "junk" / "red").mkdir(parents=True)
    shutil.copy(bad, tmp_path / "junk" / "red" / "x.jpg")
    with pytest.raises(DataError, match=r"none of the 1 images in .*junk could be decoded \(e\.g\. .*x\.jpg\)"):
        evaluate_run(run_dir, data=str(tmp_path / "junk"), device="cpu")


def test_eval_on_a_folder_gives_torchmetrics_figures(run_dir, photos):
    import torchmetrics.functional.classification as tm

    m = evaluate_run(run_dir, data=str(photos), device="cpu", batch_size=4)
    assert m["n_images"] == 11 and m["skipped"] == [] and m["batch_size"] == 4 and m["tta"] is None
    results = predict(run_dir, [photos / c for c in CLASSES], device="cpu", topk=1)
    preds = torch.tensor([CLASSES.index(r["top"][0]["class"]) for r in results])
    targets = torch.tensor([CLASSES.index(Path(r["path"]).parent.name) for r in results])
    assert m["accuracy"] == pytest.approx(float((preds == targets).float().mean()))
    assert m["confusion_matrix"] == tm.multiclass_confusion_matrix(preds, targets, num_classes=3).tolist()


def test_metrics_loss_is_summed_per_batch_like_validation():
    from regraft.inference.metrics import classification_metrics, summed_loss

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(10, 3, generator=g), torch.randint(0, 3, (10,), generator=g)
    want = sum(float(nn.functional.cross_entropy(logits[a:b], targets[a:b], reduction="sum").double()) for a, b in ((0, 4), (4, 8), (8, 10)))
    assert summed_loss(logits, targets, batches=[4, 4, 2]) == pytest.approx(want, abs=0, rel=1e-15)
    m = classification_metrics(logits, targets, ["a", "b", "c"], batches=[4, 4, 2])
    assert m["loss"] == pytest.approx(want / 10, rel=1e-15) and m["n_images"] == 10
    assert classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ["a", "b", "c"])["n_images"] == 0
