"""The non-linear bottleneck shared by Adapter and AdaptFormer: ``up(dropout(act(down(x))))``.

The two baselines differ in the activation, in where the bottleneck reads and
adds, and in how its weights start; the initialisations are named after the code
each comes from (see :data:`INITS`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UnknownChoiceError
from ..placement import blocks

#: name -> what the bottleneck's weights start as, and which public code does that.
INITS: dict[str, str] = {
    # timm ViT `_init_vit_weights` (non-jax): NOAH's VisionTransformer runs it over every nn.Linear,
    # its adapters included, after AdapterSuper.init_weights — so NOAH's adapters train from this.
    "trunc_normal": "weights ~ trunc_normal(std 0.02), biases 0 (what NOAH's ViT re-initialises its adapters to)",
    # NOAH model/module/adapter_super.py, AdapterSuper.init_weights (overwritten in NOAH's own runs).
    "xavier": "weights xavier-uniform, biases ~ N(0, 1e-6) (NOAH adapter_super.py init_weights)",
    # AdaptFormer models/adapter.py init_option="lora": the branch starts at exactly 0.
    "zero_up": "down kaiming-uniform(a=sqrt 5), up and both biases 0 (AdaptFormer init_option='lora')",
}


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``: the GELU approximation of NOAH's adapter (CLIP's QuickGELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, act: type[nn.Module], init: str = "zero_up") -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = act()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        if init == "trunc_normal":
            for linear in (self.down, self.up):
                nn.init.trunc_normal_(linear.weight, std=0.02)  # timm's bounds (-2, 2) are absolute: > 99σ
                nn.init.zeros_(linear.bias)
        elif init == "xavier":
            for linear in (self.down, self.up):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
        elif init == "zero_up":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)  # zero: the adapted model starts as the backbone
            nn.init.zeros_(self.up.bias)
        else:
            raise UnknownChoiceError("bottleneck init", init, INITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))


def mlp_paths(model: nn.Module) -> list[tuple[str, int]]:
    """``(path of each block's mlp, its feature size)``."""
    return [(f"{b.path}.mlp", b.module.mlp.fc1.in_features) for b in blocks(model)]


def mlp_norm_path(block_path: str, family: str) -> str:
    """The norm right in front of a block's MLP: ``norm2`` (ViT, Swin) or ``norm`` (ConvNeXt)."""
    return f"{block_path}.{'norm' if family == 'convnext' else 'norm2'}"
