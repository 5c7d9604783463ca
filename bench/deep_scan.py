"""The deep scan (``regraft scan DATA --model M``) against the usual tools, on folders with planted faults.

Each folder is made from real photographs that ship with scikit-image (13 classes: ten
photographs and three textures, 36 crops of each, 160 px JPEGs, crops of one photograph
overlapping by at most 30% IoU), and then damaged in known ways:

- copies: 40 images copied under another name, resized (45-75%), re-encoded (JPEG quality
  25-50) or cropped (6-12% off each side); 30 of them into the other split (leaks);
- label errors: a known share of the images (copies included) moved to a random other class;
- outliers: four images of another kind (a text page, printed text, a colour wheel, a dark
  frame) dropped into random class folders.

Label issues are scored against the moved images (planted outliers count for neither side),
regraft's list against cleanlab's ``find_label_issues`` on 5-fold ``LogisticRegression``
probabilities of the same features (the anchor). Near-duplicates are scored against the
planted pairs, regraft's rule against a plain cosine threshold on the same features and a
perceptual hash alone. Both use EfficientNet-Lite0's ImageNet features (the demo's weights).

    python bench/deep_scan.py [--rates 0.05,0.1,0.2] [--threads N] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import DATA, Section, append_results, command_line, fmt, load, table  # noqa: E402

CLASSES = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry",
           "moon", "retina", "rocket", "brick", "grass", "gravel")
PER_CLASS = {"train": 27, "val": 9}
SIZE = 160
COPIES, CROSS_SPLIT = 40, 30
OUTLIERS = ("page", "text", "colorwheel", "dark")
MODEL = "tf_efficientnet_lite0"


# ----------------------------------------------------------------------------- the folders


def make_clean(root: Path, seed: int = 0) -> dict[str, tuple[str, str]]:
    """``root/{train,val}/<class>/*.jpg`` from skimage's photographs; returns path -> (split, class)."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for name in CLASSES:
        photo = getattr(skimage.data, name)()
        photo = np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
        boxes = _boxes(photo.shape[:2], sum(PER_CLASS.values()), rng)
        order = rng.permutation(len(boxes))
        splits = ["train"] * PER_CLASS["train"] + ["val"] * PER_CLASS["val"]
        for i, (split, b) in enumerate(zip(splits, order, strict=True)):
            y, x, side = boxes[b]
            crop = photo[y : y + side, x : x + side]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            path = root / split / name / f"{name}_{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE), Image.BICUBIC).save(path, quality=90)
            out[str(path)] = (split, name)
    return out


def _boxes(shape: tuple[int, int], n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``n`` square crops (y, x, side) of 1/5 to 1/4 of the shorter side, pairwise IoU under 0.3."""
    h, w = shape
    short = min(h, w)
    boxes: list[tuple[int, int, int]] = []
    limit = 0.3
    while len(boxes) < n:
        for _ in range(20000):
            side = int(rng.integers(short // 5, short // 4 + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            if all(_iou((y, x, side), b) < limit for b in boxes):
                boxes.append((y, x, side))
                break
        else:
            limit += 0.05  # a small photograph: allow a little more overlap rather than fail
    return boxes


def _iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (ya, xa, sa), (yb, xb, sb) = a, b
    dy = max(0, min(ya + sa, yb + sb) - max(ya, yb))
    dx = max(0, min(xa + sa, xb + sb) - max(xa, xb))
    inter = dy * dx
    return inter / (sa * sa + sb * sb - inter)


def make_noisy(root: Path, *, rate: float, seed: int) -> dict:
    """A clean folder damaged with copies, label errors and outliers; returns the ground truth."""
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    files = make_clean(root, seed=0)  # the same photographs' crops for every seed: embeddings are reused
    rng = np.random.default_rng(seed + 1000)
    pairs = []
    originals = rng.choice(sorted(files), COPIES, replace=False)
    for i, original in enumerate(originals):
        split, name = files[original]
        target = ("val" if split == "train" else "train") if i < CROSS_SPLIT else split
        kind = ("resize", "jpeg", "crop")[i % 3]
        image = Image.open(original).convert("RGB")
        if kind == "resize":
            image = image.resize((int(SIZE * rng.uniform(0.45, 0.75)),) * 2, Image.BILINEAR)
        elif kind == "crop":
            cut = int(SIZE * rng.uniform(0.06, 0.12))
            image = image.crop((cut, cut, SIZE - cut, SIZE - cut)).resize((SIZE, SIZE), Image.BICUBIC)
        path = root / target / name / f"img_{rng.integers(1e9):09d}.jpg"
        image.save(path, quality=int(rng.integers(25, 51)) if kind == "jpeg" else 90)
        files[str(path)] = (target, name)
        pairs.append([original, str(path), kind, target != split])
    flipped = {}
    for path in rng.choice(sorted(files), int(round(rate * len(files))), replace=False):
        split, name = files[path]
        new = str(rng.choice([c for c in CLASSES if c != name]))
        moved = root / split / new / Path(path).name
        shutil.move(path, moved)
        files[str(moved)] = files.pop(path)
        flipped[str(moved)] = name
        pairs = [[str(moved) if p == path else p for p in pair[:2]] + pair[2:] for pair in pairs]
    outliers = []
    for kind in OUTLIERS:
        split, name = str(rng.choice(["train", "val"])), str(rng.choice(CLASSES))
        path = root / split / name / f"img_{rng.integers(1e9):09d}.jpg"
        _outlier(kind, rng).save(path, quality=90)
        outliers.append(str(path))
    return {"flipped": flipped, "pairs": pairs, "outliers": outliers, "images": len(files) + len(outliers)}


def _outlier(kind: str, rng: np.random.Generator):
    import skimage.data
    from PIL import Image

    if kind == "dark":
        return Image.fromarray(np.clip(rng.normal(12, 2, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))
    img = getattr(skimage.data, kind)()
    img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
    return Image.fromarray(np.ascontiguousarray(img)).resize((SIZE, SIZE), Image.BICUBIC)


# ----------------------------------------------------------------------------- the runs


def run_seed(rate: float, seed: int, *, cache: Path) -> dict:
    from regraft.audit.embed import embed_images
    from regraft.audit.scan import deep_scan
    from regraft.data import scan
    from regraft.demo import demo_weights_path
    from regraft.features.linear import fit_probe

    root = DATA / f"deep-scan-{seed}"
    truth = make_noisy(root, rate=rate, seed=seed)
    weights = str(demo_weights_path())
    t0 = time.perf_counter()
    report = scan(root, fingerprints=True)
    result = deep_scan(report, model=MODEL, weights=weights, cache_dir=cache, seed=0)
    seconds = time.perf_counter() - t0
    paths = [s.path for split in ("train", "val") for s in getattr(report.splits, split)]
    labels = np.array([s.label for split in ("train", "val") for s in getattr(report.splits, split)])
    feats = embed_images(paths, model=MODEL, weights=weights, cache_dir=cache,
                         digests=[report.digests[p] for p in paths]).features
    t1 = time.perf_counter()
    fit_probe(feats, torch.as_tensor(labels), num_classes=len(report.classes))
    probe_seconds = time.perf_counter() - t1
    return {"rate": rate, "seed": seed, "truth": truth, "result": result, "paths": paths, "labels": labels,
            "features": feats, "fingerprints": [report.fingerprints[p] for p in paths], "classes": report.classes,
            "seconds": seconds, "probe_seconds": probe_seconds, "embedded": result.model.get("computed", 0)}


def label_scores(run: dict) -> list[list[object]]:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    truth, ignore = set(run["truth"]["flipped"]), set(run["truth"]["outliers"])
    ours = {i.path for i in run["result"].label_issues} - ignore
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = cross_val_predict(LogisticRegression(max_iter=1000), run["features"].numpy(), run["labels"],
                                  cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")
    flags = find_label_issues(run["labels"], probs)
    anchor = {run["paths"][i] for i in np.flatnonzero(flags)} - ignore
    return [_pr("regraft scan --model", ours, truth), _pr("anchor: cleanlab on 5-fold LogisticRegression", anchor, truth)]


def _pr(name: str, found: set[str], truth: set[str]) -> list[object]:
    hit = len(found & truth)
    return [name, len(truth), len(found), hit, fmt(hit / max(1, len(found)), 3), fmt(hit / max(1, len(truth)), 3)]


def duplicate_scores(run: dict) -> list[list[object]]:
    from regraft.audit._neighbours import unit_rows
    from regraft.data.phash import hamming_matrix

    planted = {frozenset(p[:2]) for p in run["truth"]["pairs"]}
    position = {p: i for i, p in enumerate(run["paths"])}
    outliers = {position[p] for p in run["truth"]["outliers"] if p in position}
    ours = {frozenset((d.a, d.b)) for d in run["result"].near_duplicates}
    rows = [_pairs_row("regraft (features + perceptual hash)", ours, planted)]
    x = run["features"].float()
    raw = x / x.norm(dim=1, keepdim=True)
    cosine = (raw @ raw.T).numpy()
    centred = unit_rows(x)
    centred_cos = (centred @ centred.T).numpy()
    hashes = np.array([f.hash for f in run["fingerprints"]], dtype=np.uint64)
    distance = hamming_matrix(hashes, hashes)
    upper = np.triu(np.ones_like(cosine, dtype=bool), 1)
    for name, hit in (("cosine ≥ 0.95 (features as they come)", cosine >= 0.95),
                      ("cosine ≥ 0.90 (features as they come)", cosine >= 0.90),
                      ("cosine ≥ 0.90 (centred features)", centred_cos >= 0.90),
                      ("perceptual hash alone, ≤ 10 bits", distance <= 10),
                      ("perceptual hash alone, ≤ 16 bits", distance <= 16)):
        found = {frozenset((run["paths"][i], run["paths"][j])) for i, j in zip(*np.nonzero(hit & upper), strict=True)
                 if i not in outliers and j not in outliers}
        rows.append(_pairs_row(name, found, planted))
    return rows


def _pairs_row(name: str, found: set, planted: set) -> list[object]:
    hit = len(found & planted)
    return [name, len(planted), hit, fmt(hit / max(1, len(planted)), 3), len(found - planted)]


def outlier_row(run: dict) -> list[object]:
    planted = set(run["truth"]["outliers"])
    found = {o.path for o in run["result"].outliers}
    return [len(planted), len(found & planted), len(found - planted)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="0.05,0.1,0.2", help="label-error shares, one folder (seed) each")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load()
    cache = DATA / "deep-scan-cache"
    body: list[str] = []
    speed = []
    for seed, rate in enumerate(float(r) for r in args.rates.split(",")):
        run = run_seed(rate, seed, cache=cache)
        body += [f"### {int(rate * 100)}% of labels moved (seed {seed}, {run['truth']['images']} images)", "",
                 "Label issues:", ""]
        body += table(["method", "planted", "flagged", "right", "precision", "recall"], label_scores(run)) + [""]
        body += ["Near-duplicates (40 planted pairs: resized, re-encoded, cropped; 30 across train/val):", ""]
        body += table(["method", "planted", "found", "recall", "false pairs"], duplicate_scores(run)) + [""]
        o = outlier_row(run)
        body += [f"Outliers: {o[1]} of {o[0]} planted found, {o[2]} other images flagged.", ""]
        speed.append([f"{int(rate * 100)}%", run["embedded"], fmt(run["seconds"]), fmt(run["result"].seconds.get("analysis", 0.0)),
                      fmt(run["probe_seconds"]), fmt(run["result"].seconds.get("analysis", 0.0) / max(run["probe_seconds"], 1e-9), 2)])
        (DATA / f"deep-scan-{seed}-truth.json").write_text(json.dumps(run["truth"], indent=1))
    body += ["### Time", "",
             "A scan embeds only images the store has not seen (the first folder embeds every crop; later ones only "
             "their copies and moved files, whose paths changed but whose bytes did not: none).", ""]
    body += table(["folder", "images embedded now", "scan wall s", "analysis s (warm)", "linear probe s (fit_probe)",
                   "analysis ÷ probe"], speed)
    notes = [f"torch threads: {torch.get_num_threads()}", f"model: {MODEL} (ImageNet, the demo's weights), 224 px"]
    append_results(Section("Deep scan: label issues and near-duplicates (`bench/deep_scan.py`)",
                           command_line("deep_scan.py", argv), load_before, notes, body), write=not args.no_write)


if __name__ == "__main__":
    main()
