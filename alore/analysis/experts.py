"""The expert analysis of paper table 22: test accuracy with only some of ALoRE's experts kept.

For ``n`` experts the rows are, 1-based as in the paper:

* ``Single-i``: expert ``i`` only,
* ``Increment-i``: experts ``1..i`` (``Increment-n`` is the trained model itself),
* ``Sliced-i``: every expert but ``i``.

An expert is removed by zeroing its shared scale ``W_s_i`` (eq. 7), which removes
its term ``W_s_i ⊗ (W_d_i W_u_i)`` from every ALoRE module of the model at once
(:func:`alore.methods.alore.use_experts`). Nothing is retrained.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
from collections.abc import Callable
from typing import Any

from torch import nn

from .. import state as alore_state
from ..errors import ConfigError
from ..methods.alore import SharedScales, expert_subsets, use_experts
from ..train import evaluate


@dataclasses.dataclass(frozen=True)
class ExpertRow:
    name: str            # "Single-2"
    kind: str            # "Single", "Increment" or "Sliced"
    experts: list[int]   # 1-based, as the paper numbers them
    test_acc: float      # percent

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ExpertTable:
    experts: int          # n
    full_acc: float       # the model with every expert, measured in the same pass
    rows: list[ExpertRow]

    def to_dict(self) -> dict[str, Any]:
        return {"experts": self.experts, "full_acc": self.full_acc, "rows": [r.to_dict() for r in self.rows]}

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["subset", "kind", "experts", "test_acc", "delta_vs_all"])
        for r in self.rows:
            writer.writerow([r.name, r.kind, " ".join(map(str, r.experts)), f"{r.test_acc:.2f}",
                             f"{r.test_acc - self.full_acc:+.2f}"])
        return buf.getvalue()


def num_experts(model: nn.Module) -> int:
    scales = getattr(model, "alore_experts", None)
    if not isinstance(scales, SharedScales):
        name = alore_state.of(model).method or "no method"
        raise ConfigError(f"the expert analysis needs an alore or alore_attn model, got {name!r}")
    return int(scales.weight.shape[0])


def expert_table(model: nn.Module, split: Any, batch_size: int = 256,
                 autocast: Callable[[], Any] | None = None,
                 on_row: Callable[[ExpertRow], None] | None = None) -> ExpertTable:
    """Accuracy on ``split`` for every Single-i, Increment-i and Sliced-i subset of the model's experts."""
    autocast = autocast or contextlib.nullcontext
    n = num_experts(model)
    full = evaluate(model, split, batch_size, autocast)
    rows = []
    for name, kept in expert_subsets(n).items():
        # Evaluated even for Increment-n: it must reproduce ``full``, which checks the masking itself.
        with use_experts(model, kept):
            acc = evaluate(model, split, batch_size, autocast)
        row = ExpertRow(name, name.split("-")[0], [k + 1 for k in kept], acc)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return ExpertTable(n, full, rows)
