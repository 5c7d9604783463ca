"""Multi-label data (CSVs, label folders sharing images) and the class-balanced sampler."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from regraft.data import (
    EpochBatchSampler,
    ImageDataset,
    build_transforms,
    check_readable,
    discover,
    make_loader,
)
from regraft.data.transforms import MultiHotMix
from regraft.errors import DataError
from regraft.zoo import DataConfig
from tests.imagegen import make_image_folder, make_multilabel_data

_DC = DataConfig(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear", crop_pct=1.0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _csv_data(tmp_path: Path) -> Path:
    root = make_multilabel_data(tmp_path / "ml", n_train=12, n_val=6)
    return root


def test_csv_rows_carry_overlapping_labels(tmp_path):
    root = _csv_data(tmp_path)
    splits = discover(root, train_csv="train.csv", val_csv="val.csv", multilabel=True)
    assert splits.multilabel and splits.layout == "csv"
    assert splits.classes == ["blue", "green", "red"]
    assert all(isinstance(s.label, tuple) for s in splits.train + splits.val)
    assert any(len(s.label) >= 2 for s in splits.train)  # overlapping labels
    counts = splits.counts("train")
    assert counts == [sum(c in s.label for s in splits.train) for c in range(3)]


def test_csv_conventions_empty_cells_long_lists_and_separators(tmp_path):
    root = _csv_data(tmp_path)
    img = sorted((root / "images").iterdir())
    _write(root / "t.csv", "file,tags\n"
           f"{img[0].name and 'images/' + img[0].name},cat| dog\n"
           f"images/{img[1].name},\n"
           f"images/{img[2].name},dog\n"
           f"images/{img[2].name},bird\n")
    splits = discover(root, train_csv="t.csv", val_csv="t.csv", multilabel=True, label_sep="|")
    labels = {Path(s.path).name: tuple(splits.classes[c] for c in s.label) for s in splits.train}
    assert labels == {img[0].name: ("cat", "dog"), img[1].name: (), img[2].name: ("bird", "dog")}
    # a semicolon-separated file with '|' between labels; with ';' between labels ';' never splits columns
    _write(root / "semi.csv", f"images/{img[0].name};cat|dog\n")
    assert discover(root, train_csv="semi.csv", val_csv="semi.csv", multilabel=True, label_sep="|").train[0].label == (0, 1)
    with pytest.raises(DataError, match=r"semi.csv:1: expected 'path,labels'"):
        discover(root, train_csv="semi.csv", multilabel=True, label_sep=";")


def test_csv_errors_name_the_row_and_the_fix(tmp_path):
    root = _csv_data(tmp_path)
    _write(root / "bad.csv", "path,labels\nimages/train_000.png,red;purple\n")
    _write(root / "cls.txt", "red\ngreen\nblue\n")
    with pytest.raises(DataError, match=r"bad.csv:2: label 'purple' is not one of the 3 labels .* check --label-sep \(now ';'\)"):
        discover(root, train_csv="bad.csv", classes_file="cls.txt", multilabel=True)
    _write(root / "none.csv", "path,labels\nimages/train_000.png,\n")
    with pytest.raises(DataError, match=r"names no label in any row: write each image's labels separated by ';'"):
        discover(root, train_csv="none.csv", multilabel=True)
    _write(root / "rare.csv", "path,labels\nimages/train_000.png,red\nimages/train_001.png,red\n")
    with pytest.raises(DataError, match=r"labels with no positive training row in .*rare.csv: green, blue"):
        discover(root, train_csv="rare.csv", classes_file="cls.txt", multilabel=True)


def test_label_folders_merge_copies_by_content_not_by_name(tmp_path):
    root = make_image_folder(tmp_path / "f", classes=("cat", "dog"), per_class=6, split=False)
    shutil.copy(root / "cat" / "cat_000.png", root / "dog" / "copy_of_cat.png")  # one photo, two labels
    shutil.copy(root / "dog" / "dog_001.png", root / "cat" / "dog_000.png")  # same name as another dog photo
    splits = discover(root, multilabel=True, val_fraction=0.25, seed=0)
    everything = {Path(s.path).relative_to(root).as_posix(): s.label for s in splits.train + splits.val}
    assert everything["cat/cat_000.png"] == (0, 1)
    assert "dog/copy_of_cat.png" not in everything  # folded into its first copy
    assert everything["cat/dog_000.png"] == (0, 1)  # a copy of dog_001, not of dog_000
    assert everything["dog/dog_000.png"] == (1,)
    assert len(everything) == 12
    again = discover(root, multilabel=True, val_fraction=0.25, seed=0)
    assert again.val == splits.val and splits.val  # the split is seeded


def test_dataset_and_loader_give_multi_hot_rows(tmp_path):
    root = _csv_data(tmp_path)
    splits = discover(root, train_csv="train.csv", val_csv="val.csv", multilabel=True)
    check_readable(splits)
    ds = ImageDataset(splits.train, build_transforms(_DC, train=False), num_labels=3)
    x, y = ds[0]
    assert y.dtype == torch.float32 and y.tolist() == [float(c in splits.train[0].label) for c in range(3)]
    xb, yb = next(iter(make_loader(ds, batch_size=5, workers=0)))
    assert xb.shape == (5, 3, 32, 32) and yb.shape == (5, 3)
    hot = torch.zeros(5, 3)
    for i, s in enumerate(splits.train[:5]):
        hot[i, list(s.label)] = 1
    assert torch.equal(yb, hot)


def test_multi_hot_mixup_mixes_labels_like_images():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    mixed, soft = MultiHotMix(mixup_alpha=1.0)(x, y)
    lam = float((mixed[0] - x[3]).flatten()[0] / (x[0] - x[3]).flatten()[0])  # image 0 mixed with image 3 (roll)
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[3], atol=1e-6)
    assert torch.allclose(soft[0], lam * y[0] + (1 - lam) * y[3], atol=1e-6)


# ----------------------------------------------------------------------------- the class-balanced sampler


def test_weighted_draws_depend_only_on_seed_and_epoch_and_balance_classes():
    labels = [0] * 100 + [1] * 10
    weights = [1 / 100] * 100 + [1 / 10] * 10
    s = EpochBatchSampler(110, batch_size=8, shuffle=True, seed=3, weights=weights)
    s.set_epoch(2)
    first = [i for b in s for i in b]
    again = EpochBatchSampler(110, batch_size=8, shuffle=True, seed=3, weights=weights)
    again.set_epoch(2)
    assert [i for b in again for i in b] == first and len(first) == 110
    drawn = Counter()
    for e in range(30):
        s.set_epoch(e)
        drawn.update(labels[i] for b in s for i in b)
    assert 0.45 < drawn[1] / sum(drawn.values()) < 0.55  # a 10:1 class drawn about half the time


@pytest.mark.parametrize("world", [2, 3])
def test_weighted_shards_are_disjoint_slices_of_one_draw_with_unique_keys(world):
    weights = [1.0] * 20 + [5.0] * 5
    whole = EpochBatchSampler(25, batch_size=4, shuffle=True, seed=0, weights=weights)
    shards = [EpochBatchSampler(25, batch_size=4, shuffle=True, seed=0, rank=r, world_size=world, weights=weights) for r in range(world)]
    draw = [k for b in whole.keyed() for k in b]
    parts = [[k for b in sh.keyed() for k in b] for sh in shards]
    assert len({len(sh) for sh in shards}) == 1  # every rank steps the same number of times
    assert parts == [draw[r::world] for r in range(world)]  # rank r takes positions r, r + world, ...
    keys = [key for _, key in draw]
    assert len(set(keys)) == len(keys)  # a repeated image gets its own augmentation
    assert all(key % 25 == i for i, key in draw)


def test_weights_are_checked():
    with pytest.raises(ValueError, match="one number per sample"):
        EpochBatchSampler(3, batch_size=2, shuffle=True, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="shuffle=True"):
        EpochBatchSampler(2, batch_size=2, shuffle=False, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        EpochBatchSampler(2, batch_size=2, shuffle=True, weights=[1.0, -2.0])


def test_a_loader_gives_a_twice_drawn_image_two_crops(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=3, size=40, split=False)
    splits = discover(root, val_fraction=0.5, seed=0)
    ds = ImageDataset(splits.train + splits.val, build_transforms(_DC, train=True, augment="light"))
    sampler = EpochBatchSampler(len(ds), batch_size=64, shuffle=True, seed=0, weights=[1.0] + [1e-9] * (len(ds) - 1))
    x, _ = next(iter(make_loader(ds, batch_sampler=sampler, workers=0, seed=0)))
    assert len(x) >= 2 and not torch.equal(x[0], x[1])  # image 0 drawn every time, cropped differently
