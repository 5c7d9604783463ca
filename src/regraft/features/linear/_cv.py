"""Choosing the probe's l2 by stratified k-fold cross-validation, and the refit on every row."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from regraft.errors import ConfigError, DataError
from regraft.features.linear._folds import DEFAULT_FOLDS, assign_folds, fold_count
from regraft.features.linear._problem import Problem, prepare
from regraft.features.linear._solver import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    LinearFit,
    _Batch,
    softmax,
    solve,
    solve_folds,
)

log = logging.getLogger(__name__)

# The default grid in units of the features' mean variance s² (l2 = g·s²), a decade apart: 10 all
# but ignores the data (it predicts the class shares), 1e-6 all but ignores the penalty.
# Half-decade steps cost twice the time; the log-loss curve is flat near its minimum.
RELATIVE_GRID = tuple(10.0**-e for e in range(-1, 7))
PATIENCE = 2  # stop the path after this many weaker l2 in a row score worse than the best
_EPS = torch.finfo(torch.float64).eps  # probabilities are clipped here for the log-loss, as sklearn does


@dataclass(frozen=True)
class CVScore:
    """One candidate l2 across the folds (std is the sample std over folds, ddof 1)."""

    l2: float
    accuracy: float
    accuracy_std: float
    log_loss: float
    log_loss_std: float
    fold_accuracy: tuple[float, ...]
    fold_log_loss: tuple[float, ...]


@dataclass(frozen=True)
class CVResult:
    """What :func:`cross_validate` found.

    Attributes:
        scores: one :class:`CVScore` per candidate, strongest l2 first.
        l2: the chosen l2 (lowest mean log-loss). folds: the number of folds used.
        fold: ``(n,)`` the fold each row was held out in.
        oof_probabilities: ``(n, k)`` float64, each row's probabilities from the probe fitted
            without its fold, at the chosen l2 (no row judges itself).
        unseen: ``(n,)`` bool, rows whose class had no training row in their fold (a class of
            one image): their out-of-fold probabilities carry no evidence about them.
        fold_fits: the folds' fits at the chosen l2. seconds: wall time.
    """

    scores: tuple[CVScore, ...]
    l2: float
    folds: int
    fold: torch.Tensor
    oof_probabilities: torch.Tensor
    unseen: torch.Tensor
    fold_fits: tuple[LinearFit, ...]
    seconds: float

    @property
    def best(self) -> CVScore:
        return next(s for s in self.scores if s.l2 == self.l2)


@dataclass(frozen=True)
class Probe:
    """A probe fitted on every row at the l2 cross-validation chose, with the CV estimate.

    Attributes:
        fit: the final :class:`LinearFit` on all rows. cv: the :class:`CVResult`.
        cv_seconds, refit_seconds: wall times of the two parts.
    """

    fit: LinearFit
    cv: CVResult
    cv_seconds: float
    refit_seconds: float

    @property
    def validation(self) -> str:
        """Where the figure comes from: ``cv5`` for 5-fold cross-validation."""
        return f"cv{self.cv.folds}"

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: ``validation``, ``accuracy`` ± ``accuracy_std``, ``log_loss``, ``l2``, the grid, timings."""
        best = self.cv.best
        return {
            "validation": self.validation, "accuracy": best.accuracy, "accuracy_std": best.accuracy_std,
            "log_loss": best.log_loss, "log_loss_std": best.log_loss_std, "l2": self.cv.l2,
            "l2_grid": [s.l2 for s in self.cv.scores], "folds": self.cv.folds, "converged": self.fit.converged,
            "iterations": self.fit.iterations, "cv_seconds": round(self.cv_seconds, 3),
            "refit_seconds": round(self.refit_seconds, 3),
        }

    def describe(self) -> str:
        best = self.cv.best
        return (f"linear probe: {self.validation} accuracy {best.accuracy:.3f} ± {best.accuracy_std:.3f}, "
                f"l2 {self.cv.l2:.3g} (best of {len(self.cv.scores)}), refit on all rows in "
                f"{self.cv_seconds + self.refit_seconds:.1f}s")


def cross_validate(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    l2_grid: list[float] | tuple[float, ...] | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    groups: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    multilabel: bool = False,
    scored: torch.Tensor | None = None,
    patience: int | None = PATIENCE,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> CVResult:
    """Score each candidate l2 by stratified k-fold cross-validation, warm-started strong to weak.

    Folds: ``min(folds, images in the smallest class)``, at least 2, stratified by class (by each
    row's rarest positive label when multilabel), with all rows of one ``groups`` value in one
    fold. A class of a single image forces 2 folds; in the fold that holds that image out, the
    probe has no example of its class, gives it a probability of about 2e-9, and counts it wrong
    (``unseen`` marks such rows). Every fold's fit keeps the same prior strength as the final
    fit on all rows (sklearn's ``C`` held fixed): a fold with a fraction f of the weight is
    solved with ``l2 / f``, so the chosen ``l2`` is the one to refit with.

    The chosen l2 has the lowest mean log-loss: a proper score, smooth in l2 and informative
    with few images (accuracy moves in steps of one image and often ties), and the one that
    makes the out-of-fold probabilities fit for ranking label issues. Ties go to the stronger l2.
    The path stops once ``patience`` weaker candidates in a row scored worse than the best
    (log-loss rises steadily past its minimum, and the weak end is where L-BFGS works hardest).

    Args:
        x, y, num_classes, sample_weight, multilabel, max_iter, tol: as for :func:`fit_linear`.
        l2_grid: candidates (each > 0); default ``RELATIVE_GRID`` × the features' mean variance.
        folds: the most folds. seed: seeds the fold assignment.
        groups: ``(n,)`` group per row (an image's views share one); default each row alone.
        scored: ``(n,)`` bool, the rows that count in the scores (e.g. only each image's
            un-augmented view); default all. Scores are weighted by ``sample_weight`` when given.
        patience: see above; None scores every candidate.

    Returns:
        A :class:`CVResult`.

    Raises:
        DataError: fewer than 2 images, mislabelled groups or shapes that do not fit.
        ConfigError: an empty grid or a candidate that is not > 0.
        TrainingError: NaN or infinity in ``x``.
    """
    t0 = time.perf_counter()
    problem = prepare(x, y, num_classes=num_classes, sample_weight=sample_weight, multilabel=multilabel)
    return _cross_validate(problem, l2_grid=l2_grid, folds=folds, seed=seed, groups=groups, scored=scored,
                           patience=patience, max_iter=max_iter, tol=tol, t0=t0)


def _cross_validate(problem: Problem, *, l2_grid: Any, folds: int, seed: int, groups: torch.Tensor | None,
                    scored: torch.Tensor | None, patience: int | None, max_iter: int, tol: float, t0: float) -> CVResult:
    num_classes = problem.num_classes
    grid = _grid(l2_grid, problem)
    strata = _strata(problem).cpu()
    n_folds = fold_count(strata, groups=groups, requested=folds)
    fold = assign_folds(strata, folds=n_folds, seed=seed, groups=groups)
    mask = _scored(scored, len(strata)).to(problem.x.device)
    on_device = fold.to(problem.x.device)
    parts = [_Fold(problem, on_device == f, mask) for f in range(n_folds)]
    rows = [part.train_rows for part in parts]
    batch = _Batch.of(problem, rows)
    scores: list[CVScore] = []
    best: int | None = None
    last: list[LinearFit | None] = [None] * n_folds
    for l2 in grid:
        # the same prior strength in every fold as in the final fit (sklearn's C held fixed)
        l2s = [l2 * problem.total / float(t) for t in batch.total]
        last = solve_folds(problem, rows, l2=l2s, init=last, max_iter=max_iter, tol=tol, batch=batch)  # type: ignore[assignment]
        probabilities = problem.x.new_empty(problem.x.shape[0], num_classes)
        accuracy, log_loss = [], []
        for part, fit in zip(parts, last, strict=True):
            probabilities[part.held_out] = part.probabilities(fit)
            a, ll = part.scores(fit)
            accuracy.append(a)
            log_loss.append(ll)
        scores.append(_score(l2, accuracy, log_loss))
        if best is None or scores[-1].log_loss < scores[best].log_loss:
            best, best_oof, best_fits = len(scores) - 1, probabilities, tuple(last)
        elif patience is not None and len(scores) - 1 - best >= patience:
            break
    unconverged = sum(not fit.converged for fit in best_fits)
    if unconverged:
        log.warning("linear probe: %d of %d folds stopped before converging at l2=%g; raise max_iter", unconverged,
                    n_folds, grid[best])
    return CVResult(tuple(scores), grid[best], n_folds, fold.cpu(), best_oof.cpu(), _unseen(problem, parts).cpu(),
                    best_fits, time.perf_counter() - t0)


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    l2_grid: list[float] | tuple[float, ...] | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    groups: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    multilabel: bool = False,
    scored: torch.Tensor | None = None,
    patience: int | None = PATIENCE,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> Probe:
    """Choose l2 by :func:`cross_validate`, then refit on every row at that l2.

    Args:
        As for :func:`cross_validate`.

    Returns:
        A :class:`Probe`: the final weights (``probe.fit.load_into(head)``) and the CV estimate.

    Raises:
        As for :func:`cross_validate`.

    Example:
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> probe = fit_probe(x, y, num_classes=3)
        >>> probe.validation, probe.fit.weight.shape
        ('cv5', torch.Size([3, 4]))
    """
    t0 = time.perf_counter()
    problem = prepare(x, y, num_classes=num_classes, sample_weight=sample_weight, multilabel=multilabel)
    cv = _cross_validate(problem, l2_grid=l2_grid, folds=folds, seed=seed, groups=groups, scored=scored,
                         patience=patience, max_iter=max_iter, tol=tol, t0=t0)
    t0 = time.perf_counter()
    fit = solve(problem, l2=cv.l2, init=cv.fold_fits[-1], max_iter=max_iter, tol=tol)
    if not fit.converged:
        log.warning("linear probe: the refit stopped after %d iterations before converging (l2=%g); raise max_iter",
                    fit.iterations, cv.l2)
    probe = Probe(fit, cv, cv.seconds, time.perf_counter() - t0)
    log.info("%s", probe.describe())
    return probe


def rows_from_views(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ``(views, n, d)`` feature cache as rows: ``(x, y, groups, scored)`` for :func:`fit_probe`.

    Rows are view-major (view 0's n rows first); ``groups`` is the image index, so an image's
    views stay in one fold; ``scored`` marks view 0 (the un-augmented image, when the cache
    has one) as the rows that count in the scores.
    """
    views, n = features.shape[0], features.shape[1]
    x = features.reshape(views * n, -1)
    image = torch.arange(n).repeat(views)
    return x, labels.repeat(views), image, image.new_zeros(views * n, dtype=torch.bool).index_fill_(0, torch.arange(n), True)


class _Fold:
    """One fold's training problem and its held-out rows."""

    def __init__(self, problem: Problem, held_out: torch.Tensor, scored: torch.Tensor) -> None:
        self.held_out = held_out
        self.train_rows = (~held_out).nonzero().flatten()
        self.x = problem.x[held_out]
        self.target = problem.target[held_out]
        self.weight = problem.weight[held_out] * scored[held_out]
        if float(self.weight.sum()) <= 0:
            raise DataError("a fold holds no row to score (scored, with a weight above 0); mark each image's first view as scored")
        self.problem = problem

    def probabilities(self, fit: LinearFit) -> torch.Tensor:
        # the solver's variables: the fit maps back with the same mean and scale
        v, c = self.problem.to_solver(fit.weight, fit.bias)
        z = self.x @ v.T + c
        return torch.sigmoid(z) if fit.multilabel else softmax(z, dim=1)

    def scores(self, fit: LinearFit) -> tuple[float, float]:
        p = self.probabilities(fit).clamp(_EPS, 1 - _EPS)
        w = self.weight / self.weight.sum()
        if fit.multilabel:
            correct = ((p > 0.5).to(torch.float64) == self.target).to(torch.float64).mean(dim=1)
            loss = -(self.target * p.log() + (1 - self.target) * (1 - p).log()).mean(dim=1)
        else:
            correct = (p.argmax(dim=1) == self.target).to(torch.float64)
            loss = -p[torch.arange(len(p)), self.target].log()
        return float(correct @ w), float(loss @ w)


def _score(l2: float, accuracy: list[float], log_loss: list[float]) -> CVScore:
    a, ll = torch.tensor(accuracy, dtype=torch.float64), torch.tensor(log_loss, dtype=torch.float64)
    return CVScore(l2, float(a.mean()), float(a.std()), float(ll.mean()), float(ll.std()), tuple(accuracy), tuple(log_loss))


def _grid(l2_grid: Any, problem: Problem) -> list[float]:
    if l2_grid is None:
        return [g * problem.scale**2 for g in RELATIVE_GRID]
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
        raise ConfigError(f"l2_grid must be a non-empty list of numbers > 0, got {list(l2_grid)!r}")
    return grid


def _strata(problem: Problem) -> torch.Tensor:
    """The class of each row; when multilabel, its rarest positive label (k when it has none)."""
    if not problem.multilabel:
        return problem.target
    k = problem.num_classes
    frequency = problem.target.sum(dim=0)
    rank = torch.where(problem.target > 0, frequency, torch.inf)
    rarest = rank.argmin(dim=1)
    return torch.where(problem.target.sum(dim=1) > 0, rarest, torch.full_like(rarest, k))


def _scored(scored: torch.Tensor | None, n: int) -> torch.Tensor:
    if scored is None:
        return torch.ones(n, dtype=torch.float64)
    mask = torch.as_tensor(scored)
    if mask.shape != (n,) or mask.dtype != torch.bool:
        raise DataError(f"scored must be a ({n},) bool mask, got {tuple(mask.shape)} {mask.dtype}")
    return mask.to(torch.float64)


def _unseen(problem: Problem, parts: list[_Fold]) -> torch.Tensor:
    unseen = torch.zeros(problem.x.shape[0], dtype=torch.bool, device=problem.x.device)
    if problem.multilabel:
        return unseen
    for part in parts:
        present = torch.bincount(problem.target[part.train_rows], minlength=problem.num_classes) > 0
        unseen[part.held_out] = ~present[part.target]
    return unseen
