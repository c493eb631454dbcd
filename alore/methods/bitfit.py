"""BitFit (Zaken et al.): train the backbone's bias terms only. Already plain: merging is a copy."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..backbones import is_head_param
from .base import MethodConfig, register


@dataclasses.dataclass
class BitFitConfig(MethodConfig):
    pass


@register("bitfit", BitFitConfig, mergeable=True, paper_params="biases",
          description="BitFit: bias terms only")
def apply(model: nn.Module, config: BitFitConfig) -> None:
    for name, p in model.named_parameters():
        if name.endswith("bias") and not is_head_param(model, name):
            p.requires_grad_(True)
