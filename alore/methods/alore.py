"""ALoRE: aggregated low-rank experts in a Kronecker-product space (paper section 3.2).

Notation (eq. 6-8): ``n`` experts; expert ``i`` has a scale matrix
``W_s_i`` (n x n), shared by expert ``i`` of every ALoRE module in the model, and
low-rank factors ``W_d_i`` (d/n x r), ``W_u_i`` (r x d/n)::

    ALoRE(X) = X + dropout(X · Σ_i W_s_i ⊗ (W_d_i W_u_i))          (eq. 7)

The d x d Kronecker product is never built in the forward pass: X is cut into n
blocks of d/n features, each block goes through the experts' low-rank factors,
and W_s_i mixes the blocks. It is built once, in :meth:`ALoReModule.as_affine`,
to fold ``I + Σ_i W_s_i ⊗ (W_d_i W_u_i)`` into the next Linear (eq. 8).

Parameters (appendix C, table 10): ``2·d·r`` per module (independent of n) plus
``n³`` for the shared scales — ViT-B/16, before MHSA and FFN: 147,520 (0.15M).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError, UnknownChoiceError
from .. import state as alore_state
from ..placement import LOCATIONS, location_targets
from .base import AffineAround, MethodConfig, check, field, register, replace


@dataclasses.dataclass
class ALoReConfig(MethodConfig):
    rank: int = field(4, "r: rank of each expert's W_d W_u (paper table 6a)")
    experts: int = field(4, "n: number of experts, also the size of each shared W_s (table 6b)")
    locations: list[str] | None = field(
        None, f"where modules go, any of {', '.join(LOCATIONS)} (table 6c); default before MHSA and FFN")
    layers: int | None = field(None, "insert into the first k blocks only (table 6d); default all")
    dropout: float = field(0.1, "dropout before the residual add (appendix B.2); grid {0.1, 0}")

    def validate(self) -> None:
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(self.experts >= 1, f"experts must be >= 1, got {self.experts}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass
class ALoReAttnConfig(ALoReConfig):
    locations: list[str] | None = field(["before_attn"], "ALoRE_attn: before MHSA only (table 2)")


class SharedScales(nn.Module):
    """The ``W_s_i`` matrices, one (n x n) per expert, shared across all ALoRE modules."""

    def __init__(self, experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, experts, experts))
        for i in range(experts):
            nn.init.xavier_uniform_(self.weight.data[i])
        # Which experts take part; changed only for the expert analysis (table 22).
        self.register_buffer("active", torch.ones(experts), persistent=False)

    def masked(self) -> torch.Tensor:
        return self.weight * self.active.to(self.weight.dtype)[:, None, None]


class ALoReModule(nn.Module):
    """One ALoRE module acting on features of size ``dim``."""

    def __init__(self, dim: int, rank: int, scales: SharedScales, dropout: float) -> None:
        super().__init__()
        n = scales.weight.shape[0]
        if dim % n:
            raise_dim(dim, n)
        self.dim, self.n, self.rank = dim, n, rank
        block = dim // n
        self.down = nn.Parameter(torch.empty(n, block, rank))  # W_d_i
        self.up = nn.Parameter(torch.zeros(n, rank, block))  # W_u_i = 0: the module starts as the identity
        for i in range(n):
            nn.init.kaiming_uniform_(self.down.data[i].T, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        # Not a submodule: the scales belong to the model once, and are counted once.
        object.__setattr__(self, "scales", scales)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``X · Σ_i W_s_i ⊗ (W_d_i W_u_i)`` without building the Kronecker product."""
        blocks = x.reshape(*x.shape[:-1], self.n, self.dim // self.n)            # [..., k, p]
        h = torch.einsum("...kp,ipr->...ikr", blocks, self.down)                  # each block, each expert
        h = torch.einsum("...ikr,ikj->...ijr", h, self.scales.masked())           # W_s_i mixes blocks k -> j
        out = torch.einsum("...ijr,irq->...jq", h, self.up)                       # sum over experts and rank
        return out.reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.delta(x))

    def kron_delta(self) -> torch.Tensor:
        """``Σ_i W_s_i ⊗ (W_d_i W_u_i)`` as a (d x d) matrix."""
        scales = self.scales.masked()
        return sum(torch.kron(scales[i], self.down[i] @ self.up[i]) for i in range(self.n))

    def as_affine(self) -> tuple[torch.Tensor, None]:
        eye = torch.eye(self.dim, dtype=self.down.dtype, device=self.down.device)
        return (eye + self.kron_delta()).detach(), None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, experts={self.n}, rank={self.rank}"


def raise_dim(dim: int, n: int) -> None:
    divisors = [k for k in range(1, min(dim, 64) + 1) if dim % k == 0]
    raise ConfigError(f"experts={n} does not divide the feature size d={dim}; "
                      f"valid choices: {', '.join(map(str, divisors))}")


def _apply(model: nn.Module, config: ALoReConfig) -> None:
    targets = location_targets(model, config.locations, config.layers)
    scales = SharedScales(config.experts)
    model.alore_experts = scales  # a submodule: W_s trains and is saved with the adapter
    alore_state.attach(model, owned=("alore_experts",))
    for path, position, _ in targets:
        def wrap(linear: nn.Module, position: str = position) -> nn.Module:
            dim = linear.in_features if position == "pre" else linear.out_features
            return AffineAround(linear, ALoReModule(dim, config.rank, scales, config.dropout), position)
        replace(model, path, wrap)


register("alore", ALoReConfig, mergeable=True, paper_params="4·d·r·L + n³",
         description="ALoRE: Kronecker-aggregated low-rank experts before MHSA and FFN")(_apply)
register("alore_attn", ALoReAttnConfig, mergeable=True, paper_params="2·d·r·L + n³",
         description="ALoRE_attn: ALoRE before MHSA only")(_apply)


# ---- expert analysis (paper table 22) ---------------------------------------------------------

def expert_subsets(n: int) -> dict[str, list[int]]:
    """Single-i (expert i only), Increment-i (experts 1..i), Sliced-i (all but i); 1-based like the paper."""
    subsets: dict[str, list[int]] = {}
    for i in range(1, n + 1):
        subsets[f"Single-{i}"] = [i - 1]
    for i in range(1, n + 1):
        subsets[f"Increment-{i}"] = list(range(i))
    for i in range(1, n + 1):
        subsets[f"Sliced-{i}"] = [k for k in range(n) if k != i - 1]
    return subsets


@contextlib.contextmanager
def use_experts(model: nn.Module, experts: Sequence[int]) -> Iterator[None]:
    """Evaluate ``model`` keeping only the given (0-based) experts."""
    scales = getattr(model, "alore_experts", None)
    if not isinstance(scales, SharedScales):
        raise ConfigError("the expert analysis needs a model adapted with alore or alore_attn")
    n = scales.weight.shape[0]
    bad = [e for e in experts if not 0 <= e < n]
    if bad:
        raise UnknownChoiceError("expert index", bad[0], [str(k) for k in range(n)])
    saved = scales.active.clone()
    scales.active.zero_()
    scales.active[list(experts)] = 1.0
    try:
        yield
    finally:
        scales.active.copy_(saved)
