"""The small-data suite's contestants other than regraft, each run in a fresh process by ``small_data.py``.

Every worker takes the folder a user would hand its tool (``train/`` and ``val/``; the test split
is never in it), trains, stamps ``t_trained`` (``time.time()``, compared with the parent's clock at
launch, so the process start and every import count) and ``cpu_trained`` (the process's CPU
seconds so far), and only then measures test accuracy.

- ``sklearn-probe``: a converged logistic regression on features of the frozen EfficientNet-Lite0
  trunk. The trunk is timm's ``tf_efficientnet_lite0`` with the package's ImageNet weights loaded
  by ``regraft.weights.load_weights`` (as the plain recipe and fastai load them), its classifier
  removed (``reset_classifier(0)``: the 1280 pooled features). Each image is decoded and
  preprocessed by regraft's own evaluation transform (``build_transforms(data_config,
  train=False).load``: resize, centre crop, the weights' mean/std) in regraft's numerics for this
  model on CPU (fp32, channels_last), so the features are exactly those regraft's validation path
  computes; the features are computed here rather than through ``regraft.features`` so that this
  contestant stays the same whatever regraft's feature cache becomes. Training and validation
  images are pooled and ``C`` is chosen from 13 values, 1e-4 to 1e2, by 5-fold stratified
  cross-validation of ``StandardScaler -> LogisticRegression(lbfgs, max_iter=5000)`` (scikit-learn's
  ``GridSearchCV``), then refitted on all of them. The grid was fixed before any run.
- ``plain``: bench/_plain.py's tutorial recipe, 5 epochs, the best validation epoch kept.
- ``fastai``: bench/_fastai_recipe.py, ``fine_tune(5)``, the last epoch kept.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

MODEL = "tf_efficientnet_lite0"
C_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 5))  # 1e-4 ... 1e2, 13 values


def class_files(folder: Path) -> tuple[list[Path], list[str]]:
    """``(files, labels)`` of a folder of class subfolders (sorted; regraft's image extensions)."""
    from regraft.data import list_images

    files, labels = [], []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in list_images(cls):
            files.append(f)
            labels.append(cls.name)
    return files, labels


def sklearn_probe(visible: Path, test: Path, *, weights: str, seed: int) -> dict[str, Any]:
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    files, labels = [], []
    for split in ("train", "val"):
        if (visible / split).is_dir():
            f, y = class_files(visible / split)
            files, labels = files + f, labels + y
    t0 = time.perf_counter()
    trunk, transform = _trunk(weights)
    x = _features(trunk, transform, files)
    t_features = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        search = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
            {"logisticregression__C": list(C_GRID)},
            cv=StratifiedKFold(5, shuffle=True, random_state=seed), scoring="accuracy", n_jobs=1,
        ).fit(x, np.asarray(labels))
    t_trained, cpu_trained = time.time(), time.process_time()
    clf = search.best_estimator_[-1]
    out = {
        "t_trained": t_trained, "cpu_trained": cpu_trained, "val_kind": "cv5", "val_acc": float(search.best_score_),
        "detail": f"C={search.best_params_['logisticregression__C']:.0e} by 5-fold CV on {len(files)} images, "
                  f"lbfgs {int(np.max(clf.n_iter_))} iterations; trunk + features {t_features - t0:.1f} s, "
                  f"CV + refit {time.perf_counter() - t_features:.1f} s",
        "converged": bool(np.max(clf.n_iter_) < clf.max_iter),
        "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught),
    }
    test_files, test_labels = class_files(test)
    pred = search.predict(_features(trunk, transform, test_files))
    out["test_acc"] = float(np.mean(pred == np.asarray(test_labels)))
    return out


def _trunk(weights: str):
    import timm
    import torch

    from regraft import data, zoo
    from regraft.weights import load_weights

    model = timm.create_model(MODEL, pretrained=False)
    load_weights(model, weights, head="classifier")
    model.reset_classifier(0)
    model = model.eval().to(memory_format=torch.channels_last)
    transform = data.build_transforms(zoo.data_config(MODEL, weights=weights), train=False)
    return model, transform


def _features(model, transform, files: list[Path], *, batch_size: int = 32):
    import numpy as np
    import torch

    chunks = []
    with torch.inference_mode():
        for i in range(0, len(files), batch_size):
            batch = torch.stack([transform.load(str(f)) for f in files[i : i + batch_size]])
            chunks.append(model(batch.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(chunks)


def plain(visible: Path, test: Path, *, weights: str, seed: int) -> dict[str, Any]:
    import _plain
    import torch
    from torchvision import datasets

    result = _plain.recipe(visible, model_name=MODEL, weights=weights, epochs=5, batch_size=32, img=224, lr=1e-3,
                           workers=0, seed=seed, log=lambda _: None)
    out = {"t_trained": time.time(), "cpu_trained": time.process_time(), "val_kind": "val", "val_acc": result.best_val_acc,
           "detail": "val " + " ".join(f"{h['val_acc']:.2f}" for h in result.history) + f" (best epoch {result.best_epoch})"}
    mean, std = _plain.norm_for(MODEL)
    ds = datasets.ImageFolder(test, _plain.transforms(224, mean, std, train=False))
    if ds.classes != result.classes:
        raise SystemExit(f"test classes {ds.classes} differ from training classes {result.classes}")
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False)
    out["test_acc"] = _plain.evaluate(result.model, loader, _plain.LoopOptions())[1]
    return out


def fastai(visible: Path, test: Path, *, weights: str, seed: int) -> dict[str, Any]:
    try:
        import fastai.vision.all  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"fastai is not installed ({exc}): pip install -r bench/requirements.txt") from None
    from _fastai_recipe import run

    out = run(visible, weights=weights, epochs=5, seed=seed, test=test)
    val = out["val_acc_per_epoch"]
    return {"t_trained": out["t_trained"], "cpu_trained": out["cpu_trained"], "val_kind": "val", "val_acc": out["final_val_acc"], "test_acc": out["test_acc"],
            "detail": "fine_tune(5): val after each unfrozen epoch " + " ".join(f"{v:.2f}" for v in val)}


WORKERS = {"sklearn-probe": sklearn_probe, "plain": plain, "fastai": fastai}
