"""AdaptFormer (Chen et al.): a scaled non-linear bottleneck parallel to each MLP.

``mlp(x) + s · up(relu(down(x)))`` with bottleneck 8 and s = 0.1. Non-linear and
parallel to a non-linear MLP: it cannot merge.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .base import MethodConfig, Wrapper, check, field, register, replace
from .bottleneck import Bottleneck, mlp_paths


@dataclasses.dataclass
class AdaptFormerConfig(MethodConfig):
    bottleneck: int = field(8, "hidden size of the adapter")
    scale: float = field(0.1, "s: scale of the parallel branch")
    dropout: float = field(0.1, "dropout inside the adapter; grid {0.1, 0}")

    def validate(self) -> None:
        check(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


class ParallelAdapter(Wrapper):
    def __init__(self, base_layer: nn.Module, dim: int, config: AdaptFormerConfig) -> None:
        super().__init__(base_layer)
        self.adapter = Bottleneck(dim, config.bottleneck, config.dropout, nn.ReLU)
        self.scale = config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.scale * self.adapter(x)


@register("adaptformer", AdaptFormerConfig, mergeable=False, paper_params="2·d·r·L (one adapter per block)",
          description="AdaptFormer: scaled non-linear bottleneck parallel to each MLP")
def apply(model: nn.Module, config: AdaptFormerConfig) -> None:
    for path, dim in mlp_paths(model):
        replace(model, path, lambda m, dim=dim: ParallelAdapter(m, dim, config))
