"""Measurements behind ``alorectl bench``: images/s of the bare, adapted and merged models.

Numbers are only compared within one run (ratios to the bare backbone), on the
same device, batch and input; wall-clock values never appear in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from .api import apply, count_trainable, merge
from .backbones import create_backbone, data_config
from .methods import get_method


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def images_per_second(model: nn.Module, inputs: torch.Tensor, steps: int, warmup: int = 2) -> float:
    model.eval()
    for _ in range(warmup):
        model(inputs)
    _sync(inputs.device)
    start = time.perf_counter()
    for _ in range(steps):
        model(inputs)
    _sync(inputs.device)
    return inputs.shape[0] * steps / (time.perf_counter() - start)


def inference_rows(backbone: str, methods: list[str], batch_size: int, steps: int, device: torch.device,
                   dtype: torch.dtype = torch.float32,
                   on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row for the bare backbone, then per method: unmerged and (where possible) merged."""
    for name in methods:
        get_method(name)
    bare = create_backbone(backbone, 10).to(device=device, dtype=dtype)
    size = data_config(bare)["image_size"]
    inputs = torch.randn(batch_size, 3, size, size, device=device, dtype=dtype)
    base = images_per_second(bare, inputs, steps)
    rows = [{"model": "backbone", "method": "-", "merged": None, "images_per_s": base, "ratio": 1.0, "params": 0}]
    if on_row:
        on_row(rows[-1])
    del bare
    for name in methods:
        model = apply(create_backbone(backbone, 10).to(device=device, dtype=dtype), name)
        variants = [("unmerged", model)]
        if get_method(name).mergeable:
            variants.append(("merged", merge(model)))
        for kind, m in variants:
            ips = images_per_second(m, inputs, steps)
            rows.append({"model": f"{name} ({kind})", "method": name, "merged": kind == "merged",
                         "images_per_s": ips, "ratio": ips / base, "params": count_trainable(model)})
            if on_row:
                on_row(rows[-1])
        del model, variants
    return rows
