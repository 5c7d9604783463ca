"""The linear probe on cached features: a converged, cross-validated L2 logistic regression.

``fit_linear`` solves softmax (or one-vs-rest sigmoid) cross-entropy + ``l2/2·||W||²`` to
convergence with L-BFGS in float64 and returns ``W, b`` for the raw features;
``cross_validate`` scores a grid of l2 by stratified k-fold cross-validation (an image's
augmented views kept in one fold) and gives every row's out-of-fold probabilities;
``fit_probe`` chooses l2 that way and refits on every row. Pure torch: scikit-learn is only
the tests' reference. docs/features.md says how it is used and what it costs.

Example:
    >>> import torch
    >>> x, y = torch.randn(60, 8), torch.arange(60) % 3
    >>> probe = fit_probe(x, y, num_classes=3)
    >>> probe.fit.weight.shape, probe.cv.oof_probabilities.shape
    (torch.Size([3, 8]), torch.Size([60, 3]))
"""

from regraft.features.linear._cv import (
    CVResult,
    CVScore,
    Probe,
    cross_validate,
    fit_probe,
    rows_from_views,
)
from regraft.features.linear._folds import assign_folds, fold_count
from regraft.features.linear._solver import LinearFit, fit_linear

__all__ = [
    "fit_linear", "LinearFit", "cross_validate", "CVResult", "CVScore", "fit_probe", "Probe", "rows_from_views",
    "assign_folds", "fold_count",
]
