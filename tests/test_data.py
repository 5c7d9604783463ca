"""regraft.data: discovery and splits, CSVs, decoding every image mode, transforms, the decode
cache (identical tensors to the uncached path), skipping bad files, reproducible loaders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from regraft.data import (
    DecodeCache,
    ImageDataset,
    ImageDecodeError,
    ResizeSpec,
    build_transforms,
    check_readable,
    decode_resized,
    discover,
    load_image,
    make_loader,
    mixup_cutmix,
    parse_bytes,
    read_skip_log,
    sample_batch,
)
from regraft.data.imageio import read_image_bytes
from regraft.errors import ConfigError, DataError
from regraft.zoo import DataConfig
from tests.helpers import BAD_KINDS, jpeg_bytes, make_image_folder, make_messy_folder

SMALL = DataConfig(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.875)


# ----------------------------------------------------------------------------- a messy folder


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "messy"
    return root, make_messy_folder(root)




# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("val_name", ["val", "valid", "test"])
def test_split_layouts(tmp_path, val_name):
    root = make_image_folder(tmp_path / "d", classes=("b", "a", "c"), per_class=3, size=16, val_name=val_name, val_per_class=2)
    splits = discover(root)
    assert splits.layout == f"split:{val_name}"
    assert splits.classes == ["a", "b", "c"]  # sorted folder names
    assert splits.counts("train") == [3, 3, 3] and splits.counts("val") == [2, 2, 2]
    assert all(Path(s.path).parent.name == splits.classes[s.label] for s in splits.train + splits.val)


def test_flat_split_is_stratified_deterministic_and_per_class(tmp_path, flat_data):
    a = discover(flat_data, val_fraction=0.2, seed=0)
    assert a.layout == "flat-split"
    assert a.counts("val") == [2, 2, 2] and a.counts("train") == [8, 8, 8]
    assert discover(flat_data, val_fraction=0.2, seed=0) == a
    assert {s.path for s in discover(flat_data, val_fraction=0.2, seed=1).val} != {s.path for s in a.val}
    assert not {s.path for s in a.train} & {s.path for s in a.val}
    # adding images to one class does not move another class's split
    make_image_folder(flat_data, classes=("red",), per_class=14, size=32, split=False, seed=5)
    b = discover(flat_data, val_fraction=0.2, seed=0)
    assert [s for s in b.val if s.label == 0] == [s for s in a.val if s.label == 0]


def test_small_classes_get_one_val_image_and_a_single_image_stays_in_train(tmp_path):
    root = tmp_path / "d"
    make_image_folder(root, classes=("two",), per_class=2, size=16, split=False)
    make_image_folder(root, classes=("one",), per_class=1, size=16, split=False)
    splits = discover(root, val_fraction=0.1)
    assert splits.counts("train") == [1, 1] and splits.counts("val") == [0, 1]


def test_train_folder_without_val_is_split(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=16, split=False)
    shutil.move(str(root), str(tmp_path / "tmp"))
    (tmp_path / "d").mkdir()
    shutil.move(str(tmp_path / "tmp"), str(tmp_path / "d" / "train"))
    splits = discover(tmp_path / "d")
    assert splits.layout == "flat-split" and splits.counts("val") == [1, 1]


def test_classes_file_sets_order_and_root_classes_txt_is_used(tmp_path, toy_data):
    (tmp_path / "order.txt").write_text("# my order\nred\n\nblue\n")
    assert discover(toy_data, classes_file=tmp_path / "order.txt").classes == ["red", "blue"]
    (toy_data / "classes.txt").write_text("red\nblue\n")
    splits = discover(toy_data)
    assert splits.classes == ["red", "blue"]
    assert all(Path(s.path).parent.name == splits.classes[s.label] for s in splits.train)


def test_hidden_and_non_image_files_are_ignored(messy):
    root, f = messy
    splits = discover(root)
    paths = {s.path for s in splits.train + splits.val}
    for kind in ("hidden", "appledouble", "hidden_dir", "notes"):
        assert str(f[kind]) not in paths
    assert str(f["notes"]) in splits.ignored
    assert str(f["truncated"]) in paths  # bad images are kept: decoding skips them later


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda r: None, "data folder not found"),
        (lambda r: r.mkdir(), "no class folders in"),
        (lambda r: (r / "train" / "a").mkdir(parents=True), "no class folders in .*val|class 'a' has no images"),
    ],
)
def test_unusable_folders_raise(tmp_path, setup, match):
    root = tmp_path / "d"
    setup(root)
    if (root / "train").exists():
        (root / "val").mkdir()
    with pytest.raises(DataError, match=match):
        discover(root)


def test_empty_class_and_foreign_val_class_raise(tmp_path, toy_data):
    (toy_data / "train" / "green").mkdir()
    with pytest.raises(DataError, match=r"class 'green' has no images in .*train/green: add images or remove the folder"):
        discover(toy_data)
    (toy_data / "train" / "green").rmdir()
    make_image_folder(toy_data / "val", classes=("purple",), per_class=2, size=16, split=False)
    with pytest.raises(DataError, match=r"class folders not in the class list: purple"):
        discover(toy_data)


def test_classes_file_must_match_folders(tmp_path, toy_data):
    (tmp_path / "c.txt").write_text("blue\n")
    with pytest.raises(DataError, match="class folders not in the class list: red"):
        discover(toy_data, classes_file=tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("blue\nred\ngreen\n")
    with pytest.raises(DataError, match="class 'green' has no folder"):
        discover(toy_data, classes_file=tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("blue\nblue\n")
    with pytest.raises(DataError, match="more than once"):
        discover(toy_data, classes_file=tmp_path / "c.txt")


# ----------------------------------------------------------------------------- CSV


def _csv_root(tmp_path: Path) -> Path:
    root = make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=4, size=16, split=False)
    return root


def test_csv_with_header_names_and_val_csv(tmp_path):
    root = _csv_root(tmp_path)
    (root / "train.csv").write_text("path,label\n" + "".join(f"cat/cat_{i:03d}.png,cat\ndog/dog_{i:03d}.png,dog\n" for i in range(3)))
    (root / "val.tsv").write_text("cat/cat_003.png\tcat\ndog/dog_003.png\tdog\n")
    splits = discover(root, train_csv="train.csv", val_csv="val.tsv")
    assert splits.layout == "csv" and splits.classes == ["cat", "dog"]
    assert splits.counts("train") == [3, 3] and splits.counts("val") == [1, 1]
    assert all(Path(s.path).is_file() for s in splits.train + splits.val)


def test_csv_integer_labels_index_the_classes_file(tmp_path):
    root = _csv_root(tmp_path)
    (root / "names.txt").write_text("dog\ncat\n")
    (root / "train.csv").write_text("".join(f"cat/cat_{i:03d}.png,1\ndog/dog_{i:03d}.png,0\n" for i in range(4)))
    splits = discover(root, train_csv=root / "train.csv", classes_file="names.txt")
    assert splits.classes == ["dog", "cat"]
    assert all(Path(s.path).parent.name == splits.classes[s.label] for s in splits.train + splits.val)
    assert splits.counts("val") == [1, 1]  # no val CSV: split like a flat folder
    (root / "train.csv").write_text("cat/cat_000.png,cat\ndog/dog_000.png,7\n")
    with pytest.raises(DataError, match=r"train\.csv:2: label '7' is not one of the 2 classes"):
        discover(root, train_csv="train.csv", classes_file="names.txt")


def test_csv_bad_label_row_is_named(tmp_path):
    root = _csv_root(tmp_path)
    (root / "train.csv").write_text("file,class\ncat/cat_000.png,cat\ndog/dog_000.png,dog\n")
    (root / "val.csv").write_text("cat/cat_001.png,cat\ndog/dog_001.png,horse\n")
    with pytest.raises(DataError, match=r"val\.csv:2: label 'horse' is not one of the 2 classes \(cat, dog\)"):
        discover(root, train_csv="train.csv", val_csv="val.csv")
    with pytest.raises(DataError, match="train CSV not found: nope.csv"):
        discover(root, train_csv="nope.csv")
    with pytest.raises(DataError, match="without a train CSV"):
        discover(root, val_csv="val.csv")


# ----------------------------------------------------------------------------- decoding


def test_every_image_mode_becomes_rgb(messy):
    _, f = messy
    px = {k: np.asarray(load_image(f[k])) for k in ("rgba", "palette", "cmyk", "deep16", "gray")}
    assert all(a.dtype == np.uint8 and a.shape == (16, 16, 3) for a in px.values())
    assert tuple(px["rgba"][0, 0]) == (255, 255, 255) and tuple(px["rgba"][0, -1]) == (0, 0, 255)  # on white
    assert tuple(px["palette"][0, 0]) == (255, 255, 255) and tuple(px["palette"][0, -1]) == (0, 255, 0)
    assert np.abs(px["cmyk"][8, 8].astype(int) - (255, 0, 0)).max() <= 3
    assert tuple(px["deep16"][0, 0]) == (156, 156, 156)  # 40000 / 257, not clipped to 255
    assert tuple(px["gray"][0, 0]) == (90, 90, 90)


def test_exif_orientation_is_applied(messy):
    _, f = messy
    img = np.asarray(load_image(f["rotated"]))
    assert img.shape == (40, 20, 3)  # stored 40 wide x 20 high, shown turned
    top, bottom = img[:15].reshape(-1, 3).mean(0), img[-15:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    resized = decode_resized(read_image_bytes(f["rotated"]), name="r", resize=ResizeSpec(shorter=10))
    assert resized.shape == (20, 10, 3)


@pytest.mark.parametrize(("kind", "expected"), [*BAD_KINDS.items(), ("missing", "missing")])
def test_unreadable_files_raise_with_path_and_kind(messy, tmp_path, kind, expected):
    _, f = messy
    path = f.get(kind, tmp_path / "gone.jpg")
    with pytest.raises(ImageDecodeError, match=f"cannot decode {path}: .*remove or replace the file") as info:
        load_image(path)
    assert info.value.kind == expected and info.value.path == str(path)


def test_large_jpeg_draft_decode_gives_the_exact_target_size(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(np.random.default_rng(0).integers(0, 255, (300, 403, 3), dtype=np.uint8)))
    out = decode_resized(path.read_bytes(), name=str(path), resize=ResizeSpec(shorter=36))
    assert out.shape == (36, int(36 * 403 / 300), 3)
    assert decode_resized(path.read_bytes(), name="x", resize=ResizeSpec(exact=(20, 30))).shape == (20, 30, 3)


def test_banners_are_cropped_to_4_to_1_before_resizing(tmp_path):
    banner = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 400, 3), dtype=np.uint8))
    tf = build_transforms(SMALL, train=False)
    assert tf.pre(banner).shape == (36, 144, 3)  # not (36, 720, 3)
    banner.save(tmp_path / "banner.png")
    assert tf.load(str(tmp_path / "banner.png")).shape == (3, 32, 32)
    full = v2.Compose([v2.PILToTensor(), v2.Resize(36, antialias=True), v2.CenterCrop(32)])(banner)
    ours = tf.post(tf.pre(banner))
    assert (ours.float() - full.float()).abs().mean() < 2  # the centre is the same picture


# ----------------------------------------------------------------------------- transforms


def test_eval_transform_matches_torchvision_reference(toy_data):
    img = load_image(next((toy_data / "train" / "red").iterdir()))
    tf = build_transforms(SMALL, train=False)
    assert tf.resize.shorter == int(32 / 0.875) and tf.size == (32, 32)
    ref = v2.Compose([
        v2.PILToTensor(), v2.Resize(36, antialias=True), v2.CenterCrop(32),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3),
    ])
    ours, theirs = tf(img), ref(img)
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert (ours - theirs).abs().mean() < 0.05  # Pillow vs tensor resize differ by rounding only


def test_overrides_and_train_levels():
    tf = build_transforms(SMALL, train=True, augment="strong", img_size=24, mean=[0, 0, 0], std=[1, 1, 1], interpolation="bicubic", crop_pct=1.0)
    assert tf.size == (24, 24) and tf.resize == ResizeSpec(shorter=24, interpolation="bicubic")
    assert tf.describe()["augment"] == "strong" and tf.mean == (0.0, 0.0, 0.0)
    rect = build_transforms(DataConfig(input_size=(3, 20, 30), crop_pct=1.0), train=False)
    assert rect.resize.exact == (20, 30) and rect.size == (20, 30)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    none_train = build_transforms(SMALL, train=True, augment="none")
    assert torch.equal(none_train(img), build_transforms(SMALL, train=False)(img))
    light = build_transforms(SMALL, train=True, augment="light")
    torch.manual_seed(0)
    a, b = light(img), light(img)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"augment": "medium"}, "augment must be one of none, light, strong; got 'medium'"),
        ({"interpolation": "lanczos"}, "interpolation must be one of nearest, bilinear, bicubic; got 'lanczos'"),
        ({"std": [1, 0, 1]}, "std values must be positive"),
        ({"mean": [0.5, 0.5]}, "mean needs 3 values"),
        ({"crop_pct": 1.5}, r"crop_pct must be in \(0, 1\]"),
    ],
)
def test_transform_option_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_transforms(SMALL, train=True, **kwargs)


def test_mixup_cutmix_gives_soft_labels():
    assert mixup_cutmix(3) is None
    mix = mixup_cutmix(3, mixup_alpha=0.4, cutmix_alpha=1.0)
    x, y = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert y.shape == (4, 3) and torch.allclose(y.sum(1), torch.ones(4))
    with pytest.raises(ConfigError, match="mixup alpha must be 0"):
        mixup_cutmix(3, mixup_alpha=-1)


# ----------------------------------------------------------------------------- decode cache


def test_parse_bytes():
    assert parse_bytes("4G") == 4 * 2**30 and parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GB") == int(1.5 * 2**30) and parse_bytes(1024) == 1024 and parse_bytes("0") == 0
    with pytest.raises(ConfigError, match="cache_ram must be a size such as 4G, 512M or a number of bytes; got 'lots'"):
        parse_bytes("lots")


def _batches(loader, epochs=2):
    out = []
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out


def _same(a, b) -> bool:
    """Epoch lists of (x, y) batches are equal, bit for bit."""
    if len(a) != len(b) or any(len(ea) != len(eb) for ea, eb in zip(a, b, strict=True)):
        return False
    return all(
        torch.equal(xa, xb) and torch.equal(ya, yb)
        for ea, eb in zip(a, b, strict=True)
        for (xa, ya), (xb, yb) in zip(ea, eb, strict=True)
    )


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_cache_gives_identical_tensors(tmp_path, augment):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=6, size=48, ext=".jpg")
    samples = discover(root).train
    tf = build_transforms(SMALL, train=True, augment=augment)
    plain = ImageDataset(samples, tf)
    ram = ImageDataset(samples, tf, cache=DecodeCache(ram_bytes="1G", cache_dir=tmp_path / "c1"))
    disk = ImageDataset(samples, tf, cache=DecodeCache(ram_bytes=0, cache_dir=tmp_path / "c2"))
    assert ram.cached and disk.cached
    for i in range(len(samples)):
        ref = plain[(i, 7)][0]
        assert torch.equal(ram[(i, 7)][0], ref) and torch.equal(disk[(i, 7)][0], ref)
    kw = {"batch_size": 5, "shuffle": True, "seed": 3}
    reference = _batches(make_loader(plain, workers=0, **kw))
    assert _same(_batches(make_loader(ram, workers=0, **kw)), reference)
    assert _same(_batches(make_loader(disk, workers=2, **kw)), reference)


def test_tiny_budget_spills_to_disk_and_later_runs_decode_nothing(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=40, ext=".jpg")
    splits = discover(root)
    tf = build_transforms(SMALL, train=False)
    one = 36 * 36 * 3
    cache = DecodeCache(ram_bytes=3 * one, cache_dir=tmp_path / "c")
    train = ImageDataset(splits.train, tf, cache=cache)
    val = ImageDataset(splits.val, tf, cache=cache)  # shares the budget with train
    assert cache.ram_allocated <= 3 * one
    assert cache.stats["ram"] == 3 and cache.stats["disk"] == len(train) + len(val) - 3
    files = sorted((tmp_path / "c" / "decoded").rglob("*.npy"))
    assert len(files) == cache.stats["disk"] and all(np.load(p).dtype == np.uint8 for p in files)
    expected = [train[i][0] for i in range(len(train))]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image the disk cache holds")

    monkeypatch.setattr("regraft.data.cache.decode_resized", no_decoding)
    later = DecodeCache(ram_bytes=0, cache_dir=tmp_path / "c")
    again = ImageDataset(splits.train[3:], tf, cache=later)
    assert later.stats["reused"] == len(again) and later.stats["decoded"] == 0
    assert all(torch.equal(again[i][0], expected[i + 3]) for i in range(len(again)))


def test_refilling_the_same_files_takes_no_more_ram(tmp_path, toy_data):
    samples = discover(toy_data).train
    cache = DecodeCache(ram_bytes="1G", cache_dir=tmp_path / "c")
    ImageDataset(samples, build_transforms(SMALL, train=True), cache=cache)
    used = cache.ram_allocated
    assert used == len(samples) * 36 * 36 * 3
    ImageDataset(samples, build_transforms(SMALL, train=True, augment="strong"), cache=cache)
    assert cache.ram_allocated == used and cache.stats["decoded"] == len(samples)


def test_cache_is_keyed_by_content_not_path(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a",), per_class=2, size=40, split=False, ext=".jpg")
    first, second = sorted((root / "a").iterdir())
    tf = build_transforms(SMALL, train=False)
    ImageDataset([(str(first), 0)], tf, cache=DecodeCache(ram_bytes=0, cache_dir=tmp_path / "c"))
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(first, renamed)
    cache = DecodeCache(ram_bytes=0, cache_dir=tmp_path / "c")
    ImageDataset([(str(renamed), 0), (str(second), 0)], tf, cache=cache)
    assert cache.stats["reused"] == 1 and cache.stats["decoded"] == 1


# ----------------------------------------------------------------------------- bad files in training


def test_training_skips_bad_files_and_lists_each_once(messy, tmp_path):
    root, f = messy
    splits = discover(root)
    log = tmp_path / "run" / "skipped_files.txt"
    ds = ImageDataset(splits.train, build_transforms(SMALL, train=True), skip_log=log)
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=0, workers=2)
    for _ in range(2):
        sizes = [x.shape[0] for x, _ in loader]
        assert sum(sizes) == len(splits.train)  # substituted, not dropped
    listed = read_skip_log(log)
    assert sorted(listed) == sorted(str(f[k]) for k in BAD_KINDS)


def test_drop_mode_and_cached_datasets_leave_bad_files_out(messy, tmp_path):
    root, f = messy
    splits = discover(root)
    tf = build_transforms(SMALL, train=False)
    dropping = ImageDataset(splits.train, tf, on_error="drop")
    labels = torch.cat([y for _, y in make_loader(dropping, batch_size=4, shuffle=False, workers=0)])
    assert len(labels) == len(splits.train) - len(BAD_KINDS)
    log = tmp_path / "skipped.txt"
    cached = ImageDataset(splits.train, tf, cache=DecodeCache(ram_bytes="64M", cache_dir=tmp_path / "c"), skip_log=log)
    assert len(cached) == len(splits.train) - len(BAD_KINDS)
    assert sorted(read_skip_log(log)) == sorted(str(f[k]) for k in BAD_KINDS)


def test_check_readable_lists_bad_files_and_stops_on_a_class_without_any(messy):
    root, f = messy
    splits = discover(root)
    assert set(check_readable(splits, full=True)) == {str(f[k]) for k in BAD_KINDS}
    assert {str(f["empty"]), str(f["text"])} <= set(check_readable(splits))
    for p in (root / "train" / "dog").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataError, match=r"class 'dog' has no readable training images \(4 files, e.g. .*empty file"):
        check_readable(splits)


# ----------------------------------------------------------------------------- loaders and samples


def test_loader_order_depends_only_on_seed_and_epoch(toy_data):
    ds = ImageDataset(discover(toy_data).train, build_transforms(SMALL, train=True))
    loader = make_loader(ds, batch_size=5, shuffle=True, seed=1, workers=0)
    assert loader.num_workers == 0 and not loader.pin_memory and len(loader) == 5
    e1, e1_again = _batches(loader, 2), _batches(loader, 2)
    assert _same(e1, e1_again)
    assert not torch.equal(e1[0][0][1], e1[1][0][1])  # epochs differ
    auto = make_loader(ds, batch_size=5, shuffle=True, seed=1, workers=0)
    assert _same([[(x, y) for x, y in auto], [(x, y) for x, y in auto]], e1)  # no set_epoch: counts up
    assert len(make_loader(ds, batch_size=5, shuffle=True, drop_last=True, workers=0)) == 4


def test_loader_accepts_a_distributed_batch_sampler(toy_data):
    from regraft.data.sampler import EpochBatchSampler

    ds = ImageDataset(discover(toy_data).train, build_transforms(SMALL, train=True))
    shards = [
        make_loader(ds, batch_sampler=EpochBatchSampler(len(ds), batch_size=4, shuffle=True, seed=2, rank=r, world_size=2), workers=0, device="cpu")
        for r in (0, 1)
    ]
    assert not shards[0].pin_memory
    for epoch in (0, 1):
        seen = []
        for loader in shards:
            loader.batch_sampler.set_epoch(epoch)
            seen += [y for _, y in loader]
        assert sum(len(y) for y in seen) == len(ds)  # each image once per epoch over both ranks
    a = [x for x, _ in shards[0]]
    shards[0].batch_sampler.set_epoch(2)
    assert all(torch.equal(p, q) for p, q in zip(a, [x for x, _ in shards[0]], strict=True))


def test_cache_for_config_shares_the_budget_among_local_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    cache = DecodeCache.for_config(SMALL, ram="1G", cache_dir=tmp_path)
    assert cache.ram_budget == 2**30 // 4 and cache.cache_dir == tmp_path


def test_sample_batch_gives_unnormalised_augmented_images(toy_data):
    ds = ImageDataset(discover(toy_data).train, build_transforms(SMALL, train=True))
    images, labels = sample_batch(ds, n=6, seed=0)
    assert len(images) == len(labels) == 6
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    again, _ = sample_batch(ds, n=6, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    assert set(labels) <= {0, 1}
