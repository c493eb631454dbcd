"""Where methods go: a backbone's blocks and the stable timm submodule names in them.

Blocks are found by shape, not by class, so ViT, Swin (``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) and ConvNeXt (``conv_dw``,
``norm``, ``mlp.fc1``, ``mlp.fc2``) blocks are all handled without forking timm.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .errors import ConfigError, UnknownChoiceError

#: Paper table 6c: the four places an ALoRE/RepAdapter module can sit, as
#: (the Linear it folds into, whether it sits before or after that Linear).
LOCATIONS: dict[str, tuple[str, str]] = {
    "before_attn": ("attn.qkv", "pre"),
    "after_attn": ("attn.proj", "post"),
    "before_ffn": ("mlp.fc1", "pre"),
    "after_ffn": ("mlp.fc2", "post"),
}


@dataclasses.dataclass(frozen=True)
class Block:
    path: str
    module: nn.Module
    family: str  # "transformer" (ViT, Swin) or "convnext"

    def has(self, sub: str) -> bool:
        try:
            self.module.get_submodule(sub)
        except AttributeError:
            return False
        return True


def _family(module: nn.Module) -> str | None:
    mlp = getattr(module, "mlp", None)
    if mlp is None or not hasattr(mlp, "fc1") or not hasattr(mlp, "fc2"):
        return None
    attn = getattr(module, "attn", None)
    if attn is not None and hasattr(attn, "qkv") and hasattr(module, "norm1") and hasattr(module, "norm2"):
        return "transformer"
    if hasattr(module, "conv_dw"):
        return "convnext"
    return None


def blocks(model: nn.Module) -> list[Block]:
    """The model's residual blocks in forward order (``named_modules`` is pre-order)."""
    found = [Block(path, m, fam) for path, m in model.named_modules() if (fam := _family(m))]
    if not found:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise ConfigError(f"backbone {arch!r} has no ViT/Swin/ConvNeXt-style blocks (norm1/attn.qkv/mlp.fc1) "
                          "to place methods in")
    return found


def default_locations(model: nn.Module) -> tuple[str, ...]:
    """Paper default: before MHSA and before FFN; ConvNeXt: before fc1 and after fc2."""
    if blocks(model)[0].family == "convnext":
        return ("before_ffn", "after_ffn")
    return ("before_attn", "before_ffn")


def select_blocks(model: nn.Module, layers: int | None) -> list[Block]:
    """The first ``layers`` blocks (paper table 6d), all when None."""
    found = blocks(model)
    if layers is None:
        return found
    if not 1 <= layers <= len(found):
        raise ConfigError(f"layers={layers} is out of range for a backbone with {len(found)} blocks; "
                          f"choose 1..{len(found)}")
    return found[:layers]


def location_targets(model: nn.Module, locations: tuple[str, ...] | list[str] | None,
                     layers: int | None = None) -> list[tuple[str, str, str]]:
    """``(module path, position, location)`` for every chosen location in every chosen block."""
    locations = tuple(locations) if locations else default_locations(model)
    for loc in locations:
        if loc not in LOCATIONS:
            raise UnknownChoiceError("location", loc, LOCATIONS)
    targets = []
    for block in select_blocks(model, layers):
        for loc in locations:
            sub, position = LOCATIONS[loc]
            if not block.has(sub):
                valid = [name for name, (s, _) in LOCATIONS.items() if block.has(s)]
                raise UnknownChoiceError(f"location for {block.family} blocks", loc, valid)
            targets.append((f"{block.path}.{sub}", position, loc))
    return targets
