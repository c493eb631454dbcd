"""AdaptFormer: a scaled non-linear bottleneck parallel to each MLP (paper table 2; table 10: 2·d·r·L).

Reference: ShoufaChen/AdaptFormer ``models/custom_modules.py`` (``Block.forward``, parallel
option) with ``models/adapter.py`` (``Adapter``), configured as ``main_image.py`` configures it
(``ffn_option="parallel"``, ``ffn_adapter_layernorm_option="none"``,
``ffn_adapter_init_option="lora"``, ``ffn_adapter_scalar="0.1"``, dropout 0.1)::

    x  = x' + MLP(LN2(x')) + s · (W_up · dropout(ReLU(W_down · x' + b_down)) + b_up),   s = 0.1

where x' is the block's residual stream after MHSA: the branch reads the input of ``norm2``,
not its output (``input="residual"``, the default). ``input="norm"`` feeds it ``LN2(x')``
instead, the branch input the AdaptFormer paper's equation writes. The released code's
bottleneck default is 64; the paper's 0.16M row (and this default) is 8. The "lora" init
(kaiming down, zero up) makes the model start as the backbone.

To read ``x'`` without forking timm's block, ``input="residual"`` moves the norm: the block's
``norm2`` becomes a pass-through (:class:`DeferredNorm`, which still owns the norm's weights)
and the MLP wrapper applies it itself. timm blocks call the norm and then the MLP with nothing
in between, so this computes the same block. The branch output is added where the MLP output
is, so a layer scale (none in ViT-B/L/H) or drop path would apply to it too; in the released
code neither touches the branch. Non-linear and parallel to a non-linear MLP: it cannot merge.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UnknownChoiceError
from ..placement import blocks
from .base import MethodConfig, Wrapper, check, field, register, replace
from .bottleneck import Bottleneck, mlp_norm_path

INPUTS = {
    "residual": "the residual stream x' (the input of norm2), as the released code",
    "norm": "norm2(x'), the MLP's own input",
}


@dataclasses.dataclass
class AdaptFormerConfig(MethodConfig):
    bottleneck: int = field(8, "hidden size of the adapter (the paper's 0.16M row; the released default is 64)")
    scale: float = field(0.1, "s: scale of the parallel branch (released code: 0.1)")
    dropout: float = field(0.1, "dropout inside the adapter; grid {0.1, 0}")
    input: str = field("residual", "what the branch reads: residual (released code) or norm (norm2's output)")

    def validate(self) -> None:
        check(self.bottleneck >= 1, f"bottleneck must be >= 1, got {self.bottleneck}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        if self.input not in INPUTS:
            raise UnknownChoiceError("AdaptFormer input", self.input, INPUTS)


class DeferredNorm(Wrapper):
    """A norm slot that passes its input through; the :class:`ParallelAdapter` after it applies the norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ParallelAdapter(Wrapper):
    """``mlp(norm(x)) + s · bottleneck(x)``; ``norm`` is None when the block already normalised ``x``."""

    def __init__(self, base_layer: nn.Module, dim: int, config: AdaptFormerConfig,
                 norm: DeferredNorm | None = None) -> None:
        super().__init__(base_layer)
        self.adapter = Bottleneck(dim, config.bottleneck, config.dropout, nn.ReLU, "zero_up")
        self.scale = config.scale
        # Not a submodule: the norm's weights stay registered once, under the block's norm slot.
        self.__dict__["deferred_norm"] = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp_in = self.deferred_norm.base_layer(x) if self.deferred_norm is not None else x
        return self.base_layer(mlp_in) + self.scale * self.adapter(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, input={'residual' if self.deferred_norm is not None else 'norm'}"


@register("adaptformer", AdaptFormerConfig, mergeable=False, paper_params="2·d·r·L (one adapter per block)",
          description="AdaptFormer: scaled non-linear bottleneck parallel to each MLP, reading the residual stream")
def apply(model: nn.Module, config: AdaptFormerConfig) -> None:
    for block in blocks(model):
        dim = block.module.mlp.fc1.in_features
        norm = replace(model, mlp_norm_path(block.path, block.family), DeferredNorm) \
            if config.input == "residual" else None
        replace(model, f"{block.path}.mlp", lambda m, dim=dim, norm=norm: ParallelAdapter(m, dim, config, norm))
