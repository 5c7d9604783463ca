"""Matching by position: the same network under another naming scheme, paired in order where the shapes line up.

The checkpoint's leftover tensors (file order) are paired with the model's leftover trunk keys
(module order) only when the sequence of shapes lines up exactly: from the start of the
leftovers, or at the one offset where a run of four or more tensors fits. Integer tensors
(BatchNorm's ``num_batches_tracked``) are left out of the sequence and follow their
``running_mean``. A tail that ends the file and matches the model's head in number and rank is
taken for the checkpoint's classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from regraft.weights._names import Pair

__all__ = ["pair_by_position", "NBT", "is_nbt", "under"]

log = logging.getLogger(__name__)

NBT = "num_batches_tracked"


def is_nbt(key: str) -> bool:
    """Whether ``key`` is a BatchNorm counter."""
    return key.rsplit(".", 1)[-1] == NBT


def under(key: str, path: str | None) -> bool:
    """Whether ``key`` is ``path`` or inside it (never for an empty path)."""
    return bool(path) and (key == path or key.startswith(f"{path}."))


def pair_by_position(
    ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], pairs: list[Pair], *,
    head: str | None, counters: set[str], fits: Callable[[str, str], bool], notes: list[str], skipped: dict[str, str],
) -> list[Pair]:
    """Pair what is left in order, where one window of the checkpoint lines up with the trunk."""
    paired, taken = {p.ckpt for p in pairs}, {p.target for p in pairs}
    # integer tensors (BatchNorm counters, index tables) hold nothing learned: not in the sequence
    left = [k for k in ckpt if k not in paired and ckpt[k].is_floating_point()]
    free = [k for k in shapes if k not in taken and k not in counters]
    trunk = [k for k in free if not under(k, head)]
    heads = [k for k in free if under(k, head)]
    if not left or not (trunk or heads):
        return []
    start = _window(left, trunk, fits)
    if start is None:
        notes.append(
            f"{len(left)} checkpoint tensors match no model key by name and their shapes do not line up "
            f"with the model's {len(trunk)} unmatched trunk tensors in one way only, so none was matched by position"
        )
        return []
    n = len(trunk) if trunk else max(0, len(left) - len(heads))
    start = start if trunk else n
    new = [Pair(c, m, "position") for c, m in zip(left[start : start + len(trunk)], trunk, strict=True)]
    tail = left[start + len(trunk) :] if trunk else left[n:]
    in_file = [k for k in ckpt if ckpt[k].is_floating_point()]
    # the leftover tail is taken for the checkpoint's classifier only when it ends the file
    ends_file = bool(tail) and tail == in_file[len(in_file) - len(tail) :]
    if ends_file and len(tail) == len(heads) and all(
        ckpt[c].dim() == len(shapes[m]) for c, m in zip(tail, heads, strict=True)
    ):
        new += [Pair(c, m, "position") for c, m in zip(tail, heads, strict=True)]
    elif ends_file and trunk and heads:
        for key in tail:  # what follows a whole trunk is the checkpoint's classifier
            skipped[key] = "old head: the model's head was replaced (after the trunk matched by position)"
    for pair in list(new):  # BatchNorm counters follow their running_mean
        if pair.ckpt.endswith("running_mean") and pair.target.endswith("running_mean"):
            c, m = pair.ckpt[: -len("running_mean")] + NBT, pair.target[: -len("running_mean")] + NBT
            if c in ckpt and c not in paired and m in shapes and m not in taken:
                new.append(Pair(c, m, "position"))
    if new:
        log.info("matched %d checkpoint tensors to the model by position (names differ, shapes line up)", len(new))
    return new


def _window(left: list[str], trunk: list[str], fits: Callable[[str, str], bool]) -> int | None:
    """Where ``trunk`` lines up in ``left``: at the start, or at the one offset a long run fits."""
    n = len(trunk)
    if n == 0:
        return 0
    if len(left) >= n and all(fits(c, m) for c, m in zip(left[:n], trunk, strict=True)):
        return 0
    if n < 4:  # a short run could line up by chance anywhere
        return None
    starts = [o for o in range(1, len(left) - n + 1) if all(fits(c, m) for c, m in zip(left[o : o + n], trunk, strict=True))]
    return starts[0] if len(starts) == 1 else None
