"""Linear probing: the classification head only (0 backbone parameters)."""

from __future__ import annotations

import dataclasses

from torch import nn

from .base import MethodConfig, register


@dataclasses.dataclass
class LinearConfig(MethodConfig):
    pass


@register("linear", LinearConfig, mergeable=True, paper_params="0", description="Linear probing: head only")
def apply(model: nn.Module, config: LinearConfig) -> None:
    """Nothing beyond the head, which ``alore.apply`` always leaves trainable."""
