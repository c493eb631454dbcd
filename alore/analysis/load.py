"""Rebuild a finished run's model from its files, and decode the split an analysis looks at.

A run folder (see :mod:`alore.artifacts`) holds ``adapter.safetensors`` whose
metadata names the backbone, the method with its full configuration, the task
and the class count. With the backbone's pre-trained weights that is enough to
rebuild the adapted, *unmerged* model: the expert analysis needs ALoRE's
experts as separate modules, which ``merged.safetensors`` has folded away.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import apply, load_adapter
from ..backbones import create_backbone, data_config
from ..data import Preprocess, load_split, read_protocol, task_info
from ..data.decoded import DecodedSplit, StreamedSplit
from ..data.splits import require_root
from .. import verify
from ..errors import ConfigError, WeightsError

ADAPTER = "adapter.safetensors"
ALORE_METHODS = ("alore", "alore_attn")


@dataclasses.dataclass(frozen=True)
class AdapterInfo(verify.AdapterMeta):
    """What ``adapter.safetensors`` says about the run that wrote it, checked against its tensors
    (:class:`alore.verify.AdapterMeta`: backbone, method, its options, task, classes)."""

    @classmethod
    def of(cls, meta: verify.AdapterMeta) -> AdapterInfo:
        return cls(meta.path, meta.backbone, meta.method, meta.config, meta.task, meta.num_classes)

    @property
    def method_config(self) -> dict[str, Any]:
        """The method's options (``alore.apply(model, method, **method_config)``)."""
        return self.config

    @property
    def has_experts(self) -> bool:
        return self.method in ALORE_METHODS


def read_adapter_info(folder: str | os.PathLike) -> AdapterInfo:
    """The metadata of ``folder/adapter.safetensors``, checked against its tensors (:func:`alore.verify.adapter`:
    no link, bounded sizes, exactly the tensors its backbone, method and options imply); a WeightsError when
    it is missing, not alore's, or not what it claims."""
    path = Path(folder) / ADAPTER
    if not os.path.lexists(path):
        raise WeightsError(f"no {ADAPTER} in {folder}; pass a run folder, a sweep cell folder or an export folder")
    meta = verify.adapter(path)
    return AdapterInfo.of(meta)


def load_model(info: AdapterInfo, weights: str | os.PathLike | None, device: torch.device | str = "cpu") -> nn.Module:
    """The adapted model of ``info`` on ``device`` in eval mode: backbone weights + method + adapter."""
    model = create_backbone(info.backbone, info.num_classes, weights)
    apply(model, info.method, **info.method_config)
    load_adapter(model, info.path)
    return model.to(device).eval()


def load_eval_split(model: nn.Module, data_root: str | os.PathLike, suite: str, task: str, num_classes: int,
                    device: torch.device | str = "cpu", protocol: str = "final") -> DecodedSplit | StreamedSplit:
    """The split ``protocol`` scores (final: test), preprocessed for ``model``; only that split is decoded."""
    root = require_root(Path(data_root))
    info = task_info(suite, task, root)
    if info.num_classes != num_classes:
        raise ConfigError(f"task {task!r} under {root} has {info.num_classes} classes but the adapter's head has "
                          f"{num_classes}; is --data-root the one the run used?")
    _, items = read_protocol(root, suite, task, protocol, num_classes=info.num_classes)
    dc = data_config(model)
    return load_split(items, Preprocess.for_suite(suite, dc["image_size"], dc["mean"], dc["std"])).to(device)


def subset(split: DecodedSplit | StreamedSplit, limit: int | None) -> DecodedSplit | StreamedSplit:
    """At most ``limit`` images, spread evenly over the split (t-SNE and silhouette are quadratic)."""
    if limit is None or len(split) <= limit:
        return split
    if isinstance(split, StreamedSplit):
        step = len(split) / limit
        return dataclasses.replace(split, items=[split.items[int(i * step)] for i in range(limit)])
    idx = torch.linspace(0, len(split) - 1, limit, device=split.device).round().long()
    return dataclasses.replace(split, images=split.images[idx], labels=split.labels[idx])
