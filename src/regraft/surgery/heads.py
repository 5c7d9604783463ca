"""Finding the final classifier of a network and grafting a new one for N classes.

Where a known family's classifier lives is a fact of :mod:`regraft.families` (torchvision by
class, timm by asking the model: its pretrained config's ``classifier``, ``get_classifier``);
from there the search descends through
containers (``classifier`` -> ``classifier.6``, timm's ``head`` -> ``head.fc``) to the last
Linear or convolution, so that pooling, norms and flattening stay in place. A head that
:func:`replace_head` made is marked and found as a whole (``fc`` rather than ``fc.3`` when it
has hidden layers). Anything else: the last ``nn.Linear`` in forward order.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from regraft.errors import SurgeryError
from regraft.families import declared, head_location
from regraft.surgery.diff import short
from regraft.surgery.paths import canonical, join_path, lookup, parent_of, set_child, split_path
from regraft.surgery.shapes import default_input_size, probe, validate

__all__ = ["HeadInit", "find_head", "replace_head", "build_head", "is_new_head"]

log = logging.getLogger(__name__)

_HEAD_MARK = "regraft_new_head"
_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


class HeadInit(str, enum.Enum):  # enum.StrEnum needs Python 3.11; regraft supports 3.10
    """How a new head's weights start (biases start at zero except for ``default``)."""

    DEFAULT = "default"
    XAVIER_UNIFORM = "xavier_uniform"
    KAIMING_NORMAL = "kaiming_normal"
    ZEROS = "zeros"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | HeadInit) -> HeadInit:
        try:
            return value if isinstance(value, cls) else cls(str(value).lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise SurgeryError(f"unknown head init '{value}'; use one of {choices}") from None


def is_new_head(module: nn.Module) -> bool:
    """Whether :func:`replace_head` made this module."""
    return module.__dict__.get(_HEAD_MARK) is True


def _descend(model: nn.Module, path: str) -> str:
    """From a module or container, down to the last Linear/conv child (a marked head stops it)."""
    module = lookup(model, path)
    while module is not None and not is_new_head(module) and not isinstance(module, (*_LAYERS, nn.Identity)):
        keys = [
            k for k, c in module._modules.items()
            if c is not None and any(isinstance(m, _LAYERS) or is_new_head(m) for m in c.modules())
        ]
        if not keys:
            break
        path, module = join_path(path, keys[-1]), module._modules[keys[-1]]
    return path


def _last_linear(model: nn.Module, input_size: Sequence[int] | None) -> str | None:
    """Path of the last nn.Linear in forward order (registration order if no pass can run)."""
    linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    # a user's module has no known input size: ImageNet's is the likeliest; if it fails, registration order
    size = input_size or default_input_size(model) or (3, 224, 224)
    if not linears or size is None:
        return linears[-1] if linears else None
    calls: list[str] = []
    handles = [
        lookup(model, p).register_forward_hook(lambda *_a, p=p: calls.append(p))  # type: ignore[union-attr]
        for p in linears
    ]
    try:
        validate(model, input_size=size)
    except SurgeryError:
        log.debug("no dry pass at %s; using registration order to find the last Linear", tuple(size))
        calls = []
    finally:
        for h in handles:
            h.remove()
    return calls[-1] if calls else linears[-1]


def _outermost_new_head(model: nn.Module, path: str) -> str:
    module, done = model, []
    for part in split_path(path):
        module = module._modules[part]
        done.append(part)
        if is_new_head(module):
            return join_path(*done)
    return path


def find_head(model: nn.Module, *, ref: Any = None, input_size: Sequence[int] | None = None) -> str:
    """The dotted path of the model's final classifier.

    Args:
        model: a torchvision or timm network, or your own module.
        ref: the model's ``ModelRef``; defaults to ``model.regraft_ref`` (set by ``zoo.build``).
        input_size: ``(C, H, W)`` for the forward-order search on your own modules (known zoo
            models do not need it).

    Returns:
        ``"fc"``, ``"classifier.6"``, ``"heads.head"``, ``"head.fc"``, ...

    Raises:
        SurgeryError: no classifier layer could be found (pass ``head=`` to the caller).

    Example:
        >>> import torchvision
        >>> find_head(torchvision.models.vgg11())
        'classifier.6'
    """
    start = head_location(model, ref=ref)
    if start is not None:
        return _descend(model, start)
    fam = declared(model, ref=ref)
    if fam is not None:
        log.info("%s (%s) has no '%s' any more; looking for its last Linear layer", type(model).__name__, fam.name, fam.head)
    found = _last_linear(model, input_size)
    if found is None:
        raise SurgeryError(
            f"found no classifier in {type(model).__name__}: it has no nn.Linear layer; "
            "name it with head='path' (see 'regraft inspect' for the paths)"
        )
    return _outermost_new_head(model, found)


def build_head(
    in_features: int, num_classes: int, *, hidden: Sequence[int] = (), dropout: float = 0.0, conv: bool = False,
) -> nn.Module:
    """``Linear(in, N)``; or ``[Linear, ReLU, Dropout] * len(hidden) + Linear`` (1x1 convs when ``conv``)."""
    def layer(i: int, o: int) -> nn.Module:
        return nn.Conv2d(i, o, kernel_size=1) if conv else nn.Linear(i, o)

    layers: list[nn.Module] = []
    dims = [in_features, *hidden]
    for i, o in zip(dims[:-1], dims[1:], strict=True):
        layers += [layer(i, o), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    if dropout > 0 and not hidden:
        layers.append(nn.Dropout(dropout))
    layers.append(layer(dims[-1], num_classes))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _initialise(head: nn.Module, init: HeadInit) -> None:
    if init is HeadInit.DEFAULT:
        return
    for m in head.modules():
        if isinstance(m, _LAYERS):
            if init is HeadInit.XAVIER_UNIFORM:
                nn.init.xavier_uniform_(m.weight)
            elif init is HeadInit.KAIMING_NORMAL:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _head_input(model: nn.Module, path: str, old: nn.Module, input_size: Sequence[int] | None) -> tuple[int, bool]:
    """(input width, is a conv head) of the module at ``path``."""
    first = next((m for m in old.modules() if isinstance(m, _LAYERS)), None) if is_new_head(old) else old
    if isinstance(first, nn.Linear):
        return first.in_features, False
    if isinstance(first, nn.modules.conv._ConvNd):
        return first.in_channels, True
    size = input_size or default_input_size(model)
    if size is None:
        raise SurgeryError(
            f"cannot tell the input width of the head '{path}' ({type(old).__name__}); pass input_size=(C, H, W)"
        )
    in_shape = probe(model, [path], input_size=size).get(path, (None, None))[0]
    if not isinstance(in_shape, tuple) or len(in_shape) < 2:
        raise SurgeryError(f"the head '{path}' did not run in a dry pass at {tuple(size)}; pass head= another path")
    return (in_shape[1], True) if len(in_shape) == 4 else (in_shape[-1], False)


def _check_head_args(num_classes: int, hidden: Sequence[int], dropout: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SurgeryError(f"num_classes must be a positive integer; got {num_classes!r}")
    if isinstance(hidden, (str, bytes)) or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise SurgeryError(f"hidden must be a list of positive layer widths such as [256]; got {hidden!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise SurgeryError(f"dropout must be in [0, 1); got {dropout}")


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    init: str | HeadInit = "default",
    head: str | None = None,
    input_size: Sequence[int] | None = None,
) -> str:
    """Replace the final classifier, in place, by a new one for ``num_classes``.

    The input width is read from the old head (or from a dry pass when it is not a Linear or
    convolution); pooling, norms and flattening before it are kept. A plain ``Linear`` head that
    already has ``num_classes`` outputs is kept when no hidden layer, dropout or init is asked.

    Args:
        model: the network, changed in place.
        num_classes: outputs of the new head.
        hidden: widths of hidden layers (Linear + ReLU [+ Dropout] each) before the output layer.
        dropout: dropout before the output layer (after each hidden layer).
        init: ``default`` (PyTorch's), ``xavier_uniform``, ``kaiming_normal`` or ``zeros``; the
            last three start biases at zero.
        head: the head's path when :func:`find_head` should not guess.
        input_size: ``(C, H, W)`` for the dry pass, when one is needed.

    Returns:
        The head's path (the new module sits exactly there).

    Raises:
        SurgeryError: bad arguments, or no head found.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18()
        >>> replace_head(m, 10, hidden=[256], dropout=0.3)
        'fc'
    """
    _check_head_args(num_classes, hidden, dropout)
    how = HeadInit.parse(init)
    parent, key, path = parent_of(model, canonical(model, head) if head is not None else find_head(model))
    old = parent._modules[key]
    if isinstance(old, nn.Linear) and old.out_features == num_classes and not hidden and not dropout and how is HeadInit.DEFAULT:
        log.info("head '%s' already has %d outputs; kept", path, num_classes)
        return path
    width, conv = _head_input(model, path, old, input_size)
    new = build_head(width, num_classes, hidden=tuple(hidden), dropout=float(dropout), conv=conv)
    _initialise(new, how)
    ref_tensor = next((t for t in (*old.parameters(), *model.parameters()) if t.is_floating_point()), None)
    if ref_tensor is not None:
        new.to(device=ref_tensor.device, dtype=ref_tensor.dtype)
    new.__dict__[_HEAD_MARK] = True
    set_child(parent, key, new)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes  # timm reads it (e.g. for pretrained_cfg checks)
    log.info("head '%s': %s replaced by %s for %d classes", path, short(old), short(new), num_classes)
    return path
