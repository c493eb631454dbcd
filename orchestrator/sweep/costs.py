"""Relative cost of one trial per backbone, for ordering cells and for ``sweep --dry-run``.

A trial's time is dominated by forward + backward passes over the same number of
images for every backbone, so the forward FLOPs of one image are a fair relative
cost. timm builds the architecture on the meta device (no weights, no memory)
and torch's ``FlopCounterMode`` counts the matmuls: ViT-H/14 costs ~9.5x ViT-B/16.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

REFERENCE = "vit_b"  # the unit of ``--dry-run`` estimates: one ViT-B/16 trial


@functools.cache
def forward_flops(backbone: str) -> float:
    """Forward FLOPs of one image at the backbone's input size (meta device: nothing allocated)."""
    from alore.backbones import create_backbone, data_config

    model = create_backbone(backbone, num_classes=10, device="meta")
    size = data_config(model)["image_size"]
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    return float(counter.get_total_flops())


def relative_cost(backbone: str) -> float:
    """One trial of ``backbone`` in units of one ViT-B/16 trial."""
    return forward_flops(backbone) / forward_flops(REFERENCE)
