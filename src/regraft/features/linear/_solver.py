"""The L2-regularised linear classifier on feature rows, solved to convergence with L-BFGS.

The objective (bias not penalised) is

    Σᵢ wᵢ·ℓᵢ / Σᵢ wᵢ  +  l2/2 · ||W||²

with ℓ the softmax cross-entropy of the row's class (multiclass) or the sum of the per-label
sigmoid cross-entropies (multilabel, one-vs-rest). It is scikit-learn's ``LogisticRegression``
with ``C = 1 / (l2 · Σw)`` (sklearn minimises ``C·Σ wᵢℓᵢ + ½||W||²``), except for two classes:
sklearn then fits one sigmoid vector ``w = W₁ − W₀``, which is the same model with
``C = 2 / (l2 · Σw)`` (the penalty splits evenly between the two rows at the optimum).

Conditioning (a change of variables, not of model: the penalty stays ``||W||²`` on the raw
features' weights, so the optimum is the same, and W, b come back for the raw features):

- the features are centred (post-ReLU features are all positive with a large mean, which
  couples bias and weights) and divided by one global scale;
- they are rotated onto the eigenvectors of their covariance (``_problem.py``), where they are
  uncorrelated; with fewer rows than dimensions this also shrinks the problem to the rows' span,
  where the optimum lies;
- each weight is divided by the square root of the objective's curvature along it, taken at the
  starting point (``_Preconditioner``) and taken again as the fit moves on. Along a warm-started
  l2 path this is what keeps L-BFGS fast: on real EfficientNet-Lite0 features it cut the
  iterations in the middle of the path from about 400 to about 50 per fit.

Convergence is judged in those variables, where the curvature is about 1: ``tol`` bounds the
largest gradient entry there, so the objective is within about ``tol²`` of its minimum.

Folds of a cross-validation are solved together as one batch (``solve_folds``), each with its own
rows and l2, by the batched L-BFGS of ``_lbfgs.py``.

Written on torch rather than called from scikit-learn because regraft must not depend on
scikit-learn at run time; the tests check that the two give the same solution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from regraft.errors import ConfigError, TrainingError
from regraft.features.linear._lbfgs import minimize
from regraft.features.linear._problem import Problem, check_l2, prepare

log = logging.getLogger(__name__)

# A class (or label) without training rows has an unpenalised bias whose optimum is ±∞; it gets a
# zero weight row and a bias this far below (or above) the others: probability ~e⁻²⁰ ≈ 2e-9.
ABSENT_MARGIN = 20.0
DEFAULT_MAX_ITER = 1000
DEFAULT_TOL = 1e-6
REFRESH_AFTER = 50  # L-BFGS iterations before the preconditioner is first taken again


@dataclass(frozen=True)
class LinearFit:
    """A solved linear classifier for the raw features.

    Attributes:
        weight: ``(k, d)`` float64, rows in class order (for ``nn.Linear.weight``).
        bias: ``(k,)`` float64. Multiclass biases are shifted to sum to zero over the classes
            that had rows (softmax ignores a common shift), as scikit-learn's do.
        l2: the penalty it was solved with.
        loss: the objective at the solution (weighted mean loss + l2/2·||W||²).
        iterations: L-BFGS iterations. converged: the largest gradient entry (in the solver's
            variables) ended at or below ``tol``.
        multilabel: sigmoid per label (True) or softmax over classes (False).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    loss: float
    iterations: int
    converged: bool
    multilabel: bool = False

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` in float64 for ``(n, d)`` features."""
        return x.to(torch.float64) @ self.weight.T + self.bias

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax; per-label sigmoid when multilabel), float64 ``(n, k)``."""
        z = self.logits(x)
        return torch.sigmoid(z) if self.multilabel else softmax(z, dim=1)

    @torch.no_grad()
    def load_into(self, linear: nn.Linear) -> None:
        """Copy the weights into ``linear`` (in place, in its dtype and device).

        Raises:
            ConfigError: ``linear`` is not ``(k, d)`` with a bias.
        """
        if linear.weight.shape != self.weight.shape or linear.bias is None:
            raise ConfigError(
                f"the head is {tuple(linear.weight.shape)} (bias {'yes' if linear.bias is not None else 'no'}) but the "
                f"probe solved {tuple(self.weight.shape)} with a bias; graft a Linear(in={self.weight.shape[1]}, "
                f"out={self.weight.shape[0]}) head first"
            )
        linear.weight.copy_(self.weight)
        linear.bias.copy_(self.bias)


def fit_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    l2: float,
    sample_weight: torch.Tensor | None = None,
    multilabel: bool = False,
    init: LinearFit | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> LinearFit:
    """Fit ``W, b`` minimising the mean (weighted) loss + ``l2/2·||W||²`` to convergence.

    Args:
        x: ``(n, d)`` features (any float dtype; solved in float64).
        y: ``(n,)`` class indices, or ``(n, k)`` 0/1 when ``multilabel``.
        num_classes: k (classes without rows get a zero row and a bias ``ABSENT_MARGIN`` below
            the others, since their unpenalised bias has no finite optimum).
        l2: penalty on the weights (not the bias); scikit-learn's ``C`` is ``1 / (l2·Σw)``.
            0 is allowed, but separable data then has no finite optimum and never converges.
        sample_weight: ``(n,)`` non-negative weights (rows of weight 0 do not count).
        multilabel: one-vs-rest sigmoid cross-entropy per label instead of softmax.
        init: a previous fit to start from (a warm start along an l2 path).
        max_iter: most L-BFGS iterations. tol: stop when no gradient entry exceeds it.

    Returns:
        A :class:`LinearFit`; ``converged`` is False (and a warning logged) when ``max_iter``
        ran out first.

    Raises:
        TrainingError: NaN or infinity in ``x``, or the solve produced non-finite values.
        DataError: shapes or labels that do not fit. ConfigError: a bad ``l2``.

    Example:
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 2
        >>> fit = fit_linear(x, y, num_classes=2, l2=1e-2)
        >>> fit.weight.shape, fit.converged
        (torch.Size([2, 3]), True)
    """
    problem = prepare(x, y, num_classes=num_classes, sample_weight=sample_weight, multilabel=multilabel)
    fit = solve(problem, l2=check_l2(l2), init=init, max_iter=max_iter, tol=tol)
    if not fit.converged:
        log.warning("linear probe: L-BFGS stopped after %d iterations before converging (l2=%g); "
                    "raise max_iter or l2", fit.iterations, fit.l2)
    return fit


def solve(problem: Problem, *, l2: float, init: LinearFit | None = None, max_iter: int = DEFAULT_MAX_ITER,
          tol: float = DEFAULT_TOL) -> LinearFit:
    """Solve a prepared :class:`Problem` (the work of :func:`fit_linear`)."""
    everything = torch.arange(problem.x.shape[0], device=problem.x.device)
    return solve_folds(problem, [everything], l2=[l2], init=[init], max_iter=max_iter, tol=tol)[0]


def solve_folds(
    problem: Problem,
    rows: list[torch.Tensor],
    *,
    l2: list[float],
    init: list[LinearFit | None],
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    batch: _Batch | None = None,
) -> list[LinearFit]:
    """Solve one problem per row subset (a fold's training rows) together, each at its own l2.

    ``batch`` (from :meth:`_Batch.of` on the same ``rows``) saves stacking the rows again along
    an l2 path.
    """
    batch = batch if batch is not None else _Batch.of(problem, rows)
    starts = [_start(problem, batch, b, fit) for b, fit in enumerate(init)]
    v, c = torch.stack([v for v, _ in starts]), torch.stack([c for _, c in starts])
    scaled_l2 = torch.tensor(l2, dtype=torch.float64, device=problem.x.device) / problem.scale**2
    objective = _Objective(batch)
    iterations = torch.zeros(len(rows), dtype=torch.long, device=problem.x.device)
    budget = REFRESH_AFTER
    while True:
        # the preconditioner is taken at the starting point; refreshed (and L-BFGS's history
        # restarted) after REFRESH_AFTER, then twice as many, ... iterations as the fit moves on
        objective.precondition(_Preconditioner(batch, v, c, l2=scaled_l2))
        result = minimize(objective, objective.p.scaled(v, c), max_iter=min(budget, max_iter - int(iterations.max())), tol=tol)
        v, c = objective.p.unscaled(result.theta)
        iterations += result.iterations
        done = bool((result.gradient_max <= tol).all()) or int(iterations.max()) >= max_iter
        if done or int(result.iterations.sum()) == 0 or not bool(torch.isfinite(result.loss).all()):
            break
        budget *= 2
    fits = []
    for b in range(len(rows)):
        loss = float(result.loss[b])
        if not (math.isfinite(loss) and bool(torch.isfinite(v[b]).all()) and bool(torch.isfinite(c[b]).all())):
            raise TrainingError(f"the linear probe diverged (objective {loss}) at l2={l2[b]:g}; the features may "
                                "hold extreme values: check the trunk's weights or use a larger l2")
        weight, bias = _to_output(problem, batch, b, *problem.to_raw(v[b], c[b]))
        fits.append(LinearFit(weight, bias, l2=l2[b], loss=loss, iterations=int(iterations[b]),
                              converged=float(result.gradient_max[b]) <= tol, multilabel=problem.multilabel))
    return fits


@dataclass
class _Batch:
    """Row subsets of one problem stacked as ``(B, m, r)``; short subsets padded with weight-0 rows."""

    x: torch.Tensor  # (B, m, r)
    x_squared: torch.Tensor  # (B, m, r), for the preconditioner
    target: torch.Tensor  # (B, m) long, or (B, m, k)
    weight: torch.Tensor  # (B, m), each row of the batch summing to 1
    total: torch.Tensor  # (B,) the subsets' total sample weight
    active: torch.Tensor  # (B, k) bool: outputs the subset's rows can fit
    fixed_bias: torch.Tensor  # (B, k) offsets for the others (±ABSENT_MARGIN)

    @classmethod
    def of(cls, problem: Problem, rows: list[torch.Tensor]) -> _Batch:
        m, dev = max(len(r) for r in rows), problem.x.device
        x = problem.x.new_zeros(len(rows), m, problem.x.shape[1])
        weight = problem.weight.new_zeros(len(rows), m)
        target = problem.target.new_zeros((len(rows), m, *problem.target.shape[1:]))
        for b, index in enumerate(rows):
            x[b, : len(index)], weight[b, : len(index)] = problem.x[index], problem.weight[index]
            target[b, : len(index)] = problem.target[index]
        total = weight.sum(dim=1)
        active, fixed = _active_outputs(target, weight, problem.num_classes, problem.multilabel)
        if not problem.multilabel:
            # rows of weight 0 (padding, or a sample_weight of 0) whose class no weighted row has
            # take an active class, so that no -inf logit is picked (0 · -inf would be NaN)
            first = active.long().argmax(dim=1)
            pad = torch.arange(m, device=dev)[None, :] >= torch.tensor([len(r) for r in rows], device=dev)[:, None]
            inactive = ~torch.gather(active, 1, target.clamp(0, problem.num_classes - 1))
            target = torch.where(pad | inactive, first[:, None], target)
        return cls(x, x * x, target, weight / total[:, None], total, active, fixed)


def _active_outputs(target: torch.Tensor, weight: torch.Tensor, k: int, multilabel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per subset: outputs the data can fit, and the fixed bias of the others.

    A class without rows has an unpenalised bias whose optimum is -∞ (a label that is always
    on or always off: ±∞); it gets a zero weight row and a bias ``ABSENT_MARGIN`` below the
    others (or ±``ABSENT_MARGIN`` for such a label).
    """
    if multilabel:
        positive = (target * weight[..., None]).sum(dim=1)
        negative = ((1 - target) * weight[..., None]).sum(dim=1)
        active = (positive > 0) & (negative > 0)
        return active, torch.where(positive > 0, ABSENT_MARGIN, -ABSENT_MARGIN).to(weight.dtype)
    present = torch.zeros(target.shape[0], k, dtype=weight.dtype, device=weight.device)
    present.scatter_add_(1, target, weight)
    present = present > 0
    return present, torch.where(present, 0.0, -ABSENT_MARGIN).to(weight.dtype)


def _start(problem: Problem, batch: _Batch, b: int, fit: LinearFit | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Subset ``b``'s starting ``(V, c)`` in the solver's (unscaled) variables: zero, or ``fit``."""
    k, r = problem.num_classes, problem.x.shape[1]
    if fit is None:
        return problem.x.new_zeros(k, r), problem.x.new_zeros(k)
    v, c = problem.to_solver(fit.weight.to(problem.x.device), fit.bias.to(problem.x.device))
    inactive = ~batch.active[b]
    v[inactive], c[inactive] = 0.0, 0.0
    return v, c


def _to_output(problem: Problem, batch: _Batch, b: int, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(W, b)`` with inactive outputs set (see :func:`_active_outputs`), on the CPU."""
    active = batch.active[b]
    weight, bias = weight.clone(), bias.clone()
    weight[~active] = 0.0
    if problem.multilabel:
        bias[~active] = batch.fixed_bias[b][~active]
    else:
        if bool(active.any()):
            bias = bias - bias[active].mean()  # softmax ignores a common shift; sklearn's sum to zero too
            floor = float(bias[active].min())
        else:
            floor = 0.0
        bias[~active] = batch.fixed_bias[b][~active] + floor
    return weight.cpu(), bias.cpu()


class _Preconditioner:
    """A diagonal change of variables that makes the objective's curvature about 1 at the start.

    In the eigenbasis the features are uncorrelated, and the objective's second derivative along
    weight ``(k, j)`` is about ``Σᵢ wᵢ·pᵢₖ(1 − pᵢₖ)·xᵢⱼ² + l2`` (the Gauss-Newton diagonal, taken at
    the starting point, so a warm start along the l2 path brings the curvature of the rows it
    already fits confidently): the solver works on ``V / sₖⱼ`` with ``s = 1/sqrt(that)``, and on
    the bias likewise. Per subset, since each has its own rows and l2.
    """

    def __init__(self, batch: _Batch, v: torch.Tensor, c: torch.Tensor, *, l2: torch.Tensor) -> None:
        z = _bmm(batch.x, v.transpose(1, 2), add=c)
        if batch.target.ndim == 3:
            p = torch.sigmoid(z)
        else:
            p = softmax(z + torch.where(batch.active, 0.0, -torch.inf)[:, None, :], dim=2)
        curvature = p * (1 - p) * batch.weight[..., None] * batch.active[:, None, :]
        self.l2 = l2
        self.column = (_bmm(curvature.transpose(1, 2), batch.x_squared) + l2[:, None, None]).clamp_min(1e-24).rsqrt()
        self.bias = curvature.sum(dim=1).clamp_min(1e-24).rsqrt()  # (B, k)
        self.k, self.r = v.shape[1], v.shape[2]

    def scaled(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([(v / self.column).reshape(v.shape[0], -1), c / self.bias], dim=1)

    def unscaled(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kr = self.k * self.r
        return theta[:, :kr].view(-1, self.k, self.r) * self.column, theta[:, kr:] * self.bias


class _Objective:
    """Loss and analytic gradient of every subset in the scaled variables (no autograd)."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.multilabel = batch.target.ndim == 3
        self.mask = torch.where(batch.active, 0.0, -torch.inf)[:, None, :].to(batch.x.dtype)  # (B, 1, k)

    def precondition(self, precondition: _Preconditioner) -> None:
        self.p = precondition
        self.penalty = precondition.l2[:, None, None] * precondition.column.pow(2)  # (B, k, r): l2 on V = scaled V · column

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nb, k, r = theta.shape[0], self.p.k, self.p.r
        v, c = theta[:, : k * r].view(nb, k, r), theta[:, k * r :]
        z = _bmm(self.batch.x, (v * self.p.column).transpose(1, 2), add=c * self.p.bias)
        target, weight = self.batch.target, self.batch.weight
        if self.multilabel:
            on = self.batch.active[:, None, :].to(z.dtype)
            per_row = ((nn.functional.softplus(z) - target * z) * on).sum(dim=2)
            residual = (torch.sigmoid(z) - target) * on
        else:
            z = z + self.mask
            lse = torch.logsumexp(z, dim=2)
            per_row = lse - z.gather(2, target[..., None]).squeeze(2)
            residual = torch.exp(z - lse[..., None])
            residual.scatter_add_(2, target[..., None], residual.new_full((*target.shape, 1), -1.0))
        residual *= weight[..., None]
        loss = (per_row * weight).sum(dim=1) + 0.5 * (v.pow(2) * self.penalty).sum(dim=(1, 2))
        grad_v = _bmm(residual.transpose(1, 2), self.batch.x) * self.p.column + self.penalty * v
        return loss, torch.cat([grad_v.reshape(nb, -1), residual.sum(dim=1) * self.p.bias], dim=1)


SMALL_BMM = 1 << 20  # multiply-adds below which a batch of products runs as a loop of matrix products


def _bmm(a: torch.Tensor, b: torch.Tensor, *, add: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` per batch entry (plus ``add[:, None, :]``).

    Small batches run as a loop of ``mm``: ATen spreads ``bmm`` over its threads whatever the
    size, and on a machine whose cores are busy one late thread costs a scheduler slice
    (measured on the 2-core VM: 14 ms for a (5, 43, 43) × (5, 43, 3) product against 0.3 ms as a loop).
    """
    if a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] >= SMALL_BMM:
        return torch.bmm(a, b) if add is None else torch.baddbmm(add[:, None, :], a, b)
    if add is None:
        return torch.stack([a[i] @ b[i] for i in range(a.shape[0])])
    return torch.stack([torch.addmm(add[i], a[i], b[i]) for i in range(a.shape[0])])


def softmax(z: torch.Tensor, *, dim: int) -> torch.Tensor:
    """``exp(z - logsumexp(z))``: ``torch.softmax`` enters a parallel region even for a few hundred
    numbers, which on a busy 2-core machine cost 5 ms a call (measured) against 0.3 ms for this."""
    return (z - z.logsumexp(dim=dim, keepdim=True)).exp()
