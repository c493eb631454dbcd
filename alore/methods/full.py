"""Full fine-tuning: every parameter trains (the paper's upper-cost reference)."""

from __future__ import annotations

import dataclasses

from torch import nn

from .base import MethodConfig, register


@dataclasses.dataclass
class FullConfig(MethodConfig):
    pass


@register("full", FullConfig, mergeable=True, paper_params="all", description="Full fine-tuning")
def apply(model: nn.Module, config: FullConfig) -> None:
    model.requires_grad_(True)
