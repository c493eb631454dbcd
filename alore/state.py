"""What alore knows about a model it built or adapted: one typed object on the module, ``model.alore``.

timm's modules are never subclassed; alore keeps its facts beside them: the backbone the model was built as
(so ``merge`` can build a fresh plain model of the same architecture), the method applied and its options (so
adapter files describe themselves), and the submodules a method registered on the model itself (ALoRE's shared
expert scales ``alore_experts``, a real submodule so its parameters train and reach the state dict), which
``merge`` removes before loading the plain architecture.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

ATTR = "alore"


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str                        # alore's name (vit_b) or a timm model name
    timm_name: str
    kwargs: dict[str, Any]
    num_classes: int


@dataclasses.dataclass
class AdapterState:
    backbone: Backbone | None = None
    method: str | None = None                           # set by alore.apply
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    owned: tuple[str, ...] = ()                         # submodules on the model itself, removed by merge

    def method_info(self) -> dict[str, Any]:
        """``{"name", "config"}``: how adapter files and cards record the method."""
        return {"name": self.method, "config": dict(self.config)}


def of(model: nn.Module) -> AdapterState:
    """The model's state (an empty one for a model alore did not build)."""
    return getattr(model, ATTR, None) or AdapterState()


def attach(model: nn.Module, **changes: Any) -> AdapterState:
    """Update the model's state with ``changes`` (creating it), and return it."""
    state = dataclasses.replace(of(model), **changes)
    object.__setattr__(model, ATTR, state)  # a plain attribute, never a submodule or a parameter
    return state
