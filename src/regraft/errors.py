"""The exceptions regraft raises for problems a user can fix.

Every message is one line that says what was wrong and how to fix it. The CLI prints
``regraft: error: <message>`` and exits with status 2 for any :class:`RegraftError`;
other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

__all__ = [
    "RegraftError",
    "ConfigError",
    "WeightsError",
    "UnsafeCheckpointError",
    "CoverageError",
    "ModelError",
    "SurgeryError",
    "ShapeError",
    "FreezeError",
    "DataError",
    "TrainingError",
    "RunError",
    "RunInUseError",
    "WriteError",
    "Interrupted",
    "ExportError",
    "ReportError",
    "MissingDependencyError",
]


class RegraftError(Exception):
    """Base class: a problem with the user's input, reported as one readable line."""


class ConfigError(RegraftError, ValueError):
    """A setting, flag or recipe key is unknown, of the wrong type or out of range."""


class ModelError(RegraftError, ValueError):
    """A model name cannot be resolved in torchvision or timm."""


class WeightsError(RegraftError):
    """Weights cannot be found, read or matched to the model."""


class UnsafeCheckpointError(WeightsError):
    """A pickled file needs more than ``torch.load(weights_only=True)`` allows."""


class CoverageError(WeightsError):
    """Too little of the model's trunk came from the checkpoint."""


class SurgeryError(RegraftError, ValueError):
    """A dotted path does not exist or an operation cannot be applied there."""


class ShapeError(SurgeryError):
    """A changed model no longer runs: names the first module whose input did not fit."""


class FreezeError(RegraftError, ValueError):
    """A freeze spec names nothing or is ambiguous."""


class DataError(RegraftError):
    """An image folder, CSV or split is unusable."""


class TrainingError(RegraftError):
    """Training cannot go on (a NaN loss, an unwritable run folder, ...)."""


class RunError(RegraftError):
    """A run folder is missing, incomplete or would be overwritten."""


class RunInUseError(RunError):
    """Another process holds the run folder's writer lock; the message names it."""


class WriteError(RunError, OSError):
    """The operating system refused a write (disk full, read-only, permissions); names the path.

    Also an ``OSError`` (with the system's ``errno``), so code that catches write failures as
    such keeps working.
    """

    def __str__(self) -> str:  # the one-line message, not OSError's "[Errno 28] ..." form
        return str(self.args[0]) if self.args else super().__str__()


class Interrupted(RunError):
    """Training was interrupted (Ctrl-C); the message says how to resume."""


class ExportError(RegraftError):
    """An export failed or does not match the eager model."""


class ReportError(RegraftError, ValueError):
    """Data handed to a drawing function cannot be drawn (empty, wrong shape)."""


class MissingDependencyError(RegraftError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""
