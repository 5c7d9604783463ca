"""The cross-validated linear probe (``regraft.features.linear.fit_probe``): its cost and its answer.

Two cases, each timed for regraft and, as the reference, scikit-learn's ``LogisticRegressionCV``
on the same features, the same folds and the same l2 grid (``C = 1 / (l2·n)``):

- ``synthetic``: the issue's size, n=2000 rows, d=1280 (EfficientNet-B0/Lite0's width), k=10,
  post-ReLU features with a low-rank class structure and 10% of the labels moved at random.
- ``photos``: real EfficientNet-Lite0 ImageNet features of bench/_tasks.py's ten-photograph task
  (24 training images per class, the size where the old probe trailed a converged logistic
  regression by 2.6 points), scored on its held-out test split.

    python bench/linear_probe.py [--cases synthetic,photos] [--threads N] [--no-sklearn] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import DATA, Section, append_results, clock, command_line, fmt, load, table  # noqa: E402


def synthetic(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, d, k = 2000, 1280, 10
    means = torch.randn(k, 64, generator=g) @ torch.randn(64, d, generator=g) * 0.15
    y = torch.arange(n) % k
    x = torch.relu(means[y] + torch.randn(n, d, generator=g) * 0.5 + 0.3)
    moved = torch.rand(n, generator=g) < 0.1
    y = torch.where(moved, torch.randint(0, k, (n,), generator=g), y)
    return {"x": x, "y": y}


def photo_features(per_class: int = 24) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 (ImageNet) pooled features of the photos task, cached under bench/data."""
    cache = DATA / "photos-lite0-features.pt"
    if not cache.exists():
        from bench._tasks import photos

        from regraft import zoo
        from regraft.data import build_transforms, load_image
        from regraft.demo import demo_weights_path
        from regraft.weights import load_weights

        root = photos(DATA / "photos")
        model = zoo.build("tf_efficientnet_lite0", num_classes=10)
        load_weights(model, str(demo_weights_path()))
        model.reset_classifier(0)
        model.eval()
        transform = build_transforms(zoo.data_config("tf_efficientnet_lite0"), train=False)
        out = {}
        for split in ("train", "test"):
            classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
            files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / split / c).iterdir())]
            with torch.no_grad():
                feats = [model(torch.stack([transform(load_image(f)) for f, _ in files[j : j + 32]]))
                         for j in range(0, len(files), 32)]
            out[split] = (torch.cat(feats), torch.tensor([label for _, label in files]))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, cache)
    data = torch.load(cache)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    keep = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(int(y.max()) + 1)])
    return {"x": x[keep], "y": y[keep], "x_test": x_test, "y_test": y_test}


def run_case(name: str, data: dict[str, torch.Tensor], *, use_sklearn: bool) -> list[object]:
    from regraft.features.linear import fit_probe

    x, y = data["x"], data["y"]
    k = int(y.max()) + 1
    with clock() as c:
        probe = fit_probe(x, y, num_classes=k)
    best = probe.cv.best
    test = "—"
    if "x_test" in data:
        test = fmt(float((probe.fit.probabilities(data["x_test"]).argmax(1) == data["y_test"]).double().mean()), 3)
    row = [name, f"{len(y)}×{x.shape[1]}, k={k}", f"{fmt(c.wall)} / {fmt(c.cpu)}",
           f"{len(probe.cv.scores)} l2 × {probe.cv.folds} folds + refit", f"{probe.cv.l2:.3g}",
           f"{best.accuracy:.3f} ± {best.accuracy_std:.3f}", test]
    if use_sklearn:
        row += _sklearn_reference(x, y, probe, data)
    return row


def _sklearn_reference(x, y, probe, data) -> list[object]:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    grid = [s.l2 for s in probe.cv.scores]
    with clock() as c, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegressionCV(
            Cs=[1.0 / (l2 * len(y)) for l2 in grid], cv=PredefinedSplit(probe.cv.fold.numpy()),
            scoring="neg_log_loss", max_iter=10_000,
        ).fit(x.double().numpy(), y.numpy())
    chosen = 1.0 / (float(np.ravel(sk.C_)[0]) * len(y))
    test = default = "—"
    if "x_test" in data:
        x_test, y_test = data["x_test"].double().numpy(), data["y_test"].numpy()
        test = fmt(float((sk.predict(x_test) == y_test).mean()), 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = LogisticRegression(max_iter=10_000).fit(x.double().numpy(), y.numpy())
        default = fmt(float((plain.predict(x_test) == y_test).mean()), 3)
    return [f"{fmt(c.wall)} / {fmt(c.cpu)}", f"{chosen:.3g}", test, default]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="synthetic,photos")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load()
    makers = {"synthetic": synthetic, "photos": photo_features}
    rows = [run_case(name, makers[name](), use_sklearn=not args.no_sklearn) for name in args.cases.split(",")]
    headers = ["case", "rows × dims", "regraft wall / CPU s", "solves", "l2 chosen", "CV accuracy ± std", "test acc"]
    if not args.no_sklearn:
        headers += ["sklearn LogisticRegressionCV wall / CPU s", "its l2", "its test acc", "sklearn C=1 test acc"]
    notes = [f"torch threads: {torch.get_num_threads()}",
             "sklearn: the same folds (PredefinedSplit) and l2 grid, scoring neg_log_loss, lbfgs at its default tol (1e-4)"]
    append_results(Section("Linear probe: cross-validated fit (`bench/linear_probe.py`)",
                           command_line("linear_probe.py", argv), load_before, notes, table(headers, rows)),
                   write=not args.no_write)


if __name__ == "__main__":
    main()
