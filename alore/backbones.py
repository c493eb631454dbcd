"""Backbones: short names for the paper's checkpoints, timm for everything.

A backbone is a timm model name plus creation arguments. The adapted model
remembers them (``model.alore_backbone``) so that ``merge`` can build a fresh,
plain timm model of exactly the same architecture and load the folded weights
into it with ``strict=True``.

Weights come from one of three places:

* ``None``: random initialisation (tests, parameter counts, benchmarks);
* a timm pretrained tag (``"timm"`` or ``"hub"``): downloaded by timm through
  huggingface_hub where a network exists;
* a local file (``.safetensors``, ``.pth``/``.bin``/``.pt`` loaded with
  ``weights_only=True``, or Google's original ``.npz``) for clusters without
  internet access.

Local files are loaded by this module rather than through
``pretrained_cfg_overlay=dict(file=...)``: timm drops a mismatched head and then
loads with ``strict=False``, which would also accept a file that lacks half the
backbone. Here only the classifier's keys may be missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .errors import UnknownChoiceError, WeightsError


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone with timm."""

    timm_name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    image_size: int | None = None  # when the model cannot tell (CNNs built for small inputs)


BACKBONES: dict[str, BackboneSpec] = {
    # The original Google ImageNet-21K checkpoints VPT and the paper use (no head).
    "vit_b": BackboneSpec("vit_base_patch16_224.orig_in21k", description="ViT-B/16, ImageNet-21K"),
    "vit_l": BackboneSpec("vit_large_patch16_224.orig_in21k", description="ViT-L/16, ImageNet-21K"),
    "vit_h": BackboneSpec("vit_huge_patch14_224.orig_in21k", description="ViT-H/14, ImageNet-21K"),
    "swin_b": BackboneSpec("swin_base_patch4_window7_224.ms_in22k", description="Swin-B, ImageNet-22K"),
    "convnext_b": BackboneSpec("convnext_base.fb_in22k", description="ConvNeXt-B, ImageNet-22K"),
    # Small real architectures for CI and the demo (32x32 inputs).
    "vit_test": BackboneSpec(
        "test_vit", dict(img_size=32, patch_size=8), description="timm test_vit, 32x32 input"
    ),
    "swin_test": BackboneSpec(
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
        description="two-stage Swin, 32x32 input",
    ),
    "convnext_test": BackboneSpec("test_convnext", description="timm test_convnext", image_size=32),
    "demo": BackboneSpec(
        "vit_small_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4),
        description="4-layer ViT on 32x32 images, pre-trained by `alorectl data demo`",
    ),
}

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


def resolve(name: str) -> BackboneSpec:
    """Map a short name, or any timm model name, to a :class:`BackboneSpec`."""
    if name in BACKBONES:
        return BACKBONES[name]
    if timm.is_model(name.split(".")[0]):
        return BackboneSpec(name)
    raise UnknownChoiceError("backbone", name, BACKBONES, hint="(or any timm model name)")


def build(spec: BackboneSpec, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The plain timm model of ``spec`` (no alore bookkeeping, no local weights)."""
    return timm.create_model(spec.timm_name, pretrained=pretrained, num_classes=num_classes, **spec.kwargs)


def create_backbone(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Create a timm backbone with a fresh ``num_classes`` head.

    ``weights`` is None, ``"timm"``/``"hub"`` (timm's pretrained weights for the
    tag), or a path to a local weights file. Pass ``device="meta"`` to build the
    architecture without allocating memory (parameter counts of ViT-H).
    """
    if num_classes < 0:
        raise WeightsError(f"num_classes must be >= 0, got {num_classes}")
    spec = resolve(name)
    hub = weights in ("timm", "hub")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            model = build(spec, num_classes, pretrained=hub)
        except (OSError, RuntimeError) as err:  # timm/huggingface_hub: no network, no cache
            if not hub:
                raise
            raise WeightsError(
                f"cannot download pretrained weights for {spec.timm_name!r} ({type(err).__name__}); "
                "without network access pass a local file: --weights PATH.safetensors|.pth|.npz"
            ) from None
    if weights is not None and not hub:
        load_weights(model, weights)
    model.alore_backbone = {"name": name, "timm_name": spec.timm_name, "kwargs": dict(spec.kwargs),
                            "num_classes": num_classes}
    return model


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module paths of the classifier, from timm's ``pretrained_cfg``."""
    classifier = model.pretrained_cfg.get("classifier", "head")
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def is_head_param(model: nn.Module, param_name: str) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in head_prefixes(model))


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling anything (safetensors, ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UnknownChoiceError("weights file type", path.suffix or path.name, WEIGHT_SUFFIXES)
    try:
        # timm's reader: safetensors or torch.load(weights_only=True), unwraps 'state_dict'/'model'.
        return timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:  # any decoding failure is a bad file, not a bug here
        raise WeightsError(f"cannot read weights file {path}: {err.__class__.__name__}: {err}") from None


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weights file; only the classifier's keys may be missing or differ."""
    path = Path(path)
    if path.suffix == ".npz":
        return _load_npz(model, path)
    state = read_weights_file(path)
    own = model.state_dict()
    # A checkpoint's own head (other classes, or 21k classes) is dropped, as timm does.
    state = {k: v for k, v in state.items() if not (is_head_param(model, k) and (k not in own or own[k].shape != v.shape))}
    missing = [k for k in own if k not in state and not is_head_param(model, k)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part for part in (
                f"missing {_few(missing)}" if missing else "",
                f"unexpected {_few(unexpected)}" if unexpected else "",
                f"shape mismatch {_few(wrong)}" if wrong else "",
            ) if part
        )
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise WeightsError(f"weights file {path} does not fit backbone {arch!r}: {detail}")
    model.load_state_dict(state, strict=False)


def _load_npz(model: nn.Module, path: Path) -> None:
    # Google's original ViT .npz checkpoints: timm's converter (custom_load) does the mapping.
    if not hasattr(model, "load_pretrained"):
        raise WeightsError(f"{path}: .npz weights are only supported for ViT backbones")
    try:
        model.load_pretrained(str(path))
    except Exception as err:
        raise WeightsError(f"weights file {path} does not fit this ViT: {err.__class__.__name__}: {err}") from None


def _few(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def data_config(model: nn.Module) -> dict[str, Any]:
    """Input size and normalization the backbone was pre-trained with (timm's ``pretrained_cfg``)."""
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))[-1]
    name = getattr(model, "alore_backbone", {}).get("name")
    if name in BACKBONES and BACKBONES[name].image_size:
        size = BACKBONES[name].image_size
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None):
        size = patch_embed.img_size[-1]  # overridden at creation (small test/demo backbones)
    return {"image_size": int(size), "mean": tuple(cfg.get("mean", (0.5,) * 3)),
            "std": tuple(cfg.get("std", (0.5,) * 3))}
