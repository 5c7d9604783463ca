"""A small batched L-BFGS for the probe's convex objective: B independent problems at once.

Why not ``torch.optim.LBFGS``: its first ``step`` imports ``torch._dynamo`` (6 s measured on the
loaded 2-core machine the benchmarks run on, longer than a whole cross-validation should take),
it spends about 1 ms of Python per iteration on parameter bookkeeping, and it solves one
problem at a time. Here the folds of a cross-validation are solved together, row b of
``theta`` being fold b, so that every tensor operation serves all of them.

The algorithm is the textbook one (Nocedal & Wright, Algorithm 7.4: the two-loop recursion over
the last ``memory`` pairs, initial scaling ``sᵀy / yᵀy``) with a backtracking Armijo line search
using quadratic interpolation. A strong-Wolfe line search exists to keep ``yᵀs > 0`` on
non-convex functions; on a convex objective every step does (a pair with ``yᵀs`` at rounding
level is skipped), so the sufficient-decrease test is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (B, P) -> ((B,) loss, (B, P) grad)

ARMIJO = 1e-4
MAX_BACKTRACKS = 40


@dataclass
class Result:
    """Per problem: ``theta`` (B, P), ``loss`` (B,), ``gradient_max`` (B,), ``iterations`` (B,)."""

    theta: torch.Tensor
    loss: torch.Tensor
    gradient_max: torch.Tensor
    iterations: torch.Tensor
    evaluations: int


@dataclass
class _History:
    s: list[torch.Tensor]
    y: list[torch.Tensor]
    rho: list[torch.Tensor]  # (B,); 0 where that problem skipped the pair, which makes it a no-op
    gamma: torch.Tensor  # (B,) the initial Hessian scale sᵀy / yᵀy of each problem's last good pair
    started: torch.Tensor  # (B,) bool: the problem has a good pair


def minimize(objective: Objective, theta: torch.Tensor, *, max_iter: int, tol: float, memory: int = 10) -> Result:
    """Minimise each row of ``theta`` until none of its gradient entries exceeds ``tol``.

    A problem stops early, unconverged, when ``max_iter`` runs out, its loss is not finite, or
    its line search can no longer decrease the loss (rounding level). The caller checks
    ``gradient_max`` against ``tol`` and that ``loss`` is finite.
    """
    loss, grad = objective(theta)
    batch = theta.shape[0]
    history = _History([], [], [], torch.ones(batch, dtype=theta.dtype, device=theta.device),
                       torch.zeros(batch, dtype=torch.bool, device=theta.device))
    iterations = torch.zeros(batch, dtype=torch.long, device=theta.device)
    stalled = torch.zeros(batch, dtype=torch.bool, device=theta.device)
    evaluations = 1
    for _ in range(max_iter):
        running = torch.isfinite(loss) & (grad.abs().amax(dim=1) > tol) & ~stalled
        if not bool(running.any()):
            break
        direction, slope = _descent(grad, history, running)
        step = torch.where(history.started, 1.0, (1.0 / grad.abs().sum(dim=1).clamp_min(1e-300)).clamp_max(1.0))
        new_theta, new_loss, new_grad, ok, spent = _line_search(objective, theta, loss, slope, direction, step, running)
        evaluations += spent
        stalled |= running & ~ok
        accepted = running & ok
        _remember(history, new_theta - theta, new_grad - grad, accepted, memory)
        theta = torch.where(accepted[:, None], new_theta, theta)
        loss = torch.where(accepted, new_loss, loss)
        grad = torch.where(accepted[:, None], new_grad, grad)
        iterations += accepted.long()
    return Result(theta, loss, grad.abs().amax(dim=1), iterations, evaluations)


def _descent(grad: torch.Tensor, history: _History, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``-H·grad`` by the two-loop recursion (zero for problems that stopped) and its slope."""
    q = grad.clone()
    alphas = []
    for s, y, rho in zip(reversed(history.s), reversed(history.y), reversed(history.rho), strict=True):
        alpha = rho * torch.linalg.vecdot(s, q)
        q.addcmul_(alpha[:, None], y, value=-1.0)
        alphas.append(alpha)
    q *= history.gamma[:, None]
    for s, y, rho, alpha in zip(history.s, history.y, history.rho, reversed(alphas), strict=True):
        beta = rho * torch.linalg.vecdot(y, q)
        q.addcmul_((alpha - beta)[:, None], s)
    direction = q.neg_() if bool(running.all()) else torch.where(running[:, None], -q, 0.0)
    slope = torch.linalg.vecdot(grad, direction)
    uphill = running & (slope >= 0)  # rounding broke the model: restart that problem from steepest descent
    if bool(uphill.any()):
        for rho in history.rho:
            rho[uphill] = 0.0
        history.gamma[uphill], history.started[uphill] = 1.0, False
        direction = torch.where(uphill[:, None], -grad, direction)
        slope = torch.where(uphill, -torch.linalg.vecdot(grad, grad), slope)
    return direction, slope


def _remember(history: _History, s: torch.Tensor, y: torch.Tensor, accepted: torch.Tensor, memory: int) -> None:
    sy, yy = torch.linalg.vecdot(s, y), torch.linalg.vecdot(y, y)
    good = accepted & (sy > 0) & (sy > 1e-12 * yy)
    history.s.append(s), history.y.append(y), history.rho.append(torch.where(good, 1.0 / sy.clamp_min(1e-300), 0.0))
    history.gamma = torch.where(good, sy / yy.clamp_min(1e-300), history.gamma)
    history.started |= good
    if len(history.s) > memory:
        history.s.pop(0), history.y.pop(0), history.rho.pop(0)


def _line_search(objective: Objective, theta: torch.Tensor, loss: torch.Tensor, slope: torch.Tensor,
                 direction: torch.Tensor, step: torch.Tensor, running: torch.Tensor):
    """Backtrack each running problem from ``step`` until the Armijo condition holds.

    Returns ``(theta, loss, grad, ok, evaluations)``; ``ok`` is False where no decrease was found.
    """
    pending = running.clone()
    ok = torch.zeros_like(running)
    out_theta, out_loss, out_grad = theta.clone(), loss.clone(), torch.zeros_like(theta)
    floor = 1e-16 * loss.abs().clamp_min(1.0)
    for attempt in range(1, MAX_BACKTRACKS + 1):
        pending &= step * -slope > floor  # a decrease this small could not be seen in the loss
        if not bool(pending.any()):
            return out_theta, out_loss, out_grad, ok, attempt - 1
        candidate = theta + torch.where(pending, step, 0.0)[:, None] * direction
        new_loss, new_grad = objective(candidate)
        finite = torch.isfinite(new_loss)
        accept = pending & finite & (new_loss <= loss + ARMIJO * step * slope)
        out_theta = torch.where(accept[:, None], candidate, out_theta)
        out_loss = torch.where(accept, new_loss, out_loss)
        out_grad = torch.where(accept[:, None], new_grad, out_grad)
        ok |= accept
        pending &= ~accept
        # minimum of the quadratic through loss, slope and new_loss, kept within [0.1, 0.5]·step
        curvature = new_loss - loss - slope * step
        guess = torch.where(curvature > 0, -slope * step * step / (2.0 * curvature.clamp_min(1e-300)), 0.5 * step)
        shrunk = torch.minimum(torch.maximum(guess, 0.1 * step), 0.5 * step)
        step = torch.where(finite, shrunk, 0.1 * step)
    return out_theta, out_loss, out_grad, ok, MAX_BACKTRACKS
