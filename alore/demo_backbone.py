"""The demo backbone's weights: the small ``demo`` ViT pre-trained on held-out digits.

The demo should show adaptation of real pre-trained features, not of random
ones, without a download. So ``alorectl data demo`` pre-trains the ``demo``
architecture briefly on the digits that :func:`alore.data.demo_pretrain_arrays`
holds out from every downstream split, and writes ``demo.safetensors``; the
demo and the tests then load it through the same local-weights path users use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .backbones import create_backbone, data_config
from .data import demo_pretrain_arrays
from .files import atomic_path

WEIGHTS_NAME = "demo.safetensors"


def pretrain_demo_backbone(epochs: int = 30, batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    images, labels = demo_pretrain_arrays()
    x_all = torch.from_numpy(images).float().div_(255.0)
    y_all = torch.from_numpy(labels).long()
    model = create_backbone("demo", int(y_all.max()) + 1)
    cfg = data_config(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x_all = (x_all - mean) / std
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(y_all) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_all), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def write_demo_weights(out: str | os.PathLike) -> Path:
    """Write ``out/demo.safetensors`` unless it is already there."""
    path = Path(out) / WEIGHTS_NAME
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = pretrain_demo_backbone()
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"backbone": "demo", "pretrained_on": "held-out sklearn digits"})
    return path
