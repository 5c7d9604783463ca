"""fastai's fine-tuning recipe on the same weights: ``vision_learner(...).fine_tune(...)``.

fastai cannot fetch timm's pretrained weights here (no network), so the architecture is handed to
``vision_learner`` as a callable, which is how fastai takes any non-registry model:

1. ``lite0(pretrained=True)`` builds timm's ``tf_efficientnet_lite0`` and loads the
   EfficientNet-Lite0 package's ImageNet state dict into it with ``regraft.weights.load_weights``
   (the package's key names differ from timm's; the loader matches them in order and shape).
2. ``vision_learner(dls, lite0, normalize=False, metrics=accuracy)`` calls it, cuts the body at
   its last child holding a pooling layer (``global_pool``: the body is ``conv_stem .. bn2``, what
   timm's ``forward_features`` runs) and adds fastai's standard new head (concat avg+max pool,
   BatchNorm, dropout, Linear 512, ReLU, BatchNorm, dropout, Linear to the classes), then freezes
   the body (BatchNorm layers stay trainable, fastai's ``train_bn`` default).
3. ``learn.fine_tune(epochs)``: one frozen epoch (one-cycle, base LR 2e-3), then everything
   unfrozen for ``epochs`` epochs (one-cycle, discriminative LRs from 1e-3/100 to 1e-3), Adam with
   fastai's defaults: the recipe of fastai's tutorials, no LR finder.

Data: ``ImageDataLoaders.from_folder(train="train", valid="val")`` with the tutorials' transforms
(``item_tfms=Resize(224)``, ``batch_tfms=aug_transforms()``) and the weights' normalisation
(mean/std 0.5, added explicitly because fastai knows no stats for a custom callable), batch 32,
no worker processes (as regraft chooses on two CPUs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run(root: str | Path, *, weights: str, epochs: int, batch_size: int = 32, img: int = 224, seed: int = 0,
        test: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune with fastai; returns val accuracy per epoch, the final val accuracy, seconds, test accuracy."""
    import timm
    import torch
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        get_image_files,
        set_seed,
        vision_learner,
    )

    from regraft.weights import load_weights

    t0 = time.perf_counter()
    set_seed(seed, reproducible=True)

    def lite0(pretrained: bool = True) -> torch.nn.Module:
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if pretrained:
            load_weights(model, weights, head="classifier")
        return model

    dls = ImageDataLoaders.from_folder(
        root, train="train", valid="val", item_tfms=Resize(img),
        batch_tfms=[*aug_transforms(), Normalize.from_stats([0.5] * 3, [0.5] * 3)],
        bs=batch_size, num_workers=0, device=torch.device("cpu"), seed=seed,
    )
    learn = vision_learner(dls, lite0, pretrained=True, normalize=False, metrics=accuracy)
    learn.fine_tune(epochs)
    seconds = time.perf_counter() - t0
    t_trained, cpu_trained = time.time(), time.process_time()  # for callers that time from their process's launch
    # recorder.values: [train_loss, valid_loss, accuracy] per epoch of the last fit (the unfrozen epochs:
    # fine_tune fits twice and the Recorder starts afresh at each fit)
    val_acc = [float(v[2]) for v in learn.recorder.values]
    out = {"val_acc_per_epoch": val_acc, "final_val_acc": val_acc[-1], "best_val_acc": max(val_acc),
           "seconds_to_trained": seconds, "t_trained": t_trained, "cpu_trained": cpu_trained, "epochs_run": len(val_acc)}
    if test is not None:
        files = sorted(get_image_files(test))
        dl = dls.test_dl(files, with_labels=True)
        out["test_acc"] = float(learn.validate(dl=dl)[1])
    return out
