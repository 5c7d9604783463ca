"""One process or many: the device, this process's rank, DDP, and sums across processes.

Runs launched with ``torchrun`` or ``accelerate launch`` train under DDP; a plain ``python`` or
``regraft train`` runs as one process. Accelerate's ``PartialState`` (public API) reads the
launcher's environment and starts the process group. regraft deliberately makes no
``Accelerator`` object: constructing one rewrites Accelerate's process-wide state (its gradient
accumulation steps, its precision) under any ``Accelerator`` the user already made, and
resetting that state is private API. The few things an Accelerator would do here are written
out below: wrapping in DDP, unwrapping, summing across processes, and Accelerate's own trackers.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regraft.errors import TrainingError

__all__ = ["Processes", "processes", "unwrap", "Trackers", "check_trackers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """Where this process computes and who else does: ``device``, ``index`` of ``count``."""

    device: torch.device
    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def wait(self) -> None:
        """All processes meet here (no-op for one process)."""
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (itself for one process)."""
        if not self.distributed:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor, reduction="sum")

    def gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object from each process, in rank order."""
        if not self.distributed:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy the main process's values into ``tensors`` on every process (in place)."""
        if not self.distributed:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for t in tensors:
                t.copy_(broadcast(t.detach().clone(), from_process=0))

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """``model`` on the device, in DDP when there are several processes.

        DDP registers only the parameters that train when it wraps the model, so frozen ones never
        enter its buckets; ``find_unused_parameters`` is needed only when stages unfreeze later
        (they are then registered from the start, without gradients until they wake).
        """
        model = model.to(self.device)
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def processes(device: str = "auto") -> Processes:
    """This process's :class:`Processes`, for ``device`` auto | cpu | cuda | mps.

    Raises:
        TrainingError: a device that is not there.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is visible; use --device auto or cpu")
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if device == "mps" and not mps:
        raise TrainingError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    from accelerate import PartialState

    _import_distributed_nn_first()
    # a no-op when a launcher or the user already set it up; on a machine without a GPU,
    # Accelerate starts several CPU processes (torchrun, accelerate launch) only when told cpu
    on_cpu = device == "cpu" or not (torch.cuda.is_available() or (device in ("auto", "mps") and mps))
    try:
        state = PartialState(cpu=on_cpu)
    except ValueError:  # the process already runs on a GPU (a launcher's or the user's state)
        state = PartialState()
    if state.num_processes > 1:
        if device == "cpu" and state.device.type != "cpu":
            raise TrainingError("--device cpu under a GPU launcher: launch with 'accelerate launch --cpu' or drop --device")
        return Processes(device=state.device, index=state.process_index, count=state.num_processes)
    if device == "cpu":
        return Processes(device=torch.device("cpu"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return Processes(device=torch.device("cuda", torch.cuda.current_device()))
    if device in ("auto", "mps") and mps:
        return Processes(device=torch.device("mps"))
    return Processes(device=torch.device("cpu"))


def _import_distributed_nn_first() -> None:
    """Import ``torch.distributed.nn`` before any process group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated at import. Imported
    after the process group starts (torchmetrics imports it, and the figures import torchmetrics
    lazily), those defaults hold the live group, so ``destroy_process_group`` cannot free it and
    Gloo's worker threads outlive the interpreter: at exit one of them may drop a tensor without
    the GIL and abort the process ("terminate called without an active exception", a failed run
    after a good one). Imported before, the defaults hold the placeholder and resolve per call.
    """
    if torch.distributed.is_available() and not torch.distributed.is_initialized():
        importlib.import_module("torch.distributed.nn")


def unwrap(model: nn.Module) -> nn.Module:
    """The user-facing module inside DDP and ``torch.compile`` wrappers (whose keys have no prefix)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


_TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_trackers(names: Sequence[str]) -> None:
    """Raise a one-line error for an unknown tracker or one whose package is missing."""
    import importlib.util

    from regraft.errors import ConfigError, MissingDependencyError

    for name in names:
        if name not in _TRACKER_MODULES:
            raise ConfigError(f"--log {name}: unknown tracker; choose from {', '.join(_TRACKER_MODULES)}")
        if importlib.util.find_spec(_TRACKER_MODULES[name]) is None:
            raise MissingDependencyError(f"--log {name} needs {name}: pip install 'regraft[{name}]'")


class Trackers:
    """Accelerate's experiment trackers (TensorBoard, MLflow), on the main process only."""

    def __init__(self, names: Sequence[str], *, run_name: str, logging_dir: str, procs: Processes) -> None:
        self.trackers: list[Any] = []
        if not names or not procs.is_main:
            return
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        for name in names:
            if name == "tensorboard":
                self.trackers.append(TensorBoardTracker(run_name, logging_dir))
            elif name == "mlflow":
                self.trackers.append(MLflowTracker(run_name, logging_dir=logging_dir))

    def start(self, config: dict[str, Any]) -> None:
        for t in self.trackers:
            t.store_init_configuration(config)

    def log(self, values: dict[str, Any], *, step: int) -> None:
        """``values`` at optimizer step ``step`` (fractional epochs share one integer axis)."""
        for t in self.trackers:
            t.log(values, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
