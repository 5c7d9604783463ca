"""The BatchNorm policy of :mod:`regraft.freezing`: frozen parts keep their running statistics.

A BatchNorm layer whose affine parameters are all frozen (or, without them, whose nearest
enclosing module with parameters is all frozen) is held in eval mode: by a forward pre-hook that
:func:`regraft.freezing.freeze` installs (so ``model.train()`` alone cannot undo it), and by
:func:`apply_bn_policy`, which the training loop calls after every ``model.train()``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Tuple  # noqa: UP035 - TorchScript needs typing.Tuple in the hook's signature

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

_FROZEN_FLAG = "_regraft_bn_frozen"  # for BatchNorm without affine parameters: inside a frozen part
_TRAIN_FLAG = "_regraft_train_bn"  # train_bn: running statistics always update
_EVAL_FLAG = "_regraft_bn_eval"  # bn_eval: running statistics never update, even where affine trains


def is_bn(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


def norm_params(model: nn.Module) -> list[str]:
    """Parameter names of every normalisation layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm)."""
    kinds = (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    names = []
    for path, module in model.named_modules():
        if isinstance(module, kinds):
            names += [f"{path}.{p}" if path else p for p, _ in module.named_parameters(recurse=False)]
    return names


def bn_frozen(module: nn.Module) -> bool:
    """Whether a BatchNorm module belongs to a frozen part (so its statistics must not move)."""
    if not getattr(module, "track_running_stats", True):
        return False
    if getattr(module, _EVAL_FLAG, False):
        return True
    if getattr(module, _TRAIN_FLAG, False):
        return False
    params = [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if p is not None]
    if params:
        return not any(p.requires_grad for p in params)
    return bool(getattr(module, _FROZEN_FLAG, False))


@torch.jit.unused
def _hold_in_eval(module: nn.Module) -> None:
    if module.training and bn_frozen(module):
        module.training = False


def _keep_frozen_bn_in_eval(module: nn.Module, args: Tuple[torch.Tensor]) -> None:  # noqa: UP006 - TorchScript reads it
    # module-level, so hooked models deepcopy and pickle; typed and guarded, so torch.jit.script compiles them
    if not torch.jit.is_scripting():
        _hold_in_eval(module)


def _refresh_flags(model: nn.Module) -> None:
    """Paramless BatchNorm: frozen when the nearest enclosing module with parameters is all frozen."""
    modules = dict(model.named_modules())
    for path, module in modules.items():
        if not is_bn(module) or getattr(module, "weight", None) is not None:
            continue
        frozen = False
        parts = path.split(".")
        for i in range(len(parts) - 1, -1, -1):
            params = list(modules[".".join(parts[:i])].parameters())
            if params:
                frozen = not any(p.requires_grad for p in params)
                break
        setattr(module, _FROZEN_FLAG, frozen)


def mark_bn(model: nn.Module, *, train_bn: bool) -> None:
    for module in model.modules():
        if is_bn(module):
            setattr(module, _TRAIN_FLAG, train_bn)
            if not any(h is _keep_frozen_bn_in_eval for h in module._forward_pre_hooks.values()):
                module.register_forward_pre_hook(_keep_frozen_bn_in_eval)
    _refresh_flags(model)


def hold_bn_statistics(model: nn.Module) -> int:
    """Keep the running statistics of every BatchNorm layer fixed, trainable or not (in place).

    Affine parameters still train; normalisation always uses the pretrained statistics, as
    Keras does when fine-tuning and MMPretrain's ``norm_eval``. lp-ft's fine-tuning stage uses
    it: its head was fitted on features normalised by those statistics, and switching to batch
    statistics shifts every feature the head sees. Returns how many layers are held.
    """
    count = 0
    for module in model.modules():
        if is_bn(module):
            setattr(module, _EVAL_FLAG, True)
            if not any(h is _keep_frozen_bn_in_eval for h in module._forward_pre_hooks.values()):
                module.register_forward_pre_hook(_keep_frozen_bn_in_eval)
            count += 1
    return count


def apply_bn_policy(model: nn.Module) -> int:
    """Put every BatchNorm layer of a frozen part in eval mode (in place); call after ``model.train()``.

    A BatchNorm layer is frozen when its affine parameters are all frozen, or, without affine
    parameters, when the nearest module around it with parameters is all frozen; layers marked
    by ``freeze(train_bn=True)`` always keep training. Works on wrapped models (DDP, Accelerate).

    Args:
        model: the module, usually just after ``model.train()``.

    Returns:
        How many BatchNorm layers are held in eval mode.

    Example:
        >>> import torchvision
        >>> from regraft.freezing import freeze
        >>> m = torchvision.models.resnet18(weights=None, num_classes=2)
        >>> _ = freeze(m, head="fc")
        >>> _ = m.train(); apply_bn_policy(m)
        20
    """
    _refresh_flags(model)
    count = 0
    for module in model.modules():
        if is_bn(module) and bn_frozen(module):
            module.training = False
            count += 1
    return count


def release_bn_policy(model: nn.Module) -> int:
    """Undo :func:`mark_bn` and :func:`hold_bn_statistics` on ``model`` (in place): remove the
    forward pre-hooks and the flags, so that ``model.train()`` / ``model.eval()`` behave as plain
    PyTorch again. Training calls it on a user's module before handing it back. Returns how many
    hooks were removed.
    """
    removed = 0
    for module in model.modules():
        if not is_bn(module):
            continue
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _keep_frozen_bn_in_eval:
                del module._forward_pre_hooks[key]
                removed += 1
        for flag in (_FROZEN_FLAG, _TRAIN_FLAG, _EVAL_FLAG):
            module.__dict__.pop(flag, None)
    return removed


def swap_frozen_bn(model: nn.Module, paths: Sequence[str]) -> list[str]:
    """Replace the BatchNorm2d modules at ``paths`` by frozen equivalents (in place); returns those replaced.

    Plain ``BatchNorm2d``/``SyncBatchNorm`` become ``torchvision.ops.FrozenBatchNorm2d``; timm's
    ``BatchNormAct2d`` becomes timm's ``FrozenBatchNormAct2d`` (keeping its activation). Others
    (BatchNorm1d/3d, layers without running statistics) stay, held in eval mode by the policy.
    """
    swapped = []
    for path in paths:
        module = model.get_submodule(path)
        new = _frozen_copy(module)
        if new is None:
            log.info("frozen_bn: %s (%s) kept as is, held in eval mode", path, type(module).__name__)
            continue
        parent, _, name = path.rpartition(".")
        owner: nn.Module = model.get_submodule(parent) if parent else model
        setattr(owner, name, new)
        swapped.append(path)
    return swapped


def _frozen_copy(module: nn.Module) -> nn.Module | None:
    if getattr(module, "running_mean", None) is None:
        return None
    if type(module).__name__ in ("BatchNormAct2d", "SyncBatchNormAct"):
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(module)
    if type(module) not in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return None
    from torchvision.ops import FrozenBatchNorm2d

    new = FrozenBatchNorm2d(module.num_features, eps=module.eps)
    new = new.to(device=module.running_mean.device, dtype=module.running_mean.dtype)
    new.running_mean.copy_(module.running_mean)
    new.running_var.copy_(module.running_var)
    if module.affine:
        new.weight.copy_(module.weight.detach())
        new.bias.copy_(module.bias.detach())
    return new
