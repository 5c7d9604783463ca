"""Leaving the user's random number generators as they were found.

regraft draws randomness from explicit ``torch.Generator``s where it can (batch order, per-image
augmentation, the probe's folds). What it cannot route (dropout, mixup, a new head's
initialisation, a user's own transforms) draws from the process-wide generators; a run therefore
seeds those inside :func:`preserved`, which puts Python's, NumPy's and torch's global states (CUDA
included) back afterwards, so that ``rg.fit`` in a notebook does not change what the next cell
draws.

Example:
    >>> import random
    >>> state = random.getstate()
    >>> with preserved():
    ...     seed_all(123)
    >>> random.getstate() == state
    True
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator

import numpy as np

__all__ = ["preserved", "seed_all", "epoch_seed"]


@contextlib.contextmanager
def preserved() -> Iterator[None]:
    """Run the block, then restore Python's, NumPy's and torch's global RNG states (CPU and CUDA)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")  # torch-free callers (drawing) need no fork of its state
    if torch is None:
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        ctx = torch.random.fork_rng(devices=devices)
    try:
        with ctx:
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (call inside :func:`preserved`)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A seed that depends only on ``(seed, epoch, rank, stream)``: the same epoch draws the same numbers after a resume."""
    return seed * 1_000_003 + epoch * 1009 + rank + stream * 7_919
