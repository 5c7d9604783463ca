"""Stratified k-fold assignment that keeps groups (an image's augmented views) in one fold.

Written here rather than taken from scikit-learn's ``StratifiedGroupKFold`` because regraft must
not depend on scikit-learn at run time, and because the rule is short: within each class, the
groups are shuffled (seeded ``torch.Generator``) and dealt round-robin to the folds, the dealing
position running on from one class to the next so that fold sizes stay within one group.
"""

from __future__ import annotations

import torch

from regraft.errors import DataError

DEFAULT_FOLDS = 5


def fold_count(strata: torch.Tensor, *, groups: torch.Tensor | None = None, requested: int = DEFAULT_FOLDS) -> int:
    """``min(requested, images in the smallest class)``, at least 2.

    Counts groups (images), not rows, and only classes that have images. With a class of a
    single image the answer is 2: that image is held out in one fold, where the probe has
    never seen its class (see :func:`regraft.features.linear.cross_validate`).

    Raises:
        DataError: fewer than 2 images in all, or ``requested`` below 2.
    """
    if requested < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {requested}")
    group_strata = _group_strata(strata, groups)
    if len(group_strata) < 2:
        raise DataError(f"cross-validation needs at least 2 images, got {len(group_strata)}; add images")
    counts = torch.bincount(group_strata)
    smallest = int(counts[counts > 0].min())
    return max(2, min(requested, smallest))


def assign_folds(
    strata: torch.Tensor, *, folds: int, seed: int = 0, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """The fold (0..folds-1) of each row: stratified by ``strata``, groups never split.

    Args:
        strata: ``(n,)`` non-negative integer stratum per row (its class).
        folds: number of folds (at least 2, at most the number of groups).
        seed: seeds the shuffle inside each stratum.
        groups: ``(n,)`` integer group per row (rows of one image share it); default one
            group per row.

    Returns:
        ``(n,)`` long tensor of fold indices.

    Raises:
        DataError: one group's rows have different strata (labels), or fewer groups than folds.
    """
    group_ids, inverse = _groups(strata, groups)
    group_strata = _group_strata(strata, groups)
    if folds < 2 or folds > len(group_ids):
        raise DataError(f"cannot make {folds} folds of {len(group_ids)} images; use 2..{len(group_ids)} folds")
    generator = torch.Generator().manual_seed(int(seed))
    fold_of_group = torch.empty(len(group_ids), dtype=torch.long)
    position = 0
    for stratum in torch.unique(group_strata).tolist():
        members = (group_strata == stratum).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold_of_group[members] = (torch.arange(len(members)) + position) % folds
        position = (position + len(members)) % folds
    return fold_of_group[inverse]


def _groups(strata: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if groups is None:
        return torch.arange(len(strata)), torch.arange(len(strata))
    groups = torch.as_tensor(groups)
    if groups.shape != strata.shape:
        raise DataError(f"groups must have one entry per row ({tuple(strata.shape)}), got {tuple(groups.shape)}")
    return torch.unique(groups, return_inverse=True)


def _group_strata(strata: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """The stratum of each group; DataError when one group's rows disagree."""
    group_ids, inverse = _groups(strata, groups)
    if groups is None:
        return strata.to(torch.long)
    first = torch.full((len(group_ids),), -1, dtype=torch.long)
    first.scatter_(0, inverse, strata.to(torch.long))  # any row's stratum; checked below
    mismatch = first[inverse] != strata
    if bool(mismatch.any()):
        row = int(mismatch.nonzero()[0])
        raise DataError(
            f"rows of group {int(group_ids[inverse[row]])} carry different labels (row {row}); "
            "the views of one image must share its label"
        )
    return first
