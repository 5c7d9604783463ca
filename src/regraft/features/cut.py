"""Where a network splits into a frozen prefix and a trainable rest (``regraft.features``).

A *program* lists a family's forward pass as steps in order (module paths and the few functional
ops between them, such as the flatten before ResNet's ``fc``); the programs are facts of
:mod:`regraft.families`, which also says when a model's forward is still its family's own.
``nn.Sequential`` steps are opened into their children, so the cut can fall inside a stage. The prefix is every step before the
first one holding a trainable parameter, less trailing dropout (it belongs to the head's
training). Families without a program still cache when only the head trains: the prefix is the
whole network up to the head's input, caught with a forward pre-hook.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regraft.families import DROP, FLATTEN, MEAN, POOL, RELU, forward_program

log = logging.getLogger(__name__)

Trainable = Callable[[str], bool] | Collection[str] | None


@dataclass
class Cut:
    """A model split in two: ``rest(prefix(x))`` equals ``model(x)`` in eval mode.

    Attributes:
        prefix: the frozen part; run in eval mode under ``torch.no_grad`` to make features.
        rest: the trainable part; shares its parameters with the model, so training it trains
            the model.
        after: the last step inside the prefix (``layer3``, ``classifier.4``, ``input of fc``).
        family: which program cut it (``torchvision ResNet``, ``timm EfficientNet``, ``head input``).
    """

    prefix: nn.Module
    rest: nn.Module
    after: str
    family: str

    def describe(self) -> str:
        return f"{self.family}, frozen up to and including {self.after}"

    @torch.no_grad()
    def check(
        self, model: nn.Module, x: torch.Tensor, *, rtol: float = 1e-3, atol: float = 1e-4,
        autocast: Callable[[], Any] | None = None,
    ) -> str | None:
        """None when ``rest(prefix(x))`` matches ``model(x)`` in eval mode, else why not.

        ``autocast``: the context the run computes in (``accelerator.autocast``); both paths run
        inside it, as a prepared model's forward already does, so mixed precision compares like
        with like.
        """
        with eval_modes(model), (autocast() if autocast is not None else contextlib.nullcontext()):
            self.rest.eval()
            want = model(x)
            got = self.rest(self.prefix(x))
        if not isinstance(want, torch.Tensor) or want.shape != got.shape:
            return f"the split model's output ({tuple(got.shape)}) does not have the model's output shape"
        if not torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol):
            worst = float((got.float() - want.float()).abs().max())
            return f"the split model's output differs from the model's by up to {worst:.3g}"
        return None


class _Chain(nn.Module):
    """Steps applied in order; the modules are the model's own (shared, not copied)."""

    def __init__(self, steps: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.labels = [label for label, _ in steps]
        self.steps = nn.ModuleList([module for _, module in steps])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


class _GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, (1, 1))


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean([2, 3])


class _ReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in place: the input may be a cached feature tensor
        return nn.functional.relu(x)


class _HeadInput(nn.Module):
    """Runs the whole model and returns what its head received (caught by a pre-hook)."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._head = [head]  # a list, so the head is not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = self._head[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        if len(seen) != 1 or not isinstance(seen[0], torch.Tensor):
            raise RuntimeError(f"the head ran {len(seen)} times in one forward pass; expected once")
        return seen[0]


@contextlib.contextmanager
def eval_modes(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and give every submodule its own mode back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def trainable_names(model: nn.Module, trainable: Trainable) -> set[str]:
    """Names of the parameters that train: ``trainable`` as a predicate, a set, or requires_grad."""
    names = [n for n, _ in model.named_parameters()]
    if trainable is None:
        return {n for n, p in model.named_parameters() if p.requires_grad}
    if callable(trainable):
        return {n for n in names if trainable(n)}
    return set(trainable) & set(names)


def _timm_dropout(model: nn.Module) -> nn.Module | None:
    head_drop = getattr(model, "head_drop", None)
    if isinstance(head_drop, nn.Dropout):
        return head_drop
    p = float(getattr(model, "drop_rate", 0.0) or 0.0)
    return nn.Dropout(p) if p > 0 else None


def _op(token: str, model: nn.Module) -> nn.Module | None:
    if token == DROP:
        return _timm_dropout(model)
    return {FLATTEN: _Flatten, POOL: _GlobalAvgPool, MEAN: _SpatialMean, RELU: _ReLU}[token]()


def _expand(path: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Open plain ``nn.Sequential`` (and looped ``nn.ModuleList``) steps into their children."""
    plain_seq = isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
    if plain_seq or isinstance(module, nn.ModuleList):
        steps: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            steps.extend(_expand(f"{path}.{name}" if path else name, child))
        return steps
    return [(path, module)]


def _steps(model: nn.Module, program: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    steps: list[tuple[str, nn.Module]] = []
    for token in program:
        if token.startswith("<"):
            op = _op(token, model)
            if op is not None:
                steps.append((token.strip("<>"), op.train(model.training)))
        else:
            steps.extend(_expand(token, model.get_submodule(token)))
    return steps


def _stochastic(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.modules.dropout._DropoutNd) or "Dropout" in name or name in ("DropPath", "StochasticDepth")


def _program_cut(model: nn.Module, family: str, steps: list[tuple[str, nn.Module]], train: set[str]) -> tuple[Cut | None, str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    step_params = [{name_of[id(p)] for p in m.parameters() if id(p) in name_of} for _, m in steps]
    covered = set().union(*step_params)
    if train - covered:
        return None, f"{min(train - covered)} trains but is not part of the {family} forward pass regraft knows"
    first = next(i for i, names in enumerate(step_params) if names & train)
    k = first
    # dropout right before the first trainable step is the head's regulariser: it stays in training
    while k > 0 and not step_params[k - 1] and _stochastic(steps[k - 1][1]):
        k -= 1
    if not any(step_params[:k]):
        return None, f"nothing is frozen before {steps[first][0]}, which trains"
    return Cut(prefix=_Chain(steps[:k]), rest=_Chain(steps[k:]), after=steps[k - 1][0], family=family), ""


def _head_input_cut(model: nn.Module, train: set[str], head: str) -> tuple[Cut | None, str]:
    try:
        head_module = model.get_submodule(head)
    except AttributeError:
        return None, f"the head '{head}' is not a submodule of {type(model).__name__}"
    in_head = {id(p) for p in head_module.parameters()}
    outside = sorted(n for n, p in model.named_parameters() if n in train and id(p) not in in_head)
    if outside:
        return None, (
            f"{outside[0]} trains outside the head '{head}' and regraft does not know the forward order of "
            f"{type(model).__name__} (docs/features.md lists the families that cache a partly frozen trunk)"
        )
    steps: list[tuple[str, nn.Module]] = []
    drop = _timm_dropout(model) if type(model).__module__.startswith("timm.") else None
    if drop is not None:
        steps.append(("dropout", drop))
    steps.append((head, head_module))
    return Cut(prefix=_HeadInput(model, head_module), rest=_Chain(steps), after=f"the input of {head}", family="head input"), ""


def explain_cut(model: nn.Module, *, trainable: Trainable = None, head: str | None = None) -> tuple[Cut | None, str]:
    """The cut for ``model`` with ``trainable`` parameters, or None and the reason why not.

    Args:
        model: the unwrapped model (its own parameter names).
        trainable: a predicate on parameter names, a set of names, or None for ``requires_grad``.
        head: dotted path of the classifier; only needed for families without a program
            (default: :func:`regraft.surgery.find_head`).

    Returns:
        ``(cut, description)`` or ``(None, reason)``.
    """
    train = trainable_names(model, trainable)
    if not train:
        return None, "no parameter trains"
    found = forward_program(model)
    if found is not None:
        family, program = found
        try:
            steps = _steps(model, program)
        except AttributeError as exc:
            return None, f"{family} lacks a module its forward pass uses ({exc})"
        cut, reason = _program_cut(model, family, steps, train)
        return (cut, cut.describe()) if cut is not None else (None, reason)
    if head is None:
        from regraft.surgery import find_head

        head = find_head(model)
    cut, reason = _head_input_cut(model, train, head)
    return (cut, cut.describe()) if cut is not None else (None, reason)


def find_cut(model: nn.Module, *, trainable: Trainable = None, head: str | None = None) -> Cut | None:
    """Split ``model`` after its last frozen step in forward order; None (logged) when it cannot.

    Args:
        model: the unwrapped model.
        trainable: a predicate on parameter names, a set of names, or None for ``requires_grad``.
        head: dotted path of the classifier (default: :func:`regraft.surgery.find_head`).

    Returns:
        A :class:`Cut`, or None after logging ``feature cache off: <why>`` at info level.
    """
    cut, reason = explain_cut(model, trainable=trainable, head=head)
    if cut is None:
        log.info("feature cache off: %s", reason)
    return cut
