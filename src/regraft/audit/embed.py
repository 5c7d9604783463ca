"""One embedding per image: the pretrained network up to its classifier's input, kept on disk.

The network is cut where its head begins (:func:`regraft.features.find_cut`, the same cut the
feature cache uses), and every image is run through the evaluation transform of its pretrained
data config, in eval mode, once. The embeddings are stored under the cache folder
(``scan-features/<model key>.pt``), keyed by each file's content hash (the byte scan's BLAKE2b),
so a second scan of the folder, or of a folder sharing images with it, embeds only the new
files: that is what makes a warm deep scan cost little more than its probes (docs/scan.md).
The model key covers the architecture, the weights (a file by path, size and modification
time) and the input size and normalisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from regraft.errors import DataError, ModelError

__all__ = ["Embeddings", "embed_images", "STORE_FORMAT"]

log = logging.getLogger(__name__)

STORE_FORMAT = 1  # bumped when what is stored changes meaning


@dataclass
class Embeddings:
    """``features`` (n, d) float32 in the order of the paths given; ``model``: what made them."""

    features: torch.Tensor
    model: dict[str, Any] = field(default_factory=dict)
    computed: int = 0  # images run through the network now
    reused: int = 0  # images found in the store
    seconds: float = 0.0


def embed_images(
    paths: Sequence[str],
    *,
    model: str,
    weights: str = "DEFAULT",
    img_size: int | None = None,
    digests: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    notify: Callable[[str], None] | None = None,
) -> Embeddings:
    """Embed readable image files with ``model`` (its head's input), reusing stored embeddings.

    Args:
        paths: image files that decode (the byte scan's readable files).
        model: a torchvision or timm name. weights: as for ``regraft train --weights``.
        img_size: input size (default: the pretrained config's).
        digests: each file's content hash; with them, embeddings are looked up in and added to
            the store; without them nothing is stored.
        batch_size, workers: of the loader. device: ``auto`` (CUDA when there is one), ``cpu``, ...
        cache_dir: the store's folder (default: the decode cache's, ``~/.cache/regraft``).
        notify: told one line about what was embedded.

    Returns:
        The :class:`Embeddings`.

    Raises:
        ModelError: unknown model, or a model regraft cannot cut at its head.
        WeightsError: the weights cannot be loaded. DataError: a file failed to decode.
    """
    from regraft import zoo

    t0 = time.perf_counter()
    ref = zoo.resolve(model)
    dcfg = zoo.data_config(ref, weights=weights).with_overrides(img_size=img_size)
    info = {"name": str(ref), "weights": weights, "input_size": list(dcfg.input_size)}
    store = _Store(_store_path(cache_dir, _model_key(info, dcfg)), digests) if digests is not None else None
    found = store.lookup() if store is not None else {}
    missing = [i for i in range(len(paths)) if i not in found]
    computed = None
    if missing:
        prefix, transform = _network(ref, weights=weights, dcfg=dcfg)
        computed = _run(prefix, [paths[i] for i in missing], transform, batch_size=batch_size, device=device, workers=workers)
        if store is not None:
            store.add([digests[i] for i in missing], computed)  # type: ignore[index]
    dims = computed.shape[1] if computed is not None else next(iter(found.values())).shape[0]
    features = torch.empty(len(paths), dims, dtype=torch.float32)
    for i, row in found.items():
        features[i] = row
    if computed is not None:
        features[torch.as_tensor(missing, dtype=torch.long)] = computed
    info["dims"] = dims
    result = Embeddings(features, info, computed=len(missing), reused=len(found), seconds=time.perf_counter() - t0)
    (notify or log.info)(f"embedded {len(paths)} images with {ref} ({dims} numbers each): {len(missing)} computed, "
                         f"{len(found)} from the store, {result.seconds:.1f}s")
    return result


def _network(ref: Any, *, weights: str, dcfg: Any) -> tuple[torch.nn.Module, Any]:
    from regraft import surgery, zoo
    from regraft.data import build_transforms
    from regraft.features import find_cut
    from regraft.weights import is_pretrained, load_weights

    net = zoo.build(ref)
    head = surgery.find_head(net)
    if is_pretrained(weights):
        load_weights(net, weights, head=head)
    else:
        log.warning("deep scan with random weights: the embeddings know nothing of images, findings will be weak")
    cut = find_cut(net, trainable=lambda name: name == head or name.startswith(head + "."), head=head)
    if cut is None:
        raise ModelError(f"cannot cut {ref} at its classifier '{head}' to embed images; pick another --model")
    net.eval()
    return cut.prefix, build_transforms(dcfg, train=False)


@torch.no_grad()
def _run(prefix: torch.nn.Module, paths: list[str], transform: Any, *, batch_size: int, device: str,
         workers: int | None) -> torch.Tensor:
    from regraft.data import ImageDataset
    from regraft.features import FeatureCache

    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    prefix = prefix.to(target)
    dataset = ImageDataset([(p, 0) for p in paths], transform, on_error="drop")
    cache = FeatureCache.build(prefix, dataset, batch_size=batch_size, device=target, workers=workers)
    if len(cache) != len(paths) or dataset.skipped:
        bad = dataset.skipped[0] if dataset.skipped else "an image"
        raise DataError(f"{bad} failed to decode while embedding; run 'regraft scan' without --model to list unusable files")
    features = cache.features[0].reshape(len(paths), -1).float().clone()
    cache.close()
    return features


def _model_key(info: dict[str, Any], dcfg: Any) -> str:
    weights = info["weights"]
    identity = weights
    if weights and os.path.isfile(weights):
        stat = os.stat(weights)
        identity = f"{os.path.realpath(weights)}:{stat.st_size}:{stat.st_mtime_ns}"
    text = json.dumps({"format": STORE_FORMAT, "model": info["name"], "weights": identity, "data": dcfg.to_dict()},
                      sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _store_path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    from regraft.data import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / "scan-features" / f"{key}.pt"


class _Store:
    """The embeddings of one model, by file content hash, in one file guarded by a lock."""

    def __init__(self, path: Path, digests: Sequence[str]) -> None:
        self.path, self.digests = path, list(digests)

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"digests": [], "features": torch.empty(0, 0)}
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
            if isinstance(data, dict) and len(data.get("digests", [])) == len(data.get("features", [])):
                return data
        except Exception as exc:  # a damaged store is rebuilt, never trusted
            log.warning("ignoring the unreadable embedding store %s (%s)", self.path, exc)
        return {"digests": [], "features": torch.empty(0, 0)}

    def lookup(self) -> dict[int, torch.Tensor]:
        data = self._read()
        row_of = {d: i for i, d in enumerate(data["digests"])}
        return {i: data["features"][row_of[d]].float() for i, d in enumerate(self.digests) if d in row_of}

    def add(self, digests: list[str], features: torch.Tensor) -> None:
        from filelock import FileLock

        from regraft.runs import atomic_write_bytes

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            data = self._read()
            known = set(data["digests"])
            new = [i for i, d in enumerate(digests) if d not in known]
            if not new:
                return
            old = data["features"] if len(data["digests"]) else features.new_empty(0, features.shape[1])
            merged = {"digests": data["digests"] + [digests[i] for i in new],
                      "features": torch.cat([old.to(torch.float32), features[new].to(torch.float32)])}
            buffer = io.BytesIO()
            torch.save(merged, buffer)
            atomic_write_bytes(self.path, buffer.getvalue())
