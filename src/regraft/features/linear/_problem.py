"""Rows checked and moved into the solver's variables: float64, centred, one scale, rotated."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from regraft.errors import ConfigError, DataError, TrainingError

MAX_EIGEN_DIM = 2048  # rotate onto the covariance's eigenvectors up to this many dimensions


@dataclass
class Problem:
    """Validated rows in the solver's variables; :meth:`rows` takes a subset (a fold).

    The variables: features centred, divided by ``scale`` and rotated onto the eigenvectors
    ``basis`` of their covariance (eigenvalues ``eigenvalues``), so that one diagonal scaling per
    l2 (:func:`solve`) preconditions L-BFGS. Folds keep the whole set's basis: any orthonormal
    basis of the row space gives the same optimum.
    """

    x: torch.Tensor  # (n, r) float64
    target: torch.Tensor  # (n,) long, or (n, k) float64 0/1 when multilabel
    weight: torch.Tensor  # (n,) float64, > 0
    mean: torch.Tensor  # (d,) float64
    scale: float
    basis: torch.Tensor | None  # (d, r) orthonormal columns, or None: no rotation (r = d)
    eigenvalues: torch.Tensor  # (r,) covariance of ``x`` along each column
    num_classes: int
    multilabel: bool

    @property
    def total(self) -> float:
        return float(self.weight.sum())

    def rows(self, index: torch.Tensor) -> Problem:
        return replace(self, x=self.x[index], target=self.target[index], weight=self.weight[index])

    def to_solver(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(W, b)`` → the solver's ``(V, c)``: ``V = W·scale·basis``, ``c = b + W·mean``."""
        weight, bias = weight.to(torch.float64), bias.to(torch.float64)
        v = weight * self.scale
        return (v @ self.basis if self.basis is not None else v), bias + weight @ self.mean

    def to_raw(self, v: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = (v @ self.basis.T if self.basis is not None else v) / self.scale
        return weight, c - weight @ self.mean


def prepare(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    sample_weight: torch.Tensor | None = None,
    multilabel: bool = False,
) -> Problem:
    """Check the rows and move them into the solver's variables (float64, centred, rotated).

    Raises:
        TrainingError: ``x`` holds NaN or infinity.
        DataError: shapes, labels or weights do not fit.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"features must be a non-empty (rows, dims) matrix, got shape {tuple(x.shape)}; flatten each row's features first")
    n = x.shape[0]
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise TrainingError(
            f"the features hold NaN or infinity ({int((~finite).sum())} of {n} rows, the first is row {row}); "
            "the frozen trunk produced them: check its weights, or cache features in fp32 (feature_fp16: false)"
        )
    target = _check_target(y, n=n, num_classes=num_classes, multilabel=multilabel)
    weight = _check_weight(sample_weight, n=n).to(x.device)
    target = target.to(x.device)
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=0)
    centred = x64 - mean
    scale = float(centred.pow(2).mean().sqrt())
    if not math.isfinite(scale) or scale <= 0.0:
        scale = 1.0  # every feature constant: nothing to scale
    centred /= scale
    basis, eigenvalues = _eigenbasis(centred)
    rotated = centred @ basis if basis is not None else centred
    return Problem(rotated, target, weight, mean, scale, basis, eigenvalues, num_classes, multilabel)


def _eigenbasis(x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Eigenvectors and eigenvalues of ``x``'s covariance, from the smaller of ``xᵀx`` and ``xxᵀ``.

    With fewer rows than dimensions the basis spans the rows only (the optimum lies there: the
    gradient of the loss is a combination of rows, and the penalty's is W itself). Past
    ``MAX_EIGEN_DIM`` the eigendecomposition would cost more than the solve saves: no rotation.
    """
    n, d = x.shape
    if min(n, d) > MAX_EIGEN_DIM:
        return None, x.pow(2).mean(dim=0)
    if d <= n:
        eigenvalues, basis = torch.linalg.eigh(x.T @ x / n)
        return basis, eigenvalues.clamp_min(0.0)
    eigenvalues, u = torch.linalg.eigh(x @ x.T / n)
    keep = eigenvalues > eigenvalues.max() * 1e-12
    eigenvalues, u = eigenvalues[keep], u[:, keep]
    return (x.T @ u) / (eigenvalues * n).sqrt(), eigenvalues


def _check_target(y: torch.Tensor, *, n: int, num_classes: int, multilabel: bool) -> torch.Tensor:
    if num_classes < (1 if multilabel else 2):
        raise DataError(f"num_classes is {num_classes}; a classifier needs at least 2 classes (1 label when multilabel)")
    if multilabel:
        if y.shape != (n, num_classes):
            raise DataError(f"multilabel targets must be (rows, labels) = ({n}, {num_classes}), got {tuple(y.shape)}")
        target = y.to(torch.float64)
        if not bool(((target == 0) | (target == 1)).all()):
            raise DataError("multilabel targets must be 0 or 1; pass one 0/1 column per label")
        return target
    if y.shape != (n,) or y.dtype.is_floating_point:
        raise DataError(f"labels must be ({n},) integers (one class index per row), got {tuple(y.shape)} {y.dtype}; "
                        "pass multilabel=True for a 0/1 matrix")
    target = y.to(torch.long)
    if n and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got {int(target.min())}..{int(target.max())}; "
                        "check num_classes")
    return target


def _check_weight(sample_weight: torch.Tensor | None, *, n: int) -> torch.Tensor:
    if sample_weight is None:
        return torch.ones(n, dtype=torch.float64)
    weight = torch.as_tensor(sample_weight).to(torch.float64)
    if weight.shape != (n,):
        raise DataError(f"sample_weight must be ({n},), one weight per row, got {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()) or float(weight.sum()) <= 0:
        raise DataError("sample_weight must be finite, non-negative and not all zero")
    return weight


def check_l2(l2: float) -> float:
    """``l2`` as a float, or ConfigError when it is negative or not finite."""
    value = float(l2)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"l2 must be a finite number >= 0, got {l2!r}")
    return value
