"""alore: ALoRE and baseline PETL methods on timm backbones, merged exactly into plain timm weights.

    model = alore.create_backbone("vit_b", num_classes=100, weights="vit_b.npz")
    alore.apply(model, "alore")              # or "lora", "ssf", ... ; overrides: rank=8, experts=4
    alore.count_trainable(model)             # the paper's Params(M), head excluded
    plain = alore.merge(model)               # a plain timm ViT with the adapter folded in
    model = alore.load_export("best/")       # a folder written by `alorectl export`, from anywhere
"""

from . import state
from .api import apply, count_trainable, merge, mergeable_methods
from .backbones import BACKBONES, create_backbone
from .errors import AloreError
from .export import load_export
from .methods import METHODS

__all__ = ["BACKBONES", "METHODS", "AloreError", "apply", "count_trainable", "create_backbone", "load_export",
           "merge", "mergeable_methods"]
