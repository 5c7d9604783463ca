"""Nearest neighbours by cosine similarity of centred features, exact and in blocks."""

from __future__ import annotations

import torch

BLOCK = 4096  # rows per similarity block: 4096 × n float32 stays small for n in the tens of thousands


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Features centred on their mean and scaled to unit length (float32).

    Centring matters for pooled CNN features, which are all positive: uncentred, any two images
    have a cosine similarity of 0.7 or more, and the scale of "similar" is squeezed into the top.
    """
    x = features.float()
    x = x - x.mean(dim=0, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest(unit: torch.Tensor, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` most similar other rows: ``(similarity (n, k), index (n, k))``, best first.

    Exact (a matrix product per block): at the sizes a data folder has, faster and simpler than
    an approximate index.
    """
    n = unit.shape[0]
    k = max(0, min(k, n - 1))
    sims, index = [], []
    for start in range(0, n, BLOCK):
        block = unit[start : start + BLOCK] @ unit.T
        rows = torch.arange(start, min(start + BLOCK, n))
        block[rows - start, rows] = -float("inf")  # never one's own neighbour
        top = block.topk(k, dim=1)
        sims.append(top.values)
        index.append(top.indices)
    if not sims:
        return unit.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(sims), torch.cat(index)
