"""Load an export folder (``alorectl export``) from anywhere: ``alore.load_export(path)``.

An export holds ``card.json``, ``adapter.safetensors`` and, for a method that
merges, ``model.safetensors`` (plain timm weights). A merged export loads as
plain timm (the card's ``load`` line does the same without alore); one that
cannot merge (VPT, Adapter, AdaptFormer) is rebuilt: backbone weights, the
method with the options stored in the adapter file, then the adapter.

An export may come from someone else: before anything is built, every file is checked against what the
card and the adapter claim (:mod:`alore.verify`: no links, bounded sizes, the tensors the claims imply, the
sha256 the card records), so a received folder cannot make this allocate unbounded memory or load a foreign
file. The timm model is built from the backbone the adapter names, never from the card's free text.

Either way the model's ``pretrained_cfg`` carries the preprocessing the model
was trained and scored with, so
``timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))``
is its evaluation transform.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .errors import WeightsError

CARD, MERGED, ADAPTER = "card.json", "model.safetensors", "adapter.safetensors"


def backbone_weights_arg(recorded: Any) -> str | None:
    """``create_backbone``'s ``weights`` for what a run recorded: None (random), "timm" (timm's pretrained
    checkpoint, recorded as ``timm:<tag>``) or a file."""
    if recorded in (None, "random"):
        return None
    return "timm" if str(recorded).startswith("timm") else str(recorded)


def load_export(path: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                device: str = "cpu") -> nn.Module:
    """The exported model in eval mode, from any working directory.

    ``weights``: the backbone's weights for an export that is not merged (default: the file the run
    trained from, as its card records it); a merged export needs none.
    """
    import timm

    from . import verify
    from .backbones import resolve

    folder = Path(path).expanduser().resolve()
    if not verify.exists(folder / CARD):
        raise WeightsError(f"no {CARD} in {folder}; pass a folder written by alorectl export")
    # Every file against what the card and the adapter claim, before anything is built (alore.verify).
    card, meta = verify.export_folder(folder, CARD, ADAPTER, MERGED)
    recorded = card.get("preprocessing")
    preprocessing = {k: v for k, v in (recorded if isinstance(recorded, dict) else {}).items()
                     if k in verify.PREPROCESSING_KEYS}
    if card.get("merged") and verify.exists(folder / MERGED):
        spec = resolve(meta.backbone)
        overlay = {"file": str(folder / MERGED), "num_classes": meta.num_classes, **preprocessing}
        model = timm.create_model(spec.timm_name, pretrained=True, num_classes=meta.num_classes,
                                  pretrained_cfg_overlay=overlay, **dict(spec.kwargs))
    else:
        from .analysis.load import AdapterInfo, load_model

        info = AdapterInfo.of(meta)
        given = weights if weights is not None else backbone_weights_arg(card.get("backbone_weights"))
        if given not in (None, "timm", "hub") and not Path(given).is_file():
            raise WeightsError(f"the backbone weights of this export are not at {given}; "
                               "pass them: alore.load_export(path, weights=FILE)")
        model = load_model(info, given, device)
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **preprocessing}
    return model.to(device).eval()
