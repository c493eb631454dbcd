"""The non-linear bottleneck shared by Adapter and AdaptFormer: ``up(dropout(act(down(x))))``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..placement import blocks


class Bottleneck(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, act: type[nn.Module]) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = act()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero: the adapted model starts as the backbone
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))


def mlp_paths(model: nn.Module) -> list[tuple[str, int]]:
    """``(path of each block's mlp, its feature size)``."""
    return [(f"{b.path}.mlp", b.module.mlp.fc1.in_features) for b in blocks(model)]
