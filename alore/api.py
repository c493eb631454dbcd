"""The library's front door: create a backbone, apply a method, count, merge."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safetensors.torch import save_file

from .backbones import build, create_backbone, is_head_param, resolve
from .errors import ConfigError, NotMergeableError, WeightsError
from .files import atomic_path
from .methods import METHODS, get_method
from .methods.base import unwrap_all
from . import state as alore_state


def apply(model: nn.Module, method: str, **overrides: Any) -> nn.Module:
    """Freeze the backbone, insert ``method`` (paper defaults, changed by ``overrides``), keep the head trainable."""
    spec = get_method(method)
    if alore_state.of(model).method:
        raise ConfigError(f"this model is already adapted with {alore_state.of(model).method!r}; "
                          "create a fresh backbone to apply another method")
    config = spec.config_cls.from_overrides(overrides)
    ref = next(model.parameters())
    model.requires_grad_(False)
    spec.apply(model, config)
    model.to(device=ref.device, dtype=ref.dtype)  # methods build their parameters in the default dtype
    for name, p in model.named_parameters():
        if is_head_param(model, name):
            p.requires_grad_(True)
    alore_state.attach(model, method=method, config=config.to_dict())
    return model


def count_trainable(model: nn.Module) -> int:
    """Trainable parameters as the paper counts them (appendix C): the classifier is not counted."""
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and not is_head_param(model, name))


def mergeable_methods() -> list[str]:
    return [name for name, m in METHODS.items() if m.mergeable]


def merge(model: nn.Module) -> nn.Module:
    """Fold the method into the backbone and return the plain timm model (equation 8).

    The result is a fresh ``timm.create_model`` of the same architecture that loaded
    the folded state dict with ``strict=True``: same keys as the backbone, same outputs
    as the adapted model in eval mode, and the backbone's inference cost.
    """
    state = alore_state.of(model)
    backbone = state.backbone
    if state.method is None or backbone is None:
        raise ConfigError("merge needs a model made by alore.create_backbone and adapted by alore.apply")
    if not get_method(state.method).mergeable:
        raise NotMergeableError(f"method {state.method!r} adds computation that cannot be folded into the backbone; "
                                f"mergeable methods: {', '.join(mergeable_methods())}")
    folded = copy.deepcopy(model)
    unwrap_all(folded)
    for attr in state.owned:
        delattr(folded, attr)
    ref = next(model.parameters())
    spec = resolve(backbone.name)
    with torch.device(ref.device):
        plain = build(spec, backbone.num_classes).to(ref.dtype)
    plain.load_state_dict(folded.state_dict(), strict=True)
    alore_state.attach(plain, backbone=backbone)
    plain.train(model.training)
    return plain


@torch.no_grad()
def merge_error(adapted: nn.Module, plain: nn.Module, inputs: torch.Tensor) -> float:
    """Relative error ``|plain(x) - adapted(x)| / |adapted(x)|`` in eval mode."""
    modes = adapted.training, plain.training
    adapted.eval(), plain.eval()
    try:
        ref, out = adapted(inputs), plain(inputs)
    finally:
        adapted.train(modes[0]), plain.train(modes[1])
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the method added or trained: its parameters and buffers, the head, and trained backbone tensors."""
    keys = adapter_keys(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in keys}


def adapter_keys(model: nn.Module) -> set[str]:
    """The state-dict keys :func:`adapter_state_dict` keeps (works on the meta device too)."""
    backbone = alore_state.of(model).backbone
    plain = set(create_backbone(backbone.name, backbone.num_classes, device="meta").state_dict())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k for k in model.state_dict() if k in trainable or k.replace(".base_layer", "") not in plain}


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write safetensors atomically, with JSON-encoded metadata values."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``adapter.safetensors`` into a model adapted with the same method and options (the file is read
    without following a link, its sizes checked before anything is allocated: :mod:`alore.verify`)."""
    from .verify import load as load_checked

    state = load_checked(path)
    own = model.state_dict()
    missing = [k for k in state if k not in own]
    if missing:
        raise WeightsError(f"adapter file {path} does not fit this model: unexpected {', '.join(missing[:3])}")
    model.load_state_dict(state, strict=False)
    return model
