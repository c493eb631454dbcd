"""alore: ALoRE and baseline PETL methods on timm backbones, merged exactly into plain timm weights.

    model = alore.create_backbone("vit_b", num_classes=100, weights="vit_b.npz")
    alore.apply(model, "alore")              # or "lora", "ssf", ... ; overrides: rank=8, experts=4
    alore.count_trainable(model)             # the paper's Params(M), head excluded
    plain = alore.merge(model)               # a plain timm ViT with the adapter folded in
    model = alore.load_export("best/")       # a folder written by `alorectl export`, from anywhere

The names above are imported on first use (PEP 562): ``import alore.errors`` or ``alore.files`` (what the
platform's quick commands, ``alorectl sweep status`` and ``leaderboard``, need) does not import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {"apply": ".api", "count_trainable": ".api", "merge": ".api", "mergeable_methods": ".api",
            "BACKBONES": ".backbones", "create_backbone": ".backbones", "AloreError": ".errors",
            "load_export": ".export", "METHODS": ".methods", "state": ".state"}

__all__ = ["BACKBONES", "METHODS", "AloreError", "apply", "count_trainable", "create_backbone", "load_export",
           "merge", "mergeable_methods"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from . import state
    from .api import apply, count_trainable, merge, mergeable_methods
    from .backbones import BACKBONES, create_backbone
    from .errors import AloreError
    from .export import load_export
    from .methods import METHODS


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # a submodule, as eager imports made them attributes (``alore.backbones.resolve``)
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'alore' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = importlib.import_module(module, __name__)
    value = value if name == "state" else getattr(value, name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
