"""VPT (Jia et al.): learnable prompt tokens inserted after the class token (paper table 2; table 10).

Reference: KMnP/vpt ``src/models/vit_prompt/vit.py`` (``PromptedTransformer.incorporate_prompt``
and ``forward_deep_prompt``)::

    Deep:     [x_i, _,   E_i] = L_i([x_{i-1}, dropout(P_{i-1}), E_{i-1}])     i = 1..L
    Shallow:  [x_1, Z_1, E_1] = L_1([x_0, dropout(P_0), E_0]),  then  [x_i, Z_i, E_i] = L_i([x_{i-1}, Z_{i-1}, E_{i-1}])

with x the class token, E the patch tokens, P_i ∈ R^{m×d} ~ uniform(±sqrt(6 / (3·p² + d))) for patch size p.

Shallow: m prompts before the first block (``m·d`` parameters). Deep: a fresh set of m prompts
replaces the previous one before every block (``m·d·L``). The prompts are expanded over the
batch before the dropout, so every sample gets its own dropout mask, as in the reference.
Prompts are removed after the last block so timm's pooling sees the usual tokens (with the
class-token pooling of ViT this is what VPT's ``x[:, 0]`` reads). Prompts change the sequence
length: the method cannot merge. ViT backbones only (Swin's windowed attention and ConvNeXt
have no token sequence to extend).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import MethodConfig, Wrapper, check, field, register


@dataclasses.dataclass
class VPTConfig(MethodConfig):
    prompts: int = field(10, "m: prompt tokens per layer (VPT searches {1, 5, 10, 50, 100, 200})")
    deep: bool = field(True, "a new set of prompts before every block (VPT-Deep), else before the first only")
    dropout: float = field(0.1, "dropout on the prompts")

    def validate(self) -> None:
        check(self.prompts >= 1, f"prompts must be >= 1, got {self.prompts}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass
class VPTShallowConfig(VPTConfig):
    deep: bool = field(False, "VPT-Shallow: prompts before the first block only")


class PromptedBlock(Wrapper):
    """A ViT block that drops the previous prompts and/or inserts its own around the block."""

    def __init__(self, base_layer: nn.Module, prompts: nn.Parameter | None, prefix: int, strip_before: int,
                 strip_after: int, dropout: float) -> None:
        super().__init__(base_layer)
        self.prompts = prompts
        self.prefix, self.strip_before, self.strip_after = prefix, strip_before, strip_after
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _strip(x: torch.Tensor, prefix: int, count: int) -> torch.Tensor:
        return torch.cat([x[:, :prefix], x[:, prefix + count:]], dim=1) if count else x

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = self._strip(x, self.prefix, self.strip_before)
        if self.prompts is not None:
            # Expand, then drop: one dropout mask per sample (VPT drops the expanded prompts).
            prompts = self.dropout(self.prompts.expand(x.shape[0], -1, -1))
            x = torch.cat([x[:, :self.prefix], prompts, x[:, self.prefix:]], dim=1)
        x = self.base_layer(x, **kwargs)
        return self._strip(x, self.prefix, self.strip_after)


def _apply(model: nn.Module, config: VPTConfig) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed")):
        arch = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise ConfigError(f"vpt needs a ViT backbone (a token sequence with a class token); {arch!r} is not one; "
                          "valid choices: vit_b, vit_l, vit_h, vit_test, demo or another timm ViT")
    dim, m, depth = model.embed_dim, config.prompts, len(model.blocks)
    patch = model.patch_embed.patch_size
    bound = math.sqrt(6.0 / float(3 * patch[0] * patch[1] + dim))  # VPT's uniform init
    for i in range(depth):
        inserts = config.deep or i == 0
        prompts = nn.Parameter(torch.empty(m, dim).uniform_(-bound, bound)) if inserts else None
        strip_before = m if (config.deep and i > 0) else 0
        strip_after = m if i == depth - 1 else 0
        if prompts is None and not strip_after:
            continue
        model.blocks[i] = PromptedBlock(model.blocks[i], prompts, model.num_prefix_tokens, strip_before, strip_after,
                                        config.dropout)


register("vpt", VPTConfig, mergeable=False, paper_params="m·d·L", description="VPT-Deep: prompts before every block")(_apply)
register("vpt_shallow", VPTShallowConfig, mergeable=False, paper_params="m·d",
         description="VPT-Shallow: prompts before the first block")(_apply)
