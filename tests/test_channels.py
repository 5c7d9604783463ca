"""Images that are not 8-bit RGB (docs/channels.md): how each kind of file becomes C channels, 16
bits kept to the model's input on every path, the cache's dtype, the run's inputs (bits, mean/std),
the first conv built and adapted, and the model card's checks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
import timm
import torch
from PIL import Image

from regraft.data import DecodeCache, ImageDataset, build_transforms, make_loader
from regraft.data.imageio import (
    ImageDecodeError,
    ResizeSpec,
    decode_resized,
    load_pixels,
    probe_source,
    read_image_bytes,
)
from regraft.data.inputs import detect_pixels, input_config
from regraft.data.pixels import RGB8, PixelFormat
from regraft.data.views import center_crop, normalize_affine, read_eval_pixels, to_input
from regraft.errors import ConfigError, DataError
from regraft.zoo import DataConfig
from tests.imagegen import band_image, save_bands

GRAY8, GRAY16 = PixelFormat(1, 8), PixelFormat(1, 16)


def _pixels(path, fmt: PixelFormat) -> np.ndarray:
    return load_pixels(path, fmt)


# ----------------------------------------------------------------------------- reading rules


def test_grayscale_pngs_keep_their_own_bits(tmp_path):
    values = np.arange(0, 65535, 1023, dtype=np.uint16)[:64].reshape(8, 8)
    deep = save_bands(values[..., None], tmp_path / "deep.png")  # I;16
    gray = save_bands((values // 257).astype(np.uint8)[..., None], tmp_path / "gray.png")  # L
    assert Image.open(deep).mode == "I;16" and Image.open(gray).mode == "L"
    assert np.array_equal(_pixels(deep, GRAY16)[..., 0], values)  # every bit kept
    assert np.array_equal(_pixels(gray, GRAY8)[..., 0], values // 257)
    assert np.array_equal(_pixels(gray, GRAY16)[..., 0], (values // 257).astype(np.uint16) * 257)  # 8 bits, exactly
    assert np.array_equal(_pixels(deep, GRAY8)[..., 0], np.rint(values / 257).astype(np.uint8))
    assert _pixels(deep, RGB8).shape == (8, 8, 3)  # without in_chans: RGB as always


def test_a_colour_image_in_a_one_channel_run_is_read_as_its_luminance(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = save_bands(rgb, tmp_path / "colour.png")
    assert np.array_equal(_pixels(path, GRAY8)[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    gray_as_rgb = save_bands(np.repeat(rgb[..., :1], 3, axis=-1), tmp_path / "gray_as_rgb.png")
    assert np.array_equal(_pixels(gray_as_rgb, GRAY8)[..., 0], rgb[..., 0])  # R = G = B comes back exactly
    assert np.array_equal(_pixels(path, GRAY16)[..., 0], np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257)


def test_rgba_cmyk_and_la_give_their_own_bands_raw(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # transparent: its colour is a band's value here, not composited on white
    assert np.array_equal(_pixels(save_bands(rgba, tmp_path / "a.png"), PixelFormat(4)), rgba)
    la = rng.integers(0, 256, (6, 7, 2), dtype=np.uint8)
    assert np.array_equal(_pixels(save_bands(la, tmp_path / "la.png"), PixelFormat(2)), la)
    cmyk = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    assert np.array_equal(_pixels(tmp_path / "c.tif", PixelFormat(4)), cmyk)
    assert np.array_equal(_pixels(tmp_path / "a.png", PixelFormat(4, 16)), rgba.astype(np.uint16) * 257)


def test_files_whose_channels_do_not_fit_are_refused_naming_the_file(tmp_path):
    rgb = save_bands(np.zeros((4, 4, 3), np.uint8), tmp_path / "rgb.png")
    with pytest.raises(ImageDecodeError, match=rf"^cannot use {rgb}: it has 3 channels \(RGB\) but the model takes 4; use images with") as info:
        _pixels(rgb, PixelFormat(4))
    assert info.value.kind == "channels"
    np.save(tmp_path / "five.npy", np.zeros((6, 6, 5), np.uint8))
    with pytest.raises(ImageDecodeError, match=r"an array of shape \(6, 6, 5\): neither its first nor its last axis holds the model's 4"):
        _pixels(tmp_path / "five.npy", PixelFormat(4))
    np.save(tmp_path / "float.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ImageDecodeError, match=r"a float32 array; regraft reads uint8 and uint16 arrays") as info:
        _pixels(tmp_path / "float.npy", PixelFormat(4))
    assert info.value.kind == "unsupported"
    np.save(tmp_path / "flat.npy", np.zeros(16, np.uint8))
    with pytest.raises(ImageDecodeError, match=r"regraft reads \(H, W\), \(H, W, C\) and \(C, H, W\) arrays"):
        _pixels(tmp_path / "flat.npy", RGB8)


def test_npy_arrays_are_read_with_their_band_axis_first_or_last(tmp_path):
    hwc = np.random.default_rng(2).integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    np.save(tmp_path / "hwc.npy", hwc)
    np.save(tmp_path / "chw.npy", np.moveaxis(hwc, -1, 0))
    np.save(tmp_path / "big_endian.npy", hwc.astype(">u2"))
    for name in ("hwc", "chw", "big_endian"):
        assert np.array_equal(_pixels(tmp_path / f"{name}.npy", PixelFormat(4, 16)), hwc), name
    np.save(tmp_path / "plane.npy", hwc[..., 0])
    assert np.array_equal(_pixels(tmp_path / "plane.npy", PixelFormat(3, 16)), np.repeat(hwc[..., :1], 3, axis=-1))


@pytest.mark.parametrize("layout", ["contig", "separate", "pages"])
def test_multiband_tiffs_are_read_whole_with_tifffile(tmp_path, layout):
    bands = np.random.default_rng(3).integers(0, 65536, (6, 9, 4), dtype=np.uint16)
    path = tmp_path / "x.tif"
    if layout == "contig":
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    elif layout == "separate":  # as GDAL and rasterio write bands
        tifffile.imwrite(path, np.moveaxis(bands, -1, 0), photometric="minisblack", planarconfig="separate")
    else:  # tifffile's default for this shape: 6 pages of 9x4, which Pillow reads as one gray strip
        tifffile.imwrite(path, bands, photometric="minisblack")
    assert np.array_equal(_pixels(path, PixelFormat(4, 16)), bands)
    info = probe_source(path)
    assert (info.format, info.depth, info.shape is not None) == ("TIFF", 16, True)
    assert info.channel_problem(4) is None and "no axis of 5 channels" in info.channel_problem(5)


def test_without_tifffile_a_tiff_pillow_would_misread_is_refused(tmp_path, monkeypatch):
    bands = np.zeros((6, 9, 4), np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", bands)  # RGBA of 16 bits: Pillow would give 8
    Image.fromarray(np.full((6, 9, 3), 7, np.uint8)).save(tmp_path / "rgb.tif")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(ImageDecodeError, match=r"a TIFF with 4 band\(s\) of 16 bits, which Pillow cannot read as stored; install tifffile") as info:
        _pixels(tmp_path / "x.tif", PixelFormat(4, 16))
    assert info.value.kind == "unsupported"
    assert _pixels(tmp_path / "rgb.tif", RGB8)[0, 0].tolist() == [7, 7, 7]  # TIFFs Pillow reads as stored need nothing more


def test_headers_say_bands_and_bits_without_decoding(tmp_path):
    save_bands(np.zeros((4, 5, 1), np.uint16), tmp_path / "d.png")
    np.save(tmp_path / "b.npy", np.zeros((3, 4, 5), np.uint8))
    deep, arr = probe_source(tmp_path / "d.png"), probe_source(tmp_path / "b.npy")
    assert (deep.mode, deep.depth, deep.bands, deep.width, deep.height) == ("I;16", 16, 1, 5, 4)
    assert (arr.mode, arr.format, arr.depth, arr.shape) == ("uint8 (3, 4, 5)", "NPY", 8, (3, 4, 5))
    assert arr.channel_problem(3) is None and deep.channel_problem(3) is None
    assert deep.channel_problem(4) == "it has 1 channel (I;16), not 4"


# ----------------------------------------------------------------------------- 16 bits to the input


def _deep_pair(tmp_path):
    """Two 16-bit images 100 apart (under one 8-bit step of 257): distinct only if 16 bits survive."""
    paths = []
    for name, level in (("a", 30000), ("b", 30100)):
        paths.append(save_bands(np.full((16, 16, 1), level, np.uint16), tmp_path / f"{name}.png"))
    return paths


def test_16_bit_values_reach_the_model_input_alike_on_every_path(tmp_path):
    paths = _deep_pair(tmp_path)
    dcfg = DataConfig(input_size=(1, 16, 16), mean=(0.5,), std=(0.25,), crop_pct=1.0, bit_depth=16)
    tf = build_transforms(dcfg, train=False)
    loaded = [tf.load(str(p)) for p in paths]
    for x, level in zip(loaded, (30000, 30100), strict=True):
        torch.testing.assert_close(x, torch.full((1, 16, 16), (level / 65535 - 0.5) / 0.25), rtol=0, atol=1e-6)
    assert float(loaded[1][0, 0, 0] - loaded[0][0, 0, 0]) == pytest.approx(100 / 65535 / 0.25, rel=1e-3)
    scale, offset = normalize_affine(dcfg.mean, dcfg.std, max_value=65535)
    numpy_path = [to_input(center_crop(read_eval_pixels(p, tf.resize), tf.size), scale, offset) for p in paths]  # the ONNX runtime's
    samples = [(str(p), i) for i, p in enumerate(paths)]
    cached = ImageDataset(samples, tf, cache=DecodeCache(ram_bytes="1M", cache_dir=tmp_path / "c"), on_error="drop")
    on_disk = ImageDataset(samples, tf, cache=DecodeCache(ram_bytes=0, cache_dir=tmp_path / "c"), on_error="drop")
    for i, x in enumerate(loaded):
        assert np.array_equal(numpy_path[i], x.numpy())  # bit for bit
        assert torch.equal(ImageDataset(samples, tf)[i][0], x) and torch.equal(cached[i][0], x) and torch.equal(on_disk[i][0], x)
    eight = build_transforms(DataConfig(input_size=(1, 16, 16), mean=(0.5,), std=(0.25,), crop_pct=1.0), train=False)
    assert torch.equal(eight.load(str(paths[0])), eight.load(str(paths[1])))  # what 8 bits would have lost


def test_the_cache_stores_16_bit_pixels_in_two_bytes_under_their_own_folder(tmp_path):
    rng = np.random.default_rng(4)
    paths = [str(save_bands(band_image(i % 2, channels=4, depth=16, size=20, rng=rng), tmp_path / f"{i}.tif")) for i in range(3)]
    resize = ResizeSpec(shorter=16, pixels=PixelFormat(4, 16))
    cache = DecodeCache(ram_bytes="1M", cache_dir=tmp_path / "c")
    images = cache.fill(paths, resize=resize)
    assert images.ram_bytes == 3 * 16 * 16 * 4 * 2
    for i, p in enumerate(paths):
        got = images.get(i)
        assert got.dtype == np.uint16 and np.array_equal(got, decode_resized(read_image_bytes(p), name=p, resize=resize))
    spilled = DecodeCache(ram_bytes=0, cache_dir=tmp_path / "c").fill(paths, resize=resize)
    assert all(np.array_equal(spilled.get(i), images.get(i)) for i in range(3))
    assert cache.folder(resize).name == "v1-s16-bilinear-c4-16bit"
    assert cache.folder(ResizeSpec(shorter=16)).name == "v1-s16-bilinear"  # 8-bit RGB entries are where they were


def test_worker_batches_of_16_bit_crops_equal_the_in_process_ones(tmp_path):
    rng = np.random.default_rng(5)
    samples = [(str(save_bands(band_image(i % 2, channels=4, depth=16, size=24, rng=rng), tmp_path / f"{i}.npy")), i % 2) for i in range(6)]
    dcfg = DataConfig(input_size=(4, 16, 16), mean=(0.5,) * 4, std=(0.2,) * 4, bit_depth=16)
    ds = ImageDataset(samples, build_transforms(dcfg, train=True, augment="light"))
    here = [x for x, _ in make_loader(ds, batch_size=3, shuffle=True, seed=1, workers=0)]
    there = [x for x, _ in make_loader(ds, batch_size=3, shuffle=True, seed=1, workers=1)]
    assert here[0].shape == (3, 4, 16, 16) and all(torch.equal(a, b) for a, b in zip(here, there, strict=True))


def test_strong_augment_works_on_one_channel_and_is_refused_for_four():
    deep = build_transforms(DataConfig(input_size=(1, 16, 16), mean=(0.5,), std=(0.2,), bit_depth=16), train=True, augment="strong")
    pixels = np.random.default_rng(6).integers(0, 65536, (20, 20, 1), dtype=np.uint16)
    crops = [deep.post(pixels) for _ in range(20)]
    assert all(c.dtype == torch.int32 and c.shape == (1, 16, 16) and int(c.min()) >= 0 and int(c.max()) <= 65535 for c in crops)
    with pytest.raises(ConfigError, match="augment strong .TrivialAugmentWide. works on 1 or 3 channels; this run reads 4: use augment light"):
        build_transforms(DataConfig(input_size=(4, 16, 16), mean=(0.5,) * 4, std=(0.2,) * 4), train=True, augment="strong")
    with pytest.raises(ConfigError, match=r"mean needs 4 values \(one per input channel: the model takes 4\); got \[0.5, 0.5, 0.5\]"):
        build_transforms(DataConfig(input_size=(4, 16, 16), mean=(0.5,) * 3, std=(0.2,) * 4), train=False)


# ----------------------------------------------------------------------------- the run's inputs


def test_a_run_keeps_16_bits_when_any_file_has_them_and_stops_on_a_file_that_does_not_fit(tmp_path):
    eight = save_bands(np.zeros((4, 4, 1), np.uint8), tmp_path / "a.png")
    deep = save_bands(np.zeros((4, 4, 1), np.uint16), tmp_path / "b.png")
    assert detect_pixels([str(eight)], channels=1) == GRAY8
    assert detect_pixels([str(eight), str(deep)], channels=1) == GRAY16
    rgb = save_bands(np.zeros((4, 4, 3), np.uint8), tmp_path / "c.png")
    assert detect_pixels([str(rgb)], channels=1) == GRAY8  # converted to luminance, as documented
    with pytest.raises(DataError, match=rf"^1 of 2 images cannot be read as 4 channels \(e.g. {rgb}: it has 3 channels \(RGB\), not 4\); "
                                         r"remove them, or set --in-chans to their channel count"):
        detect_pixels([str(save_bands(np.zeros((4, 4, 4), np.uint8), tmp_path / "d.png")), str(rgb)], channels=4)


def test_mean_and_std_come_from_the_recipe_the_weights_their_gray_or_the_data(tmp_path):
    rng = np.random.default_rng(7)
    paths = [str(save_bands(band_image(i % 2, channels=4, depth=16, size=12, rng=rng), tmp_path / f"{i}.npy")) for i in range(4)]
    weights = DataConfig(input_size=(3, 12, 12), crop_pct=1.0)
    assert input_config(weights, channels=3, paths=[], seed=0).mean == weights.mean
    gray = input_config(weights, channels=1, paths=[], seed=0)
    assert gray.mean == pytest.approx((np.mean(weights.mean),)) and gray.mean_std_from == "weights: the mean of the 3 RGB values"
    measured = input_config(weights, channels=4, paths=paths, seed=0)
    stack = np.stack([np.load(p) for p in paths]).reshape(-1, 4) / 65535.0
    assert measured.mean == pytest.approx(tuple(stack.mean(0)), abs=1e-9) and measured.std == pytest.approx(tuple(stack.std(0)), abs=1e-9)
    assert (measured.mean_std_from, measured.bit_depth, measured.input_size) == ("data: 4 of 4 training images", 16, (4, 12, 12))
    given = input_config(weights, channels=4, paths=paths, mean=[0.1] * 4, std=[0.2] * 4)
    assert (given.mean, given.mean_std_from) == ((0.1,) * 4, "config")


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("name", ["timm:test_resnet", "resnet18"])
@pytest.mark.parametrize("channels", [1, 4])
def test_create_model_adapts_the_pretrained_first_conv_and_loads_the_rest_as_it_was(name, channels):
    import regraft as rg
    from regraft import zoo

    torch.manual_seed(0)
    source = {k: v.clone() for k, v in zoo.build(name).state_dict().items()}
    model = rg.create_model(name, weights=source, num_classes=2, in_chans=channels)
    conv = zoo.first_conv(model)
    state, report = model.state_dict(), model.regraft_load_report
    assert torch.equal(state[f"{conv}.weight"], timm.models.adapt_input_conv(channels, source[f"{conv}.weight"].clone()))
    head = report.head
    assert all(torch.equal(state[k], v) for k, v in source.items() if k != f"{conv}.weight" and not k.startswith(head + "."))
    out, _, *kernel = source[f"{conv}.weight"].shape
    how = "the 3 channels' filters summed into 1 channel" if channels == 1 else \
        "channel i takes the RGB filter of channel i mod 3, all scaled by 3/4 (4 channels from 3)"
    assert report.adapted == {f"{conv}.weight": f"{[out, 3, *kernel]} -> {[out, channels, *kernel]}: {how}"}
    assert model.eval()(torch.zeros(1, channels, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_0", "densenet121"])
def test_torchvision_models_get_a_first_conv_of_in_chans(name):
    from regraft import zoo
    from regraft.errors import ModelError

    model = zoo.build(name, in_chans=2).eval()
    assert model.get_submodule(zoo.first_conv(model)).in_channels == 2
    assert model(torch.zeros(1, 2, 64, 64)).shape == (1, 1000)
    with pytest.raises(ModelError, match="in_chans must be a positive number of input channels; got 0"):
        zoo.build(name, in_chans=0)


# ----------------------------------------------------------------------------- config, CLI, model card


def test_in_chans_is_range_checked_and_mean_std_must_match_it():
    from regraft.config import Config

    assert Config.from_dict({"in_chans": 4}).in_chans == 4
    with pytest.raises(ConfigError, match="in_chans must be at least 1 and at most 256; got 0"):
        Config.from_dict({"in_chans": 0})
    with pytest.raises(ConfigError, match="mean must list one number per input channel: in_chans is 4, got 3 values"):
        Config.from_dict({"in_chans": 4, "mean": [0.5] * 3, "std": [0.2] * 3})


def test_train_refuses_a_bad_in_chans_in_one_line(tmp_path):
    from tests.helpers import run_cli, user_error

    user_error(run_cli("train", str(tmp_path), "--model", "test_resnet", "--in-chans", "300"), "in_chans must be at least 1 and at most 256; got 300")


def _card(**pre):
    base = {"input_size": [4, 32, 32], "mean": [0.5] * 4, "std": [0.2] * 4, "interpolation": "bilinear", "crop_pct": 0.9,
            "channels": 4, "bit_depth": 16, "mode": "bands;16"}
    return {"architecture": {"zoo": "timm", "name": "test_resnet"}, "classes": ["a", "b"], "num_classes": 2,
            "preprocessing": {**base, **pre}}


def test_the_model_card_must_say_how_its_images_are_read_consistently():
    from regraft.inference.card import card_problem, pixel_format

    assert card_problem(_card()) is None and pixel_format(_card()) == PixelFormat(4, 16)
    assert card_problem(_card(mean=[0.5] * 3)) == "'preprocessing.mean' must be 4 numbers (one per input channel), got [0.5, 0.5, 0.5]"
    assert card_problem(_card(channels=3)) == "'preprocessing.channels' is 3 but 'input_size' starts with 4"
    assert card_problem(_card(bit_depth=12)) == "'preprocessing.bit_depth' must be 8 or 16, got 12"
    assert card_problem(_card(mode="RGB")) == "'preprocessing.mode' is 'RGB' but 4 channel(s) at 16 bits read as 'bands;16'"
    old = _card(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.2] * 3)  # a card from before in_chans
    for key in ("channels", "bit_depth", "mode"):
        del old["preprocessing"][key]
    assert card_problem(old) is None and pixel_format(old) == RGB8


def test_report_images_show_16_bit_crops_and_the_first_three_of_more_bands():
    from regraft.report import to_image

    deep = torch.full((1, 4, 4), 65535, dtype=torch.int32)
    assert to_image(deep).tolist() == np.full((4, 4), 255).tolist()
    bands = torch.zeros((4, 6, 6), dtype=torch.uint8)
    bands[3] = 255  # the 4th band is not shown
    assert to_image(bands).shape == (6, 6, 3) and to_image(bands).max() == 0
    normalised = torch.zeros((4, 5, 5))
    assert to_image(normalised, mean=(0.5,) * 4, std=(0.2,) * 4).tolist() == np.full((5, 5, 3), 128).tolist()
