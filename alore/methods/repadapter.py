"""RepAdapter (Luo et al.): a linear bottleneck adapter with a grouped up-projection (paper tables 1-3).

Reference: luogen1996/RepAdapter ``repadapter.py`` (``RepAdapter.forward``, placed by
``forward_vit_block_adapter``, folded by ``set_RepWeight``)::

    A(x) = x + s · (W_B · dropout(W_A · x + b_A) + b_B)        W_B block-diagonal with g = 2 groups
    x    = x + MHSA(A_attn(LN1(x)));   x = x + MLP(A_mlp(LN2(x)))

before MHSA and before FFN (the official ``repblock`` placement), bottleneck 8, xavier W_A,
zero W_B and biases (starts as the identity). The official scale search
(``scripts/search_repblock.sh``) is s ∈ {0.1, 0.5, 1, 5, 10}. Purely linear, so it folds
into the next Linear exactly as ALoRE does (an affine map ``x M + c``, paper eq. 8).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..placement import LOCATIONS, location_targets
from .base import AffineAround, MethodConfig, check, field, register, replace


@dataclasses.dataclass
class RepAdapterConfig(MethodConfig):
    bottleneck: int = field(8, "hidden size of the adapter")
    groups: int = field(2, "groups of the up-projection")
    scale: float = field(1.0, "s: output scale; searchable (official grid, search_repblock.sh: {0.1, 0.5, 1, 5, 10})")
    learnable_scale: bool = field(False, "learn s instead of fixing it")
    dropout: float = field(0.1, "dropout between the projections; grid {0.1, 0}")
    locations: list[str] | None = field(None, f"any of {', '.join(LOCATIONS)}; default before MHSA and FFN")
    layers: int | None = field(None, "insert into the first k blocks only; default all")

    def validate(self) -> None:
        check(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
        check(self.groups >= 1 and self.bottleneck % self.groups == 0,
              f"groups={self.groups} must divide bottleneck={self.bottleneck}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


class RepAdapterModule(nn.Module):
    def __init__(self, dim: int, config: RepAdapterConfig) -> None:
        super().__init__()
        g, r = config.groups, config.bottleneck
        check(dim % g == 0, f"groups={g} must divide the feature size d={dim}")
        self.dim, self.groups = dim, g
        self.down = nn.Linear(dim, r)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.up_weight = nn.Parameter(torch.zeros(g, dim // g, r // g))  # zero: starts as the identity
        self.up_bias = nn.Parameter(torch.zeros(dim))
        scale = torch.tensor(float(config.scale))
        if config.learnable_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.dropout = nn.Dropout(config.dropout)

    def up(self, h: torch.Tensor) -> torch.Tensor:
        groups = h.reshape(*h.shape[:-1], self.groups, -1)
        return torch.einsum("...gi,goi->...go", groups, self.up_weight).reshape(*h.shape[:-1], self.dim) + self.up_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.up(self.dropout(self.down(x)))

    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        up = torch.block_diag(*self.up_weight)  # (d, r): the grouped projection as one matrix
        eye = torch.eye(self.dim, dtype=up.dtype, device=up.device)
        matrix = eye + self.scale * (self.down.weight.T @ up.T)
        shift = self.scale * (self.down.bias @ up.T + self.up_bias)
        return matrix.detach(), shift.detach()


@register("repadapter", RepAdapterConfig, mergeable=True, paper_params="(d·r + r + d·r/g + d)·2·L",
          description="RepAdapter: linear grouped bottleneck adapter, re-parameterized")
def apply(model: nn.Module, config: RepAdapterConfig) -> None:
    for path, position, _ in location_targets(model, config.locations, config.layers):
        def wrap(linear: nn.Module, position: str = position) -> nn.Module:
            dim = linear.in_features if position == "pre" else linear.out_features
            return AffineAround(linear, RepAdapterModule(dim, config), position)
        replace(model, path, wrap)
