"""Adapter (Houlsby et al.), the sequential baseline of the paper's table 2.

One bottleneck-8 adapter after each block's MLP (``y + up(act(down(y)))``), as in
the VPT benchmark's Adapter row (0.16M on ViT-B). Non-linear: it cannot merge.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .base import MethodConfig, Wrapper, check, field, register, replace
from .bottleneck import Bottleneck, mlp_paths


@dataclasses.dataclass
class AdapterConfig(MethodConfig):
    bottleneck: int = field(8, "hidden size of the adapter (paper table 2: 8)")
    dropout: float = field(0.1, "dropout inside the adapter; grid {0.1, 0}")

    def validate(self) -> None:
        check(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


class SequentialAdapter(Wrapper):
    def __init__(self, base_layer: nn.Module, dim: int, config: AdapterConfig) -> None:
        super().__init__(base_layer)
        self.adapter = Bottleneck(dim, config.bottleneck, config.dropout, nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter(y)


@register("adapter", AdapterConfig, mergeable=False, paper_params="2·d·r·L (one adapter per block)",
          description="Adapter: sequential non-linear bottleneck after each MLP")
def apply(model: nn.Module, config: AdapterConfig) -> None:
    for path, dim in mlp_paths(model):
        replace(model, path, lambda m, dim=dim: SequentialAdapter(m, dim, config))
