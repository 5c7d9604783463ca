"""Pair checkpoint tensors with model keys, in a fixed order, remembering how each pair was made.

1. exact names, after removing wrapper prefixes (``module.``, ``_orig_mod.``) and the one
   prefix change (Lightning's ``model.``, ...) that fits nearly all the tensors it moves (90% by
   element count); a name match whose neighbours clash is refused (``_names``);
2. the user's rename rules, for what is still unmatched;
3. by position, when the remaining names don't line up but the sequence of shapes does
   (``_position``);
4. shapes: equal shapes load; in the head, a checkpoint classifier of the right size loads only
   when its classes are known to be the same (``keep_head``), one with another class count is
   dropped; the first conv is adapted to another channel count; anything else is *mismatched*;
5. ``--skip`` globs leave chosen pairs out.

``num_batches_tracked`` counters carry no learned values: they load with their BatchNorm when
both sides have them and are otherwise left out of the missing/unexpected lists.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import torch

from regraft.weights._names import WRAPPERS, Pair, pair_by_name, refuse_isolated, strip_wrappers
from regraft.weights._position import is_nbt, pair_by_position, under
from regraft.weights._rename import RenameRule
from regraft.zoo import adapt_input_conv

__all__ = ["Matched", "match_state_dict", "adapt_conv", "describe_adaptation", "WRAPPERS", "strip_wrappers"]

log = logging.getLogger(__name__)

HEAD_WITHHELD = "old head: withheld; it fits the model's head, but what its classes mean is unknown (--keep-head loads it)"


@dataclass
class Matched:
    """What :func:`match_state_dict` decided; ``assign`` is what gets loaded.

    ``head_loaded`` (model keys) and ``head_withheld`` (checkpoint keys) say what became of a
    checkpoint classifier that fits; one that does not is in ``skipped`` as an ``old head``.
    """

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
    head_loaded: list[str] = field(default_factory=list)
    head_withheld: list[str] = field(default_factory=list)


def _adaptable(src: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(src) == len(want) >= 3 and src[0] == want[0] and src[2:] == want[2:] and src[1] != want[1]


def adapt_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv weight for ``channels`` inputs: summed for one, repeated and rescaled otherwise
    (timm's rule; :func:`regraft.zoo.adapt_input_conv`, which also adapts the stems torchvision builds).

    Repeating the RGB filters and scaling by ``3 / channels`` keeps the response to an image
    whose channels all carry the same signal equal to the pretrained one.

    Example:
        >>> adapt_conv(torch.ones(8, 3, 3, 3), 1).shape
        torch.Size([8, 1, 3, 3])
    """
    return adapt_input_conv(weight, channels)


def describe_adaptation(have: int, want: int) -> str:
    """How :func:`adapt_conv` made ``want`` input channels of ``have``, in words (the load report's line)."""
    if want == 1:
        return f"the {have} channels' filters summed into 1 channel"
    source = "RGB" if have == 3 else f"{have}-channel"
    return (f"channel i takes the {source} filter of channel i mod {have}, all scaled by {have}/{want} "
            f"({want} channels from {have})")


def _class_count_changed(src: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(src) == len(want) >= 1 and src[0] != want[0] and src[1:] == want[1:]


def _resolve_shapes(
    ckpt: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], pairs: list[Pair], *,
    head: str | None, first_conv: str | None, adapt: bool, keep_head: bool, out: Matched,
) -> None:
    for pair in pairs:
        src, want = ckpt[pair.ckpt], shapes[pair.target]
        have = tuple(src.shape)
        in_head = under(pair.target, head)
        if have != want:
            if in_head and _class_count_changed(have, want):
                out.skipped[pair.ckpt] = f"old head: {have[0]} classes, the model's {pair.target} has {want[0]}"
                log.info("dropped the checkpoint's head %s: class count changed (%d -> %d)", pair.ckpt, have[0], want[0])
                continue
            if not (adapt and pair.target == first_conv and _adaptable(have, want)):
                out.mismatched[pair.ckpt] = f"{pair.target}: checkpoint {list(have)} vs model {list(want)}"
                continue
            out.adapted[pair.target] = f"{list(have)} -> {list(want)}: {describe_adaptation(have[1], want[1])}"
            log.info("adapted first conv %s from %d to %d input channels", pair.target, have[1], want[1])
            src = adapt_conv(src, want[1])
        elif in_head and not keep_head and src.is_floating_point():
            out.skipped[pair.ckpt] = HEAD_WITHHELD
            out.head_withheld.append(pair.ckpt)
            continue
        if in_head:
            out.head_loaded.append(pair.target)
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
    keep_head: bool = False,
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
        keep_head: load a checkpoint classifier that fits the model's head (its classes are
            known to be the user's); otherwise it is withheld.

    Returns:
        The decisions; ``assign`` maps model keys to the tensors to load.
    """
    out = Matched()

    def fits_exact(c: str, m: str) -> bool:
        have = tuple(ckpt[c].shape)
        return have == shapes[m] or (adapt_first_conv and m == first_conv and _adaptable(have, shapes[m]))

    def fits(c: str, m: str) -> bool:  # what a right pairing may show: also an old head of another size
        return fits_exact(c, m) or (under(m, head) and _class_count_changed(tuple(ckpt[c].shape), shapes[m]))

    counters = set(counters or ())
    pairs = pair_by_name(ckpt, shapes, rules or [], counters=counters, fits=fits, names=out.names, prefixes=out.prefixes, notes=out.notes)
    pairs = refuse_isolated(pairs, shapes, fits=fits, notes=out.notes)
    pairs += pair_by_position(
        ckpt, shapes, pairs, head=head, counters=counters, fits=fits_exact, notes=out.notes, skipped=out.skipped,
    )
    globs = list(skip or [])
    kept = []
    for pair in pairs:
        glob = _skip_glob((pair.ckpt, out.names[pair.ckpt], pair.target), globs)
        if glob is None:
            kept.append(pair)
        else:
            out.skipped[pair.ckpt] = f"--skip {glob}"
    _resolve_shapes(ckpt, shapes, kept, head=head, first_conv=first_conv, adapt=adapt_first_conv, keep_head=keep_head, out=out)
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
        elif under(out.names[key], head):
            out.skipped[key] = "old head: the model's head was replaced"
        elif is_nbt(key):
            ignored += 1
        else:
            out.unexpected.append(key)
    if ignored:
        out.notes.append(f"{ignored} BatchNorm num_batches_tracked counters in the checkpoint had no counterpart (they hold no weights)")
