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
from .backbones import create_backbone, data_config, resolve
from .device import autocast_for
from .errors import ConfigError
from .methods import get_method


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_args(backbone: str, methods: list[str], batch_size: int, steps: int) -> None:
    """Every name and size checked before a model is built or a line printed (one ConfigError line)."""
    resolve(backbone)
    if not methods:
        raise ConfigError("no methods to measure; pass --methods alore,lora,...")
    for name in methods:
        get_method(name)
    for flag, value in (("--batch-size", batch_size), ("--steps", steps)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")


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
    check_args(backbone, methods, batch_size, steps)
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


def train_rows(backbone: str, methods: list[str], batch_size: int, steps: int, device: torch.device,
               on_row: Callable[[dict], None] | None = None, baseline: str = "lora") -> list[dict]:
    """Per method: images/s and peak memory of a training step (AdamW, bf16 autocast on CUDA), and
    the share of an epoch spent producing batches from decoded images; ratios to ``baseline``."""
    from .data import DecodedSplit, Preprocess

    check_args(backbone, methods, batch_size, steps)
    rows = []
    autocast = autocast_for(device)
    for name in methods:
        model = apply(create_backbone(backbone, 100), name).to(device)
        cfg = data_config(model)
        size = cfg["image_size"]
        # Decoded uint8 images on the device, as the training loop holds them after the first pass.
        n = batch_size * (steps + 2)
        split = DecodedSplit(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device),
                             torch.randint(0, 100, (n,), device=device), Preprocess(size, cfg["mean"], cfg["std"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loading = compute = 0.0
        batches = split.batches(batch_size, shuffle=True)
        for i in range(steps + 2):  # two warm-up steps
            t0 = time.perf_counter()
            x, y = next(batches)
            _sync(device)
            t1 = time.perf_counter()
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            if i >= 2:
                loading += t1 - t0
                compute += time.perf_counter() - t1
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rows.append({"method": name, "images_per_s": batch_size * steps / (loading + compute),
                     "step_ms": 1000 * compute / steps, "peak_mib": peak,
                     "loading_share": loading / (loading + compute), "params": count_trainable(model)})
        if on_row:
            on_row(rows[-1])
        del model, opt, split
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = next((r for r in rows if r["method"] == baseline), rows[0])
    for r in rows:
        r["step_ratio"] = r["step_ms"] / ref["step_ms"]
        r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"] if r["peak_mib"] else None
        r["baseline"] = ref["method"]
    return rows

