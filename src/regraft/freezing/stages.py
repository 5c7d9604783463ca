"""Stages for :func:`regraft.freezing.stages`: the families table's rules, asked with the head known.

The rules themselves (ResNet's ``stem``, ``layer1``.., VGG's blocks and ``fc1``/``fc2``, timm's
``group_matcher``...) live in :mod:`regraft.families`, the one table of architecture facts; a
rule that fails raises there instead of quietly falling back to another.
"""

from __future__ import annotations

from torch import nn

from regraft import families
from regraft.families import Stage, cover, has_params, param_names, under, vgg_fc

__all__ = ["Stage", "find_stages", "under", "cover", "param_names", "has_params", "vgg_fc"]


def find_stages(model: nn.Module, *, head: str | None) -> list[Stage]:
    """Ordered trunk stages of ``model`` (the head excluded, every other parameter covered).

    Raises:
        ModelError: the family's stage rule failed on this model.
    """
    return families.stages(model, head=head)
