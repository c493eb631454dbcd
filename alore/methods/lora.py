"""LoRA (Hu et al.): a parallel low-rank update ``W + (alpha/r)·B A`` of chosen projections.

Reference: microsoft/LoRA ``loralib/layers.py`` (``MergedLinear.forward`` with
``enable_lora=[True, False, True]`` on the fused qkv)::

    qkv(x) = x W^T + b + (alpha / r) · pad_qv(dropout(x) A^T B^T)        A ∈ R^{r×d} kaiming, B = 0

Transformers: q and v of the fused ``attn.qkv`` (paper table 2 setting, r=8),
``2·w·d·r·L`` parameters (table 10, w=2). ConvNeXt has no attention: ``mlp.fc1``
and ``mlp.fc2`` instead.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..errors import UnknownChoiceError
from ..placement import blocks
from .base import MethodConfig, Wrapper, check, field, register, replace

# target name -> (submodule of a block, which third of its output: None = all of it)
TARGETS: dict[str, tuple[str, int | None]] = {
    "q": ("attn.qkv", 0), "k": ("attn.qkv", 1), "v": ("attn.qkv", 2),
    "proj": ("attn.proj", None), "fc1": ("mlp.fc1", None), "fc2": ("mlp.fc2", None),
}


@dataclasses.dataclass
class LoRAConfig(MethodConfig):
    rank: int = field(8, "r: rank of each update (paper table 2: 8)")
    alpha: float = field(8.0, "the update is scaled by alpha / rank")
    targets: list[str] | None = field(None, "any of q, k, v, proj, fc1, fc2; default q,v (ConvNeXt: fc1,fc2)")
    dropout: float = field(0.1, "dropout on the update's input; grid {0.1, 0}")

    def validate(self) -> None:
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        for t in self.targets or ():
            if t not in TARGETS:
                raise UnknownChoiceError("LoRA target", t, TARGETS)


class LoRALinear(Wrapper):
    """A Linear with low-rank updates on slices of its output rows."""

    def __init__(self, base_layer: nn.Linear, slices: list[tuple[int, int]], rank: int, alpha: float,
                 dropout: float) -> None:
        super().__init__(base_layer)
        self.slices = slices
        self.scaling = alpha / rank
        kw = dict(device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(rank, base_layer.in_features, **kw)) for _ in slices)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(e - s, rank, **kw)) for s, e in slices)
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        xd = self.dropout(x)
        updates = {s: (e, (xd @ a.T @ b.T) * self.scaling) for (s, e), a, b in zip(self.slices, self.lora_A, self.lora_B)}
        pieces, pos = [], 0
        for s in sorted(updates):  # out-of-place: the frozen output may be a leaf without grad
            e, delta = updates[s]
            pieces += [out[..., pos:s], out[..., s:e] + delta]
            pos = e
        pieces.append(out[..., pos:])
        return torch.cat(pieces, dim=-1)

    def merged(self) -> nn.Linear:
        base = self.base_layer
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            weight = base.weight.detach().clone()
            for (s, e), a, b in zip(self.slices, self.lora_A, self.lora_B):
                weight[s:e] += (b @ a) * self.scaling
            out.weight.copy_(weight)
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


@register("lora", LoRAConfig, mergeable=True, paper_params="2·w·d·r·L",
          description="LoRA: low-rank updates of q and v, r=8")
def apply(model: nn.Module, config: LoRAConfig) -> None:
    found = blocks(model)
    targets = config.targets or (["fc1", "fc2"] if found[0].family == "convnext" else ["q", "v"])
    for block in found:
        per_module: dict[str, list[int | None]] = {}
        for t in targets:
            sub, third = TARGETS[t]
            if not block.has(sub):
                valid = [name for name, (s, _) in TARGETS.items() if block.has(s)]
                raise UnknownChoiceError(f"LoRA target for {block.family} blocks", t, valid)
            per_module.setdefault(sub, []).append(third)
        for sub, thirds in per_module.items():
            def wrap(linear: nn.Module, thirds: list[int | None] = thirds) -> nn.Module:
                size = linear.out_features // 3
                slices = [(0, linear.out_features) if k is None else (k * size, (k + 1) * size) for k in thirds]
                return LoRALinear(linear, slices, config.rank, config.alpha, config.dropout)
            replace(model, f"{block.path}.{sub}", wrap)
