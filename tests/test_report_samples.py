"""Issue 18.7 (part): samples.png shows the mixed batches the model trains on when MixUp/CutMix is on."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from regraft import report
from regraft.data import mixup_cutmix
from regraft.report import ReportError
from regraft.report._samples import sample_grid
from regraft.report.grids import soft_label

CLASSES = ["red", "green", "blue"]
COLOURS = [(200, 40, 40), (40, 180, 60), (40, 60, 200)]


class _Crops:
    """A training dataset like regraft's: ``raw`` gives the uint8 CHW crop before normalisation."""

    def __init__(self, n: int = 16, sizes: tuple[int, ...] = (32,)):
        self.items = []
        for i in range(n):
            size = sizes[i % len(sizes)]
            img = np.zeros((size, size, 3), np.uint8)
            img[:] = COLOURS[i % 3]
            img[4:12, 4:12] = 255
            self.items.append((img, i % 3))

    def __len__(self):
        return len(self.items)

    def raw(self, key):
        img, label = self.items[key[0]]
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), label

    def __getitem__(self, i):
        return self.raw((i, i))


def _to_image(x):
    return report.to_image(x)


def _weights(title: str) -> dict[str, float]:
    """"MixUp\\n62% red + 38% blue" -> {"red": 0.62, "blue": 0.38}; "red" alone -> {"red": 1.0}."""
    label = title.split("\n")[-1]
    if "%" not in label:
        return {label: 1.0}
    return {part.split("% ")[1]: float(part.split("% ")[0]) / 100 for part in label.split(" + ")}


def test_mixup_and_cutmix_each_get_their_share_with_soft_labels():
    transform = mixup_cutmix(3, mixup_alpha=0.4, cutmix_alpha=1.0)
    images, titles, heading = sample_grid(_Crops(), CLASSES, to_image=_to_image, n=16, batch_transform=transform)
    assert heading == "training samples after augmentation and MixUp or CutMix (titles: the soft labels trained on)"
    assert [t.split("\n")[0] for t in titles] == ["MixUp"] * 8 + ["CutMix"] * 8
    assert any(len(_weights(t)) == 2 for t in titles[:8]) and any(len(_weights(t)) == 2 for t in titles[8:])
    for t in titles:
        assert sum(_weights(t).values()) == pytest.approx(1.0, abs=0.02)
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)


def test_mixup_pixels_are_the_weighted_mix_the_title_says():
    crops = _Crops()
    images, titles, _ = sample_grid(crops, CLASSES, to_image=_to_image, n=16, batch_transform=mixup_cutmix(3, mixup_alpha=1.0))
    picks = sorted(np.random.default_rng(0).choice(16, size=16, replace=False).tolist())  # the grid's own choice
    for k in range(0, 16, 2):
        a, b = crops.items[picks[k]], crops.items[picks[k + 1]]
        if a[1] == b[1]:
            continue  # same class: the weights cannot tell the two images apart
        lam = _weights(titles[k]).get(CLASSES[a[1]], 0.0)
        expected = lam * a[0].astype(float) + (1 - lam) * b[0].astype(float)
        assert np.abs(images[k].astype(float) - expected).max() <= 255 * 0.006 + 1  # title rounds to 1%


def test_samples_are_deterministic_and_leave_every_random_stream_alone(tmp_path):
    transform = mixup_cutmix(3, mixup_alpha=0.4, cutmix_alpha=1.0)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        report.draw_run(tmp_path / name, classes=CLASSES, train_dataset=_Crops(), batch_transform=transform)
    assert (tmp_path / "a" / "samples.png").read_bytes() == (tmp_path / "b" / "samples.png").read_bytes()
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    im = Image.open(tmp_path / "a" / "samples.png").convert("RGB")
    pixels = np.asarray(im).reshape(-1, 3).astype(int)
    mixed = (abs(pixels[:, 0] - pixels[:, 2]) < 60) & (pixels[:, 0] > 80) & (pixels[:, 1] < 120)  # purple: red + blue mixed
    assert mixed.sum() > 500


def test_without_mixing_the_titles_are_class_names():
    images, titles, heading = sample_grid(_Crops(6), CLASSES, to_image=_to_image, n=16)
    assert heading == "training samples (after augmentation)" and set(titles) == set(CLASSES) and len(images) == 6


def test_crops_of_different_sizes_are_shown_unmixed(caplog):
    with caplog.at_level(logging.WARNING, logger="regraft.report"):
        grid = sample_grid(_Crops(4, sizes=(32, 40)), CLASSES, to_image=_to_image, n=4, batch_transform=mixup_cutmix(3, mixup_alpha=1.0))
    assert grid[1] == ["red", "green", "blue", "red"] and grid[2] == "training samples (after augmentation)"
    assert "samples.png shows the crops unmixed: they differ in size" in caplog.text


def test_a_users_own_batch_transform_is_named_after_it():
    def blend_halves(x, y):
        return (x + x.flip(0)) / 2, torch.nn.functional.one_hot(y, 3).float() * 0.5 + torch.nn.functional.one_hot(y.flip(0), 3).float() * 0.5

    _, titles, heading = sample_grid(_Crops(4), CLASSES, to_image=_to_image, n=4, batch_transform=blend_halves)
    assert heading.startswith("training samples after augmentation and blend_halves") and titles[0] == "blend_halves\n50% red + 50% green"  # ties in class order


def test_plot_samples_takes_soft_labels(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    report.plot_samples([img, img], ["cat", [0.62, 0.38]], tmp_path / "s.png", classes=["cat", "dog"])
    assert soft_label([0.38, 0.62, 0.0], ["dog", "cat", "fox"]) == "62% cat + 38% dog"
    assert soft_label([1.0, 0.0], ["dog", "cat"]) == "dog" and soft_label([0.999, 0.001], ["dog", "cat"]) == "dog"
    with pytest.raises(ReportError, match="a soft label has 2 weights but no classes were given; pass classes="):
        report.plot_samples([img], [[0.5, 0.5]], tmp_path / "x.png")
    with pytest.raises(ReportError, match="a soft label has 2 weights but 3 classes were given"):
        report.plot_samples([img], [[0.5, 0.5]], tmp_path / "x.png", classes=CLASSES)
