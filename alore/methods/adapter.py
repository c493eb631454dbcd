"""Adapter: a sequential non-linear bottleneck after each block's MLP (paper tables 2, 3; table 10: 2·d·r·L).

Reference for the default ``style="noah"`` (the paper's 0.16M ViT-B Adapter row is NOAH's):
ZhangYuanhan-AI/NOAH ``model/module/adapter_super.py`` (``AdapterSuper.forward``), placed by
``model/supernet_vision_transformer_timm.py`` (``Block.forward``)::

    y  = MLP(LN2(x'))                                   x' = the residual stream after MHSA
    x  = x' + y + W_up · dropout(QuickGELU(W_down · y + b_down)) + b_up,   QuickGELU(z) = z · σ(1.702 z)

with bottleneck r = 8 and adapter dropout 0.1 (NOAH's ``--drop_rate_adapter``). NOAH's adapters
do not start as the identity. ``AdapterSuper.init_weights`` draws xavier-uniform weights and
N(0, 1e-6) biases (``init="xavier"``), but NOAH's ``VisionTransformer`` then runs timm's
``_init_vit_weights`` over every ``nn.Linear``, the adapters included, so its runs train from
trunc_normal(std 0.02) weights and zero biases: the default ``init="trunc_normal"``.

``style="pfeiffer"``: the VPT benchmark's adapter, KMnP/vpt ``src/models/vit_adapter/adapter_block.py``
(``Pfeiffer_Block.forward``): the same equation with exact GELU. It starts from a kaiming
down-projection and a zero up-projection (``init="zero_up"``), so the model starts as the
backbone. VPT zero-initialises both projections, which leaves both weight matrices without a
gradient for good.

Non-linear: it cannot merge.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UnknownChoiceError
from .base import MethodConfig, Wrapper, check, field, register, replace
from .bottleneck import INITS, Bottleneck, QuickGELU, mlp_paths

#: style -> (activation, default init)
STYLES: dict[str, tuple[type[nn.Module], str]] = {
    "noah": (QuickGELU, "trunc_normal"),
    "pfeiffer": (nn.GELU, "zero_up"),
}


@dataclasses.dataclass
class AdapterConfig(MethodConfig):
    bottleneck: int = field(8, "hidden size of the adapter (paper table 2: 8)")
    dropout: float = field(0.1, "dropout inside the adapter; grid {0.1, 0}")
    style: str = field("noah", "noah: NOAH's adapter, QuickGELU (the paper's Adapter row); "
                               "pfeiffer: VPT's adapter, exact GELU, starts as the backbone")
    init: str | None = field(None, f"weight init, one of {', '.join(INITS)}; "
                                   "default trunc_normal for noah (what NOAH trains from), zero_up for pfeiffer")

    def validate(self) -> None:
        check(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        if self.style not in STYLES:
            raise UnknownChoiceError("adapter style", self.style, STYLES)
        if self.init is not None and self.init not in INITS:
            raise UnknownChoiceError("adapter init", self.init, INITS)

    @property
    def weight_init(self) -> str:
        return self.init or STYLES[self.style][1]


class SequentialAdapter(Wrapper):
    """``y + bottleneck(y)`` with ``y`` the wrapped MLP's output."""

    def __init__(self, base_layer: nn.Module, dim: int, config: AdapterConfig) -> None:
        super().__init__(base_layer)
        act, _ = STYLES[config.style]
        self.adapter = Bottleneck(dim, config.bottleneck, config.dropout, act, config.weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter(y)


@register("adapter", AdapterConfig, mergeable=False, paper_params="2·d·r·L (one adapter per block)",
          description="Adapter (NOAH's): sequential non-linear bottleneck after each MLP")
def apply(model: nn.Module, config: AdapterConfig) -> None:
    for path, dim in mlp_paths(model):
        replace(model, path, lambda m, dim=dim: SequentialAdapter(m, dim, config))
