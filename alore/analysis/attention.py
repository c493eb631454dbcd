"""Attention maps per expert (paper figures 4 and 7).

Which attention: the **last block's [CLS] → patch attention, averaged over
heads**, ``mean_h softmax(q_h k_h^T / sqrt(d_h))[CLS, patches]``. The
classification head reads only the [CLS] token after the last block, so this
row of the last attention matrix is where the image regions the prediction
draws on are gathered; averaging the heads gives one map per image, as the
paper's figures show. (Attention rollout through all blocks would mix in the
frozen early blocks and blur the differences between experts.)

How: a forward hook on the block's ``attn.qkv`` — timm's stable submodule name,
which ALoRE wraps when it sits before MHSA, so the hook sees q and k with the
adapter applied — recomputes ``softmax(q k^T)`` from that output with the
module's own ``q_norm``/``k_norm`` and scale. timm's block is not forked, and
its fused attention kernel may stay on (it never materializes the matrix).

Columns: the image, ``Single-1 … Single-n`` (one expert kept, the others'
``W_s_i`` zeroed, :func:`alore.methods.alore.use_experts`) and ``Increment-n``
(all experts: the trained model). Each map is min-max scaled on its own, so a
panel shows where that expert looks, not how sharply.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from ..data.decoded import DecodedSplit, StreamedSplit
from ..errors import ConfigError
from ..methods.alore import use_experts
from ..placement import blocks
from .experts import num_experts

MIN_CELL_PX = 128  # small demo images are scaled up by a whole factor to at least this
HEADER_PX = 18     # the band above the grid with the column names
ALPHA = 0.55       # heat map opacity over the image


@dataclasses.dataclass
class AttentionGrid:
    """``maps[r, c]`` is the map of image ``r`` under ``columns[c + 1]`` (column 0 is the image itself)."""

    images: torch.Tensor   # uint8 (R, 3, S, S), what the model saw, before normalization
    labels: list[int]
    columns: list[str]
    maps: torch.Tensor     # float (R, len(columns) - 1, grid_h, grid_w), each row of a head-mean sums to <= 1

    @property
    def cell_px(self) -> int:
        size = int(self.images.shape[-1])
        return size * max(1, math.ceil(MIN_CELL_PX / size))

    def pixel_size(self) -> tuple[int, int]:
        """(width, height) of :func:`draw_grid`'s PNG."""
        return len(self.columns) * self.cell_px, HEADER_PX + len(self.labels) * self.cell_px


def _last_attention(model: nn.Module) -> nn.Module:
    found = [b.module for b in blocks(model) if b.family == "transformer"]
    if not found or getattr(model, "cls_token", None) is None or not hasattr(model, "patch_embed"):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise ConfigError(f"attention maps need a ViT with a [CLS] token; backbone {arch!r} has none")
    return found[-1].attn


@torch.no_grad()
def cls_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last-block [CLS] → patch attention averaged over heads: float ``(B, grid_h, grid_w)``."""
    attn = _last_attention(model)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, qkv: torch.Tensor) -> None:
        b, n, _ = qkv.shape
        heads = attn.num_heads
        q, k, _v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q).float(), attn.k_norm(k).float()
        weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # only the [CLS] row: (B, H, 1, N)
        captured.append(weights[:, :, 0].mean(1))                                # (B, N)

    handle = attn.qkv.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        handle.remove()
        model.train(was_training)
    gh, gw = model.patch_embed.grid_size
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return captured[-1][:, prefix:].reshape(-1, gh, gw)


def pick_images(split: DecodedSplit | StreamedSplit, count: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``count`` test images, one per class in turn (file order within a class): (x normalized, uint8, labels)."""
    if count < 1:
        raise ConfigError(f"--images must be >= 1, got {count}")
    labels = split.labels.cpu().tolist()
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    order = []
    for rank in range(max(map(len, by_class.values()), default=0)):
        order += [members[rank] for _, members in sorted(by_class.items()) if rank < len(members)]
    chosen = order[:count]
    if isinstance(split, StreamedSplit):
        held = DecodedSplit.decode([split.items[i] for i in chosen], split.preprocess).to(split.device)
    else:
        idx = torch.tensor(chosen, device=split.device)
        held = DecodedSplit(split.images[idx], split.labels[idx], split.preprocess)
    x, y = next(held.batches(len(held)))
    pre = held.preprocess
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    shown = (x * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
    return x, shown, y.cpu().tolist()


def expert_attention(model: nn.Module, split: DecodedSplit | StreamedSplit, images: int) -> AttentionGrid:
    """The figure's data: for ``images`` test images, the map under each single expert and under all."""
    n = num_experts(model)
    x, shown, labels = pick_images(split, images)
    columns = ["image"] + [f"Single-{i + 1}" for i in range(n)] + [f"Increment-{n}"]
    maps = []
    for kept in [[i] for i in range(n)] + [list(range(n))]:
        with use_experts(model, kept):
            maps.append(cls_attention(model, x).cpu())
    return AttentionGrid(shown, labels, columns, torch.stack(maps, dim=1))


def _heat(values: torch.Tensor, size: int) -> np.ndarray:
    """A (h, w) map as an RGB uint8 (size, size) heat map, scaled to its own [min, max]."""
    from matplotlib import colormaps  # only the colour table; no pyplot, no display

    up = F.interpolate(values[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    unit = ((up - lo) / (hi - lo)).numpy() if hi > lo else np.zeros((size, size), dtype=np.float32)
    return (colormaps["jet"](unit)[..., :3] * 255).astype(np.uint8)


def draw_grid(grid: AttentionGrid, path: str | os.PathLike) -> tuple[int, int]:
    """Write the grid as a PNG (rows: images; columns: the image, then one heat-map overlay per column name)."""
    cell = grid.cell_px
    width, height = grid.pixel_size()
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(grid.columns):
        draw.text((c * cell + 4, 3), name, fill="black")
    for r in range(len(grid.labels)):
        image = Image.fromarray(grid.images[r].permute(1, 2, 0).numpy()).resize((cell, cell), Image.Resampling.NEAREST)
        top = HEADER_PX + r * cell
        canvas.paste(image, (0, top))
        draw.text((3, top + 2), f"y={grid.labels[r]}", fill="yellow")
        base = np.asarray(image, dtype=np.float32)
        for c in range(grid.maps.shape[1]):
            blended = (1 - ALPHA) * base + ALPHA * _heat(grid.maps[r, c], cell).astype(np.float32)
            canvas.paste(Image.fromarray(blended.round().astype(np.uint8)), ((c + 1) * cell, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)
    return width, height
