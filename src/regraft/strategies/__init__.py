"""Named fine-tuning strategies: every choice that depends on the strategy is made here, once.

================  ==========================================  ====================================
strategy          trains                                      learning rates
================  ==========================================  ====================================
``scratch``       everything, from random weights              one LR for all
``probe``         only a linear head, fitted to convergence    (closed-form fit, no LR)
                  on the frozen trunk's features
``head``          the head only                               one LR
``partial``       the last ``partial_stages`` stages + head   trunk ``lr``, head ``lr × head_lr_mult``
                  (VGG: fc1 and fc2 count as one stage)
``full``          everything                                  trunk ``lr``, head ``lr × head_lr_mult``
``lp-ft``         everything, after the probe                 as full, discriminative (0.1) by default
``gradual``       head, then one more stage from the top at   as full; each unfrozen stage warms
                  evenly spaced epochs, last step everything  up over one epoch
``auto``          decides from evidence (below)
================  ==========================================  ====================================

``auto`` with pretrained weights fits the probe first (cross-validated, on every labelled image
when the data are small and have no validation split), then decides from what the probe showed
— :func:`after_probe` — to stop there, to fine-tune everything from the probe's head while that
beats the probe, or to fine-tune with BatchNorm statistics adapting when the frozen features
separate the classes poorly. Without pretrained weights ``auto`` is ``scratch``. Explicit
strategies keep their meaning: a fixed schedule on a held-out split.

:func:`decide` turns a config into typed :class:`Decisions`; nothing else in regraft compares
strategy names. :func:`plan` (in ``strategies.plan``) freezes a model and builds its optimizer,
schedule and unfreezing for one strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from regraft.config import Config
from regraft.errors import ConfigError
from regraft.strategies.names import Strategy
from regraft.strategies.plan import (
    DEFAULT_LR,
    SGD_LR_FACTOR,
    TrainPlan,
    default_lr,
    default_weight_decay,
    format_audit,
    plan,
)

__all__ = [
    "Strategy", "STRATEGIES", "Decisions", "decide", "Evidence", "Continuation", "after_probe", "validation_regime",
    "plan", "TrainPlan", "DEFAULT_LR", "SGD_LR_FACTOR", "default_lr", "default_weight_decay", "format_audit",
]


STRATEGIES = tuple(s.value for s in Strategy if s is not Strategy.AUTO)

# auto: data with at most this many images in the median class and no validation split are
# decided by cross-validation on every image rather than a 20% holdout (issue: the holdout
# threw away a fifth of ~20 images per class and trailed a converged probe by 2.6 points)
CV_MAX_PER_CLASS = 50
CV_FOLDS = 5
# auto: a probe this accurate on its validation evidence leaves nothing for fine-tuning to gain
NOTHING_TO_GAIN = 0.995
# auto: below this probe accuracy, with at least this many images per class, the frozen features
# do not fit the task; fine-tune everything with BatchNorm statistics adapting to the new domain
WEAK_PROBE = 0.6
FULL_MIN_PER_CLASS = 100


@dataclass(frozen=True)
class Decisions:
    """What a run does because of its strategy, decided once before anything is built.

    Attributes:
        strategy: the strategy the plan is built for (``auto`` resolved: ``lp-ft`` with weights,
            ``scratch`` without; it may change after the probe, see :func:`after_probe`).
        auto: the user left the choice to regraft (evidence may end the run after the probe).
        loads_weights: the pretrained weights are loaded (not for ``scratch``).
        probe_first: fit the linear probe on cached features before anything trains.
        fine_tunes: gradient training follows (False for ``probe``).
        hold_bn_stats: BatchNorm running statistics stay fixed while training (``bn_eval``).
        cache_reason: why the frozen prefix may not be cached for gradient training ("" = it may).
        stop_behind_probe: fine-tuning stops at the first evaluation that does not beat the probe.
        wise_ft: after fine-tuning, pick a mix of the probe's and the fine-tuned weights on
            validation evidence.
        lr_find_as: the strategy ``regraft lr-find`` sets up to find this strategy's LR.
    """

    strategy: Strategy
    auto: bool
    loads_weights: bool
    probe_first: bool
    fine_tunes: bool
    hold_bn_stats: bool
    cache_reason: str
    stop_behind_probe: bool
    wise_ft: bool
    lr_find_as: Strategy

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Strategy) else v) for k, v in self.__dict__.items()}


def decide(cfg: Config, *, pretrained: bool) -> Decisions:
    """The strategy-dependent choices for ``cfg`` (``pretrained``: ``cfg.weights`` names weights).

    Raises:
        ConfigError: an unknown strategy, or ``probe``/``lp-ft`` without pretrained weights.
    """
    asked = Strategy.parse(cfg.strategy)
    auto = asked is Strategy.AUTO
    strategy = (Strategy.LP_FT if pretrained else Strategy.SCRATCH) if auto else asked
    if strategy in (Strategy.PROBE, Strategy.LP_FT) and not pretrained:
        raise ConfigError(f"strategy {strategy.value} fits a probe on pretrained features, but --weights is none; "
                          "give --weights or use --strategy scratch")
    probe_first = strategy in (Strategy.PROBE, Strategy.LP_FT)
    # lp-ft's head is fitted on features normalised by the pretrained statistics; letting
    # BatchNorm switch to batch statistics afterwards shifts them (measured: val accuracy fell
    # every fine-tuning epoch, 0.98 -> 0.55 in five on bench/time_to_accuracy.py's photos task)
    hold = cfg.bn_eval if cfg.bn_eval is not None else strategy is Strategy.LP_FT
    return Decisions(
        strategy=strategy, auto=auto, loads_weights=strategy is not Strategy.SCRATCH, probe_first=probe_first,
        fine_tunes=strategy is not Strategy.PROBE, hold_bn_stats=hold, cache_reason=_cache_reason(cfg, strategy),
        stop_behind_probe=auto and probe_first and cfg.patience is None, wise_ft=auto and probe_first,
        lr_find_as={Strategy.LP_FT: Strategy.FULL, Strategy.PROBE: Strategy.HEAD}.get(strategy, strategy),
    )


def _cache_reason(cfg: Config, strategy: Strategy) -> str:
    """Why gradient training may not run on cached features of the frozen prefix ("" = it may)."""
    if not cfg.feature_cache:
        return "feature_cache is false"
    if cfg.unfreeze or strategy in (Strategy.GRADUAL, Strategy.LP_FT, Strategy.AUTO):
        return "the plan changes what is frozen during the run"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "mixup and cutmix mix images, not features"
    if cfg.ema is not None:
        return "EMA averages the whole model's weights"
    return ""


def validation_regime(decisions: Decisions, *, has_val_split: bool, class_counts: list[int]) -> str:
    """``holdout`` (decide on a held-out split) or ``cv5`` (cross-validate on every image).

    Only ``auto`` and ``probe`` cross-validate, and only when the data bring no validation split
    and are small (median class at most :data:`CV_MAX_PER_CLASS` images): there a 20% holdout
    costs more evidence than it gives.
    """
    small = bool(class_counts) and sorted(class_counts)[len(class_counts) // 2] <= CV_MAX_PER_CLASS
    cv_ok = decisions.auto or decisions.strategy is Strategy.PROBE
    return f"cv{CV_FOLDS}" if cv_ok and decisions.probe_first and not has_val_split and small else "holdout"


@dataclass(frozen=True)
class Evidence:
    """What the probe showed, and what the run can still afford."""

    validation: str  # holdout | cv5
    probe_acc: float
    probe_loss: float
    class_counts: list[int]
    probe_acc_std: float | None = None
    seconds_so_far: float = 0.0
    seconds_per_epoch: float | None = None  # an estimate for one fine-tuning epoch
    time_budget: float | None = None
    epochs: int = 5


@dataclass(frozen=True)
class Continuation:
    """What follows the probe: ``action`` (``probe`` = stop, ``lp-ft``, ``full``), for ``epochs``, and why."""

    action: str
    epochs: int
    reason: str


def after_probe(decisions: Decisions, ev: Evidence) -> Continuation:
    """Decide from the probe's evidence what ``auto`` does next (explicit strategies keep their plan)."""
    probe = _probe_text(ev)
    if not decisions.auto:
        action = "probe" if not decisions.fine_tunes else decisions.strategy.value
        return Continuation(action, ev.epochs if decisions.fine_tunes else 0, f"{probe}; strategy {decisions.strategy.value}")
    if ev.validation != "holdout":
        return Continuation("probe", 0, f"{probe}; fine-tuning skipped: the data have no validation split to check it "
                                        "against (add a val/ folder, or pass --strategy lp-ft to hold out 20%)")
    if ev.probe_acc >= NOTHING_TO_GAIN:
        return Continuation("probe", 0, f"{probe}; fine-tuning skipped: nothing left to gain")
    epochs = ev.epochs
    if ev.time_budget is not None and ev.seconds_per_epoch:
        left = ev.time_budget - ev.seconds_so_far
        affordable = int(left // ev.seconds_per_epoch)
        if affordable < 1:
            return Continuation("probe", 0, f"{probe}; fine-tuning skipped: an epoch takes about "
                                            f"{ev.seconds_per_epoch:.0f} s and {max(left, 0):.0f} s of --time-budget are left")
        epochs = min(epochs, affordable)
    median = sorted(ev.class_counts)[len(ev.class_counts) // 2] if ev.class_counts else 0
    budget = f" ({epochs} epochs fit the --time-budget)" if epochs < ev.epochs else ""
    if ev.probe_acc < WEAK_PROBE and median >= FULL_MIN_PER_CLASS:
        return Continuation("full", epochs, f"{probe}; the frozen features fit this data poorly: fine-tuning everything, "
                                            f"BatchNorm statistics adapting, while it beats the probe{budget}")
    return Continuation("lp-ft", epochs, f"{probe}; fine-tuning from the probe's head while it beats the probe{budget}")


def continuation_decisions(decisions: Decisions, cont: Continuation) -> Decisions:
    """The decisions the fine-tuning stage runs under after :func:`after_probe` chose ``cont``."""
    if cont.action == "full":
        return replace(decisions, strategy=Strategy.FULL, hold_bn_stats=False)
    return decisions


def _probe_text(ev: Evidence) -> str:
    if ev.validation.startswith("cv"):
        spread = f" ± {ev.probe_acc_std:.3f}" if ev.probe_acc_std is not None and math.isfinite(ev.probe_acc_std) else ""
        return f"probe {ev.probe_acc:.3f}{spread} ({ev.validation[2:]}-fold)"
    return f"probe {ev.probe_acc:.3f} (val loss {ev.probe_loss:.3g})"
