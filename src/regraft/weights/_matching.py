"""Pair checkpoint tensors with model keys, in a fixed order, remembering how each pair was made.

1. exact names, after removing wrapper prefixes (``module.``, ``_orig_mod.``) and the one
   prefix change (Lightning's ``model.``, ...) that makes the most names line up;
2. the user's rename rules, for what is still unmatched;
3. by position, when the remaining names don't line up but the sequence of shapes does;
4. shapes: equal shapes load; the old head is dropped when the class count changed; the first
   conv is adapted to another channel count; anything else is *mismatched*;
5. ``--skip`` globs leave chosen pairs out.

``num_batches_tracked`` counters carry no learned values: they load with their BatchNorm when
both sides have them and are otherwise left out of the missing/unexpected lists.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from regraft.weights._rename import RenameRule, apply_rules

__all__ = ["Matched", "match_state_dict", "WRAPPERS"]

log = logging.getLogger(__name__)

WRAPPERS = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_NBT = "num_batches_tracked"


@dataclass
class Matched:
    """What :func:`match_state_dict` decided; ``assign`` is what gets loaded."""

    assign: dict[str, torch.Tensor] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    matched_by_position: dict[str, str] = field(default_factory=dict)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # checkpoint key -> name after prefix changes


@dataclass
class _Pair:
    ckpt: str
    target: str
    step: str  # "name" | "rename" | "position"


def _is_nbt(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == _NBT


def _under(key: str, path: str | None) -> bool:
    return bool(path) and (key == path or key.startswith(path + "."))


def strip_wrappers(key: str) -> str:
    """``module._orig_mod.fc.weight`` -> ``fc.weight``; ``_orig_mod.`` is removed anywhere."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPERS:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.replace("._orig_mod.", ".")


def _prefixes(keys: list[str], depth: int) -> list[str]:
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")[:-1]
        for n in range(1, min(depth, len(parts)) + 1):
            counts[".".join(parts[:n]) + "."] += 1
    return [p for p, _ in counts.most_common(12)]


def _best_prefix_change(names: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    """The (strip, add) prefix pair that puts the most checkpoint tensors onto model keys of their shape."""
    def score(strip: str, add: str) -> int:
        return sum(
            1 for n, shape in names.items()
            if n.startswith(strip) and shapes.get(add + n[len(strip) :]) == shape
        )

    best, best_score = ("", ""), score("", "")
    # only prefixes most keys share: a wrapper, not a rename of one layer (that is --rename's job)
    shared = [p for p in _prefixes(list(names), 3) if 2 * sum(n.startswith(p) for n in names) >= len(names)]
    for strip in ["", *shared]:
        for add in ["", *_prefixes(list(shapes), 2)]:
            if strip == add:
                continue
            s = score(strip, add)
            if s > best_score:
                best, best_score = (strip, add), s
    return best


def _pair_by_name(ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], rules: list[RenameRule], out: Matched) -> list[_Pair]:
    model_keys = set(shapes)
    stripped = {k: strip_wrappers(k) for k in ckpt}
    removed = sorted({k[: len(k) - len(s)] for k, s in stripped.items() if s != k and k.endswith(s)} - {""})
    out.prefixes += [f"removed wrapper prefix '{p}'" for p in removed]
    strip, add = _best_prefix_change({s: tuple(ckpt[k].shape) for k, s in stripped.items()}, shapes)
    if strip:
        out.prefixes.append(f"removed prefix '{strip}'")
    if add:
        out.prefixes.append(f"added prefix '{add}'")
    pairs: list[_Pair] = []
    taken: set[str] = set()
    for key, name in stripped.items():
        candidate = add + name[len(strip) :] if name.startswith(strip) else name
        out.names[key] = candidate
        target = candidate if candidate in model_keys else (name if name in model_keys else None)
        if target is not None and target not in taken:
            pairs.append(_Pair(key, target, "name"))
            taken.add(target)
    used: set[str] = set()
    paired = {p.ckpt for p in pairs}
    for key, name in stripped.items():
        if key in paired or not rules:
            continue
        target = apply_rules(rules, name, used)
        if target == name:
            target = apply_rules(rules, key, used)
        if target in model_keys and target not in taken and target != name:
            pairs.append(_Pair(key, target, "rename"))
            taken.add(target)
    for rule in rules:
        if str(rule) not in used:
            out.notes.append(f"rename rule {rule} matched no checkpoint key")
            log.warning("rename rule %s matched no checkpoint key", rule)
    return pairs


def _pair_by_position(
    ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], pairs: list[_Pair], *,
    head: str | None, counters: set[str], fits, out: Matched,
) -> list[_Pair]:
    """Pair what is left in order, where one window of the checkpoint lines up with the trunk."""
    paired, taken = {p.ckpt for p in pairs}, {p.target for p in pairs}
    # integer tensors (BatchNorm counters, index tables) hold nothing learned: not in the sequence
    left = [k for k in ckpt if k not in paired and ckpt[k].is_floating_point()]
    free = [k for k in shapes if k not in taken and k not in counters]
    trunk = [k for k in free if not _under(k, head)]
    heads = [k for k in free if _under(k, head)]
    if not left or not (trunk or heads):
        return []
    start = _window(left, trunk, fits)
    if start is None:
        out.notes.append(
            f"{len(left)} checkpoint tensors match no model key by name and their shapes do not line up "
            f"with the model's {len(trunk)} unmatched trunk tensors in one way only, so none was matched by position"
        )
        return []
    n = len(trunk) if trunk else max(0, len(left) - len(heads))
    start = start if trunk else n
    new = [_Pair(c, m, "position") for c, m in zip(left[start : start + len(trunk)], trunk, strict=True)]
    tail = left[start + len(trunk) :] if trunk else left[n:]
    in_file = [k for k in ckpt if ckpt[k].is_floating_point()]
    # the leftover tail is taken for the checkpoint's classifier only when it ends the file
    ends_file = bool(tail) and tail == in_file[len(in_file) - len(tail) :]
    if ends_file and len(tail) == len(heads) and all(
        ckpt[c].dim() == len(shapes[m]) for c, m in zip(tail, heads, strict=True)
    ):
        new += [_Pair(c, m, "position") for c, m in zip(tail, heads, strict=True)]
    elif ends_file and trunk and heads:
        for key in tail:  # what follows a whole trunk is the checkpoint's classifier
            out.skipped[key] = "old head: the model's head was replaced (after the trunk matched by position)"
    for pair in list(new):  # BatchNorm counters follow their running_mean
        if pair.ckpt.endswith("running_mean") and pair.target.endswith("running_mean"):
            c, m = pair.ckpt[: -len("running_mean")] + _NBT, pair.target[: -len("running_mean")] + _NBT
            if c in ckpt and c not in paired and m in shapes and m not in taken:
                new.append(_Pair(c, m, "position"))
    if new:
        log.info("matched %d checkpoint tensors to the model by position (names differ, shapes line up)", len(new))
    return new


def _window(left: list[str], trunk: list[str], fits) -> int | None:
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


def _adaptable(src: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(src) == len(want) >= 3 and src[0] == want[0] and src[2:] == want[2:] and src[1] != want[1]


def adapt_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv weight for ``channels`` inputs: summed for one, repeated and rescaled otherwise.

    Repeating the RGB filters and scaling by ``3 / channels`` keeps the response to an image
    whose channels all carry the same signal equal to the pretrained one.
    """
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    have = weight.shape[1]
    reps = math.ceil(channels / have)
    tiled = weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :channels]
    return tiled * (have / channels)


def _class_count_changed(src: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(src) == len(want) >= 1 and src[0] != want[0] and src[1:] == want[1:]


def _resolve_shapes(
    ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], pairs: list[_Pair], *,
    head: str | None, first_conv: str | None, adapt: bool, out: Matched,
) -> None:
    for pair in pairs:
        src, want = ckpt[pair.ckpt], shapes[pair.target]
        have = tuple(src.shape)
        if have != want:
            if _under(pair.target, head) and _class_count_changed(have, want):
                out.skipped[pair.ckpt] = f"old head: {have[0]} classes, the model's {pair.target} has {want[0]}"
                log.info("dropped the checkpoint's head %s: class count changed (%d -> %d)", pair.ckpt, have[0], want[0])
                continue
            if not (adapt and pair.target == first_conv and _adaptable(have, want)):
                out.mismatched[pair.ckpt] = f"{pair.target}: checkpoint {list(have)} vs model {list(want)}"
                continue
            how = "summed over input channels" if want[1] == 1 else f"repeated and scaled by {have[1]}/{want[1]}"
            out.adapted[pair.target] = f"{list(have)} -> {list(want)}: {how}"
            log.info("adapted first conv %s from %d to %d input channels", pair.target, have[1], want[1])
            src = adapt_conv(src, want[1])
        out.assign[pair.target] = src
        if pair.step == "name":
            out.loaded.append(pair.target)
        elif pair.step == "rename":
            out.renamed[pair.ckpt] = pair.target
        else:
            out.matched_by_position[pair.ckpt] = pair.target


def _skip_glob(names: tuple[str, ...], globs: list[str]) -> str | None:
    for glob in globs:
        if any(fnmatch.fnmatchcase(n, glob) or fnmatch.fnmatchcase(n, glob + ".*") for n in names):
            return glob
    return None


def match_state_dict(
    ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], *,
    head: str | None = None, rules: list[RenameRule] | None = None, skip: list[str] | None = None,
    first_conv: str | None = None, adapt_first_conv: bool = True, counters: set[str] | None = None,
) -> Matched:
    """Decide which checkpoint tensor loads into which model key (see the module docstring).

    Args:
        ckpt: the checkpoint's tensors, in file order.
        shapes: the model's state-dict keys and shapes, in module order.
        head: dotted path of the model's classifier (its old weights may be dropped).
        rules: compiled rename rules.
        skip: globs of checkpoint or model keys to leave out.
        first_conv: the model key of the first convolution's weight, which may be adapted.
        adapt_first_conv: allow that adaptation.
        counters: model keys of integer buffers (BatchNorm counters), left out of position matching.

    Returns:
        The decisions; ``assign`` maps model keys to the tensors to load.
    """
    out = Matched()
    def fits(c: str, m: str) -> bool:
        have = tuple(ckpt[c].shape)
        return have == shapes[m] or (adapt_first_conv and m == first_conv and _adaptable(have, shapes[m]))

    pairs = _pair_by_name(ckpt, shapes, rules or [], out)
    counters = set(counters or ())
    pairs += _pair_by_position(ckpt, shapes, pairs, head=head, counters=counters, fits=fits, out=out)
    globs = list(skip or [])
    kept = []
    for pair in pairs:
        glob = _skip_glob((pair.ckpt, out.names[pair.ckpt], pair.target), globs)
        if glob is None:
            kept.append(pair)
        else:
            out.skipped[pair.ckpt] = f"--skip {glob}"
    _resolve_shapes(ckpt, shapes, kept, head=head, first_conv=first_conv, adapt=adapt_first_conv, out=out)
    _sort_leftovers(ckpt, {p.ckpt for p in pairs}, globs=globs, head=head, out=out)
    return out


def _sort_leftovers(ckpt: dict[str, torch.Tensor], paired: set[str], *, globs: list[str], head: str | None, out: Matched) -> None:
    """Checkpoint keys no step paired: skipped by a glob, an old head, an idle counter or unexpected."""
    ignored = 0
    for key in ckpt:
        if key in paired or key in out.skipped:
            continue
        glob = _skip_glob((key, out.names[key]), globs)
        if glob is not None:
            out.skipped[key] = f"--skip {glob}"
        elif _under(out.names[key], head):
            out.skipped[key] = "old head: the model's head was replaced"
        elif _is_nbt(key):
            ignored += 1
        else:
            out.unexpected.append(key)
    if ignored:
        out.notes.append(f"{ignored} BatchNorm num_batches_tracked counters in the checkpoint had no counterpart (they hold no weights)")
