"""Matching by name: wrapper prefixes, the one prefix change that must account for nearly everything,
the user's rename rules, and the neighbour check that refuses isolated name matches.

A prefix change (Lightning's ``model.``, a ``backbone.`` the model lacks) is a guess, so it is
applied only when it accounts for nearly all the tensors on one side of it: at least
:data:`PREFIX_SHARE` (by element count) of the checkpoint's tensors under the prefix it removes,
or of the model's under the prefix it adds, fit where it puts them. The tutorials' backbone idiom
shows why: loading ResNet-18 into ``nn.Sequential(*list(resnet18().children())[:-1])``, the best
prefix (``4.0.``) fits 5 tensors of 122 and would put the stem's ``bn1`` into ``layer1.0.bn1``;
refusing it leaves every tensor to position matching, which loads all of them correctly.

A name match is also refused when its module's neighbours (the modules before and after it in
the model) disagree with the checkpoint and none agrees: an isolated fit between clashes is a
coincidence of shapes, not the same layer.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from regraft.weights._rename import RenameRule, apply_rules

__all__ = ["Pair", "WRAPPERS", "PREFIX_SHARE", "strip_wrappers", "pair_by_name", "refuse_isolated"]

log = logging.getLogger(__name__)

WRAPPERS = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
PREFIX_SHARE = 0.9  # a prefix change must fit this share of the tensors (by element count)

Fits = Callable[[str, str], bool]


@dataclass
class Pair:
    """One checkpoint key paired with one model key, and the step that paired them."""

    ckpt: str
    target: str
    step: str  # "name" | "rename" | "position"


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


def _moved(name: str, strip: str, add: str) -> str:
    return add + name[len(strip) :] if name.startswith(strip) else name


def _prefix_change(
    names: dict[str, str], ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], *,
    counters: set[str], fits: Fits, notes: list[str],
) -> tuple[str, str]:
    """The (strip, add) prefix pair to apply: ("", "") unless one fits nearly all tensors of a side.

    Args:
        names: checkpoint key -> its name without wrapper prefixes.
        ckpt: the checkpoint's tensors.
        shapes: the model's keys and shapes.
        counters: model keys of integer buffers (not weights, not counted).
        fits: whether a checkpoint key's tensor fits a model key.
        notes: where a refused change is explained.
    """
    floats = {k: n for k, n in names.items() if ckpt[k].is_floating_point()}

    def score(strip: str, add: str) -> int:
        return sum(
            ckpt[k].numel() for k, n in floats.items()
            if n.startswith(strip) and (t := add + n[len(strip) :]) in shapes and fits(k, t)
        )

    plain = score("", "")
    best, best_score = ("", ""), plain
    keys = list(floats.values())
    # strip only what most keys share: a wrapper, not a rename of one layer (that is --rename's job)
    shared = [p for p in _prefixes(keys, 3) if 2 * sum(n.startswith(p) for n in keys) >= len(keys)]
    for strip in ["", *shared]:
        for add in ["", *_prefixes(list(shapes), 2)]:
            if strip != add and (s := score(strip, add)) > best_score:
                best, best_score = (strip, add), s
    if best == ("", ""):
        return best
    # the two sides of the change: what it takes from the checkpoint, what it fills in the model
    ckpt_side = sum(ckpt[k].numel() for k, n in floats.items() if n.startswith(best[0]))
    model_side = sum(math.prod(s) for k, s in shapes.items() if k.startswith(best[1]) and k not in counters)
    side = max(1, min(ckpt_side, model_side))
    if best_score >= PREFIX_SHARE * side:
        return best
    change = " and ".join(
        part for part in (f"removing '{best[0]}'" if best[0] else "", f"adding '{best[1]}'" if best[1] else "") if part
    )
    share = best_score / side
    notes.append(
        f"prefix change refused: {change} would fit only {share:.1%} of the tensors it moves (by element count), "
        f"below {PREFIX_SHARE:.0%}; a guess that fits so little is a coincidence of names"
    )
    log.info("prefix change %s refused: it fits %.1f%% of the tensors", best, 100 * share)
    return ("", "")


def pair_by_name(
    ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], rules: list[RenameRule], *,
    counters: set[str], fits: Fits, names: dict[str, str], prefixes: list[str], notes: list[str],
) -> list[Pair]:
    """Exact names after wrappers and an accepted prefix change, then the rename rules.

    Fills ``names`` (checkpoint key -> name after the prefix change), ``prefixes`` and ``notes``.
    """
    model_keys = set(shapes)
    stripped = {k: strip_wrappers(k) for k in ckpt}
    removed = sorted({k[: len(k) - len(s)] for k, s in stripped.items() if s != k and k.endswith(s)} - {""})
    prefixes += [f"removed wrapper prefix '{p}'" for p in removed]
    strip, add = _prefix_change(stripped, ckpt, shapes, counters=counters, fits=fits, notes=notes)
    if strip:
        prefixes.append(f"removed prefix '{strip}'")
    if add:
        prefixes.append(f"added prefix '{add}'")
    pairs: list[Pair] = []
    taken: set[str] = set()
    for key, name in stripped.items():
        candidate = _moved(name, strip, add)
        names[key] = candidate
        target = candidate if candidate in model_keys else (name if name in model_keys else None)
        if target is not None and target not in taken:
            pairs.append(Pair(key, target, "name"))
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
            pairs.append(Pair(key, target, "rename"))
            taken.add(target)
    for rule in rules:
        if str(rule) not in used:
            notes.append(f"rename rule {rule} matched no checkpoint key")
            log.warning("rename rule %s matched no checkpoint key", rule)
    return pairs


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def refuse_isolated(pairs: list[Pair], shapes: dict[str, tuple[int, ...]], *, fits: Fits, notes: list[str]) -> list[Pair]:
    """``pairs`` without the name matches whose model module has a clashing neighbour and no fitting one.

    Modules are ordered as the model registers them (``shapes`` is in state-dict order); a
    module *fits* when every name-matched tensor in it fits, and *clashes* when one does not.
    Only name matches are judged: a rename rule is the user's explicit word.
    """
    order = list(dict.fromkeys(_module(k) for k in shapes))
    status: dict[str, bool] = {}
    for pair in pairs:
        if pair.step == "name":
            module = _module(pair.target)
            status[module] = status.get(module, True) and fits(pair.ckpt, pair.target)
    refused: set[str] = set()
    for i, module in enumerate(order):
        if status.get(module) is not True:
            continue
        near = [status.get(order[j]) for j in (i - 1, i + 1) if 0 <= j < len(order)]
        if False in near and True not in near:
            refused.add(module)
    if not refused:
        return pairs
    dropped = {p.ckpt for p in pairs if p.step == "name" and _module(p.target) in refused}
    example = next(p for p in pairs if p.ckpt in dropped)
    notes.append(
        f"{len(dropped)} name matches not loaded: the modules around them do not match the checkpoint, "
        f"so the names agree by coincidence (e.g. {example.ckpt} -> {example.target}); they were left to position matching"
    )
    log.warning("refused %d isolated name matches, e.g. %s -> %s", len(dropped), example.ckpt, example.target)
    return [p for p in pairs if p.ckpt not in dropped]
