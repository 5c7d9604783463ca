"""WiSE-FT: a mix of the probe-initialised start and the fine-tuned end, chosen on validation evidence.

``θ(α) = (1 - α) · θ_start + α · θ_end`` (Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022): the ends are already measured (α = 0 is the probe, α = 1 the fine-tuned
weights), so a handful of interior points costs a handful of evaluations. Floating-point
parameters and buffers (BatchNorm statistics) are mixed; integer buffers come from the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from regraft.training.loop import EvalResult, better

__all__ = ["ALPHAS", "Mix", "mix_state", "choose_mix"]

ALPHAS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Mix:
    """The chosen ``alpha`` and its validation figures (``alpha`` 0 or 1: an end won).

    ``score`` is the task's primary figure (accuracy; mAP for multi-label runs); ``result`` the
    chosen interior point's whole evaluation (None when an end won).
    """

    alpha: float
    score: float
    loss: float
    tried: tuple[tuple[float, float, float], ...]  # (alpha, score, loss) of every point, ends included
    result: EvalResult | None = None


def mix_state(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """The state dict ``(1 - alpha) · start + alpha · end`` (integer tensors from ``end``)."""
    out = {}
    for key, b in end.items():
        a = start[key]
        out[key] = torch.lerp(a.to(b.dtype), b, alpha) if b.is_floating_point() else b.clone()
    return out


@torch.no_grad()
def choose_mix(
    model: nn.Module, *, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
    ends: tuple[tuple[float, float], tuple[float, float]], evaluate: Callable[[nn.Module], EvalResult],
    alphas: Sequence[float] = ALPHAS,
) -> Mix:
    """Evaluate ``model`` at the interior ``alphas`` and pick the best point by the one rule of
    :func:`~regraft.training.loop.better`; ``ends`` are the measured ``(primary figure, loss)`` of
    α = 0 and α = 1. ``model`` is left holding the chosen weights.
    """
    points = [(0.0, *ends[0]), (1.0, *ends[1])]
    results: dict[float, EvalResult] = {}
    for alpha in alphas:
        model.load_state_dict(mix_state(start, end, alpha))
        result = evaluate(model)
        results[float(alpha)] = result
        points.append((float(alpha), result.score, result.loss))
    best = points[0]
    for point in points[1:]:
        if better(point[1], point[2], best[1], best[2]):
            best = point
    model.load_state_dict(start if best[0] == 0.0 else end if best[0] == 1.0 else mix_state(start, end, best[0]))
    return Mix(alpha=best[0], score=best[1], loss=best[2], tried=tuple(sorted(points)), result=results.get(best[0]))
