"""SSF (Lian et al.): scale and shift the features after every operation.

Reference: dongzelian/SSF ``models/vision_transformer.py`` (``ssf_ada``, ``init_ssf_scale_shift``)::

    ssf_ada(y) = y ⊙ γ + β        γ ~ N(1, 0.02), β ~ N(0, 0.02), per channel

after the patch-embedding conv, qkv, proj, fc1, fc2, norm1, norm2 and the final norm. Here every
Linear, LayerNorm and Conv2d of the backbone outside the classifier gets one;
``2·o·d·L`` parameters (table 10). Each folds into the operation it follows.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from timm.layers import LayerNorm2d
from torch import nn

from ..backbones import is_head_param
from .base import MethodConfig, Wrapper, field, register, replace


@dataclasses.dataclass
class SSFConfig(MethodConfig):
    init_std: float = field(0.02, "γ ~ N(1, std), β ~ N(0, std), as the official SSF code")


def _channels(module: nn.Module) -> tuple[int, int]:
    """(number of channels, their dimension in the output)."""
    if isinstance(module, nn.Linear):
        return module.out_features, -1
    if isinstance(module, nn.Conv2d):
        return module.out_channels, 1
    if isinstance(module, LayerNorm2d):
        return module.normalized_shape[0], 1
    return module.normalized_shape[0], -1  # LayerNorm over the last dimension


class SSFWrapper(Wrapper):
    def __init__(self, base_layer: nn.Module, init_std: float) -> None:
        super().__init__(base_layer)
        channels, self.channel_dim = _channels(base_layer)
        ref = next(base_layer.parameters())
        self.scale = nn.Parameter(torch.empty(channels, device=ref.device, dtype=ref.dtype).normal_(1.0, init_std))
        # A bias-free operation (Swin's patch-merging reduction) gets a scale only: a shift would
        # need a bias the plain architecture does not have, and the merge must keep its keys.
        self.shift = (nn.Parameter(torch.empty(channels, device=ref.device, dtype=ref.dtype).normal_(0.0, init_std))
                      if getattr(base_layer, "bias", None) is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        view = (-1,) if self.channel_dim == -1 else (-1,) + (1,) * (y.dim() - 2)
        y = y * self.scale.view(view)
        return y if self.shift is None else y + self.shift.view(view)

    def merged(self) -> nn.Module:
        base = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            base.weight.mul_(self.scale.view((-1,) + (1,) * (base.weight.dim() - 1)))
            if self.shift is not None:
                base.bias.mul_(self.scale).add_(self.shift)
        return base


def _targets(model: nn.Module) -> list[str]:
    kinds = (nn.Linear, nn.Conv2d, nn.LayerNorm)
    return [name for name, m in model.named_modules()
            if isinstance(m, kinds) and not is_head_param(model, name)
            and (not isinstance(m, nn.LayerNorm) or m.elementwise_affine)]


@register("ssf", SSFConfig, mergeable=True, paper_params="2·o·d·L",
          description="SSF: per-channel scale and shift after every operation")
def apply(model: nn.Module, config: SSFConfig) -> None:
    for path in _targets(model):
        replace(model, path, lambda m: SSFWrapper(m, config.init_std))
